"""The database: what WHMCS told us (clients, products, servers, services), what we run (VMs, their runs),
the address space (pools and allocations), settings, and the cron's bookkeeping.

Concurrency lives here: unique constraints make double allocation impossible, and a VM is worked on only
by whoever holds its lease (a conditional UPDATE, see ``jobs.runner``).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from .extensions import db


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


MAX_ID = 2**31 - 1  # ids are 32-bit integer columns


def id_from_text(text: str) -> int | None:
    """An id typed as text, or None when it is not one: not all decimal digits ("¹" is a digit to
    str.isdigit, yet no number to int()), or beyond what an id column holds."""
    text = text.strip()
    if not text.isdecimal():
        return None
    number = int(text)
    return number if number <= MAX_ID else None


class UTCDateTime(TypeDecorator):
    """Naive UTC datetimes on every backend (SQLite and MariaDB keep no zone), to the microsecond (MariaDB's
    plain DATETIME keeps whole seconds: DATETIME(6) there)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value


class Setting(db.Model):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)


class Server(db.Model):
    """A Proxmox VE cluster entry point, as configured on a WHMCS server."""

    __tablename__ = "servers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # WHMCS serverid
    name: Mapped[str] = mapped_column(String(255), default="")
    hostname: Mapped[str] = mapped_column(String(255), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    port: Mapped[int] = mapped_column(Integer, default=8006)
    token_id: Mapped[str] = mapped_column(String(255), default="")  # user@realm!tokenid
    token_secret: Mapped[str | None] = mapped_column(Text, nullable=True)  # sealed
    verify_tls: Mapped[bool] = mapped_column(Boolean, default=True)
    ca_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    assigned_ips: Mapped[str] = mapped_column(Text, default="")  # legacy list, one per line
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def address(self) -> str:
        return self.hostname or self.ip


class Client(db.Model):
    __tablename__ = "clients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # WHMCS userid
    firstname: Mapped[str] = mapped_column(String(255), default="")
    lastname: Mapped[str] = mapped_column(String(255), default="")
    companyname: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str] = mapped_column(String(255), default="")

    @property
    def display_name(self) -> str:
        return " ".join(p for p in (self.firstname, self.lastname) if p) or self.companyname or f"#{self.id}"


class Product(db.Model):
    """A WHMCS product with its module settings (see ``core.products`` for their fields and defaults)."""

    __tablename__ = "products"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # WHMCS pid
    name: Mapped[str] = mapped_column(String(255), default="")
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Service(db.Model):
    """A WHMCS hosting service (tblhosting row) of this module."""

    __tablename__ = "services"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # WHMCS serviceid
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id"), index=True)
    domain: Mapped[str] = mapped_column(String(255), default="")
    username: Mapped[str] = mapped_column(String(255), default="")
    password: Mapped[str | None] = mapped_column(Text, nullable=True)  # sealed
    status: Mapped[str] = mapped_column(String(32), default="Pending")  # WHMCS service status
    configoptions: Mapped[dict] = mapped_column(JSON, default=dict)
    customfields: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    client: Mapped[Client] = relationship()
    product: Mapped[Product] = relationship()
    server: Mapped[Server] = relationship()


class VM(db.Model):
    """One service's virtual machine and where its pipeline stands (the original's vm_info row)."""

    __tablename__ = "vm_info"
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), primary_key=True, autoincrement=False)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id"), index=True)
    vmid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(64), default="creation", index=True)
    node: Mapped[str] = mapped_column(String(255), default="")
    mac: Mapped[str] = mapped_column(String(32), default="")
    # A template the client chose at a reinstall (another OS than the package's), if any.
    os_template: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # When the Welcome email went out: once per order (a reinstall's VM is not a new one; a redeploy or a new
    # order of a terminated service starts over).
    welcome_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rev_dns: Mapped[dict] = mapped_column(JSON, default=dict)
    snapshots: Mapped[int] = mapped_column(Integer, default=0)
    backups: Mapped[int] = mapped_column(Integer, default=0)
    # A Proxmox task a step started and later ticks poll: its UPID and the status it belongs to.
    task_upid: Mapped[str | None] = mapped_column(String(255), nullable=True)
    task_status: Mapped[str | None] = mapped_column(String(64), nullable=True)
    task_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error_action: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Whoever works on the VM holds the lease; it expires by itself if the worker dies.
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("server_id", "vmid"),)

    service: Mapped[Service] = relationship()
    server: Mapped[Server] = relationship()


class VMRun(db.Model):
    """One pipeline run on a VM: its steps as printed, and how it ended."""

    __tablename__ = "vm_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("vm_info.service_id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str] = mapped_column(String(64))
    to_status: Mapped[str] = mapped_column(String(64))
    result: Mapped[str] = mapped_column(String(16))  # success / waiting / error
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    steps: Mapped[list] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class IPPool(db.Model):
    __tablename__ = "ip_pools"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id"), index=True)
    family: Mapped[int] = mapped_column(Integer)  # 4 or 6
    bridge: Mapped[str] = mapped_column(String(32), default="vmbr0")
    vlan: Mapped[int] = mapped_column(Integer, default=0)
    gateway: Mapped[str] = mapped_column(String(64))
    mask: Mapped[int] = mapped_column(Integer)
    dns1: Mapped[str] = mapped_column(String(64), default="")
    dns2: Mapped[str] = mapped_column(String(64), default="")
    first: Mapped[str] = mapped_column(String(64))
    last: Mapped[str] = mapped_column(String(64))
    # Where the search for a never-used address resumes (a hint; the unique constraint is the guarantee).
    cursor: Mapped[str | None] = mapped_column(String(32), nullable=True)

    server: Mapped[Server] = relationship()


class IPAddress(db.Model):
    """An address handed out (service set) or handed back (service None, ready for reuse)."""

    __tablename__ = "ip_addresses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id"))
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("ip_pools.id"), nullable=True)  # None: legacy list
    family: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(64))
    # Fixed-width hex of the address: orders like the number, on every backend.
    key: Mapped[str] = mapped_column(String(32))
    service_id: Mapped[int | None] = mapped_column(ForeignKey("services.id"), nullable=True, index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)  # order on the VM: 0 is the main address
    allocated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("server_id", "key"),
        Index("ix_ip_addresses_pool_free", "pool_id", "service_id", "key"),
    )

    pool: Mapped[IPPool | None] = relationship()


class CronTask(db.Model):
    __tablename__ = "cron_tasks"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_status: Mapped[str] = mapped_column(String(16), default="never")
    last_processed: Mapped[int] = mapped_column(Integer, default=0)
    last_errors: Mapped[int] = mapped_column(Integer, default=0)


class CronLock(db.Model):
    __tablename__ = "cron_locks"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BridgeNonce(db.Model):
    """Nonces of accepted bridge calls, kept while their timestamp could still be accepted."""

    __tablename__ = "bridge_nonces"
    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_at: Mapped[int] = mapped_column(BigInteger, index=True)  # unix seconds


class ModuleLog(db.Model):
    """What the original wrote to WHMCS's module log: calls and errors an admin may need to audit."""

    __tablename__ = "module_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    service_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(64))
    request: Mapped[str] = mapped_column(Text, default="")
    response: Mapped[str] = mapped_column(Text, default="")


class AccessGroup(db.Model):
    """The original's admin role groups: which sections a group sees, and whether it may change anything."""

    __tablename__ = "access_groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    sections: Mapped[list] = mapped_column(JSON, default=list)
    can_change: Mapped[bool] = mapped_column(Boolean, default=False)


class Admin(db.Model):
    __tablename__ = "admins"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("access_groups.id"), nullable=True)  # None: full access
    locale: Mapped[str | None] = mapped_column(String(16), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    session_version: Mapped[int] = mapped_column(Integer, default=1)  # bump to end every session
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    group: Mapped[AccessGroup | None] = relationship()

    # Flask-Login
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return f"{self.id}:{self.session_version}"

    def can_see(self, section: str) -> bool:
        return self.group is None or section in (self.group.sections or [])

    def can_change(self, section: str) -> bool:
        return self.group is None or (self.group.can_change and section in (self.group.sections or []))


class LoginAttempt(db.Model):
    """Failed logins, for throttling by user name and by client address."""

    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    remote_addr: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ApiToken(db.Model):
    """A bearer token for /api/v1: only its SHA-256 is stored; the token is shown once at creation."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("access_groups.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    group: Mapped[AccessGroup | None] = relationship()


class DnsZone(db.Model):
    """A zone on a DNS provider that VM records are written to (forward or reverse)."""

    __tablename__ = "dns_zones"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)  # lower case, no trailing dot
    provider: Mapped[str] = mapped_column(String(16))  # cloudflare / hestiacp / powerdns
    settings: Mapped[dict] = mapped_column(JSON, default=dict)  # the provider's non-secret fields
    secret: Mapped[str | None] = mapped_column(Text, nullable=True)  # sealed: API token, password or key
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
