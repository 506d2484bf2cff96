"""IP pools as admins manage them: validation (every error next to its field), create, edit, delete, and the
list with usage. Shared by the panel and the admin API."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from flask_babel import lazy_gettext as _l
from sqlalchemy import func, select

from . import ipam
from .extensions import db
from .models import IPAddress, IPPool, Server
from .products import BRIDGE_NAME

FIELDS = ("server_id", "family", "bridge", "vlan", "gateway", "mask", "dns1", "dns2", "first", "last")


class PoolError(ValueError):
    def __init__(self, errors: dict[str, Any]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _ip(value: Any, family: int | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(str(value or "").strip())
    except ValueError:
        return None
    if getattr(addr, "scope_id", None):  # fe80::1%eth0: a scope means nothing inside a VM's network config
        return None
    return addr if family is None or addr.version == family else None


def validate(values: dict[str, Any], existing: IPPool | None = None) -> dict[str, Any]:
    """Check a pool's fields (``existing``: the pool being edited); returns them cleaned or raises PoolError
    with a message per field."""
    errors: dict[str, Any] = {}
    clean: dict[str, Any] = {}
    try:
        clean["server_id"] = int(values.get("server_id"))
        if not 0 < clean["server_id"] < 2**31 or db.session.get(Server, clean["server_id"]) is None:
            errors["server_id"] = _l("Unknown server: in WHMCS, save the server and press Test Connection (or send it any module call).")
            del clean["server_id"]  # not to be looked up again (a number past the database's integers)
    except (TypeError, ValueError):
        errors["server_id"] = _l("Choose a server.")
    family = str(values.get("family", "")).lower().replace("ipv", "")
    if family not in ("4", "6"):
        errors["family"] = _l("Choose IPv4 or IPv6.")
        family_n = None
    else:
        family_n = clean["family"] = int(family)
    bridge = str(values.get("bridge") or "").strip()
    if not BRIDGE_NAME.match(bridge):
        errors["bridge"] = _l("Not a valid bridge name (for example vmbr0).")
    clean["bridge"] = bridge
    try:
        vlan = int(values.get("vlan") or 0)
        if not 0 <= vlan <= 4094:
            raise ValueError
        clean["vlan"] = vlan
    except (TypeError, ValueError):
        errors["vlan"] = _l("VLAN must be between 0 (untagged) and 4094.")
    limit = 32 if family_n == 4 else 128
    try:
        mask = int(values.get("mask"))
        if not 1 <= mask <= limit:
            raise ValueError
        clean["mask"] = mask
    except (TypeError, ValueError):
        errors["mask"] = _l("Mask must be between 1 and %(limit)s.", limit=limit)
    network = None
    gateway = _ip(values.get("gateway"), family_n)
    if gateway is None:
        errors["gateway"] = _l("Gateway must be an IPv%(family)s address.", family=family_n or "4/6")
    elif "mask" in clean:
        network = ipaddress.ip_network(f"{gateway}/{clean['mask']}", strict=False)
        clean["gateway"] = str(gateway)
    for key in ("first", "last"):
        addr = _ip(values.get(key), family_n)
        if addr is None:
            errors[key] = _l("Must be an IPv%(family)s address.", family=family_n or "4/6")
        elif network is not None and addr not in network:
            errors[key] = _l("%(address)s is outside %(network)s.", address=addr, network=network)
        else:
            clean[key] = str(addr)
    if network is not None and network.version == 4 and network.prefixlen <= 30:
        for key in ("gateway", "first", "last"):  # neither the network's own address nor its broadcast
            if key in clean and ipaddress.ip_address(clean[key]) in (network.network_address,
                                                                     network.broadcast_address):
                errors[key] = _l("%(address)s is the network's own address or its broadcast address.",
                                 address=clean.pop(key))
    if "first" in clean and "last" in clean:
        first, last = ipaddress.ip_address(clean["first"]), ipaddress.ip_address(clean["last"])
        if first > last:
            errors["last"] = _l("The last address must not come before the first.")
        elif first == last == gateway:
            errors["last"] = _l("The range holds no address to hand out (the gateway never is).")
        elif "server_id" in clean and family_n:
            errors.update(_overlaps(clean["server_id"], family_n, first, last, existing))
    if existing is not None and not errors:
        errors.update(_keeps_its_allocations(existing, clean))
    for key in ("dns1", "dns2"):
        raw = str(values.get(key) or "").strip()
        if raw and _ip(raw, None) is None:
            errors[key] = _l("Not an IP address.")
        clean[key] = raw
    if errors:
        raise PoolError(errors)
    return clean


def _overlaps(server_id: int, family: int, first, last, existing: IPPool | None) -> dict[str, Any]:
    """Another pool of the server whose range meets this one (it would count its addresses twice)."""
    for other in db.session.scalars(select(IPPool).where(IPPool.server_id == server_id, IPPool.family == family)):
        if existing is not None and other.id == existing.id:
            continue
        if ipaddress.ip_address(other.first) <= last and first <= ipaddress.ip_address(other.last):
            return {"first": _l("Overlaps pool %(id)s (%(first)s – %(last)s) of this server.", id=other.id,
                                first=other.first, last=other.last)}
    return {}


def _keeps_its_allocations(pool: IPPool, clean: dict[str, Any]) -> dict[str, Any]:
    """An edit may not move a pool from under the addresses it has handed out."""
    held = list(db.session.scalars(select(IPAddress.address).where(IPAddress.pool_id == pool.id,
                                                                    IPAddress.service_id.is_not(None))))
    if not held:
        return {}
    if clean.get("family") != pool.family or clean.get("server_id") != pool.server_id:
        return {"family": _l("Addresses of this pool are allocated: its server and family stay as they are.")}
    first, last = ipaddress.ip_address(clean["first"]), ipaddress.ip_address(clean["last"])
    outside = [address for address in held if not first <= ipaddress.ip_address(address) <= last]
    if outside:
        return {"first": _l("Allocated addresses would fall outside the range: %(list)s.",
                            list=", ".join(outside[:10]))}
    return {}


def create(values: dict[str, Any]) -> IPPool:
    pool = IPPool(**validate(values))
    db.session.add(pool)
    db.session.commit()
    return pool


def update(pool: IPPool, values: dict[str, Any]) -> IPPool:
    """Change a pool; addresses already handed out keep their pool and service. When its server, family or
    range changes, the addresses it was handed back are forgotten (under the pool's lock, as an allocation
    would take one): such a row still names the old server or family, and reused it would give an address
    twice or of the wrong kind."""
    ipam.lock_pool(pool.id)  # before the checks: no allocation may slip in between them and the change
    try:
        clean = validate({**{k: getattr(pool, k) for k in FIELDS}, **values}, existing=pool)
    except PoolError:
        db.session.rollback()
        raise
    moved = any(clean[key] != getattr(pool, key) for key in ("server_id", "family", "first", "last"))
    if moved:
        db.session.execute(IPAddress.__table__.delete().where(IPAddress.pool_id == pool.id,
                                                              IPAddress.service_id.is_(None)))
    for key, value in clean.items():
        setattr(pool, key, value)
    pool.cursor = None  # the range may have moved: search it afresh
    db.session.commit()
    return pool


def allocated(pool: IPPool, limit: int = 10) -> list[IPAddress]:
    return list(db.session.scalars(select(IPAddress).where(IPAddress.pool_id == pool.id,
                                                           IPAddress.service_id.is_not(None))
                                   .order_by(IPAddress.key).limit(limit)))


def delete(pool: IPPool) -> None:
    """Delete a pool that hands out nothing; otherwise say what is allocated. Under the pool's lock, so that
    no allocation from it slips in between the count and the delete."""
    ipam.lock_pool(pool.id)
    used = ipam.pool_used(pool.id)
    if used:
        db.session.rollback()
        shown = ", ".join(str(_l("%(address)s (service %(service)s)", address=a.address, service=a.service_id))
                          for a in allocated(pool))
        raise PoolError({"pool": _l("%(count)s addresses are allocated: %(list)s. Terminate or move those services "
                                    "first.", count=used, list=shown)})
    db.session.execute(IPAddress.__table__.delete().where(IPAddress.pool_id == pool.id,
                                                          IPAddress.service_id.is_(None)))
    db.session.delete(pool)
    db.session.commit()


@dataclass
class PoolRow:
    pool: IPPool
    size: int
    used: int
    rdns_zone: str | None

    @property
    def percent(self) -> int:
        return round(100 * self.used / self.size) if self.size else 0


def rows(server_id: int | None = None) -> list[PoolRow]:
    """Every pool with its size, usage and rDNS zone hint, in two queries whatever the number of pools."""
    query = select(IPPool).order_by(IPPool.id)
    if server_id is not None:
        query = query.where(IPPool.server_id == server_id)
    pools = list(db.session.scalars(query))
    used = dict(db.session.execute(select(IPAddress.pool_id, func.count()).where(
        IPAddress.pool_id.in_([p.id for p in pools]), IPAddress.service_id.is_not(None))
        .group_by(IPAddress.pool_id)).all()) if pools else {}
    return [PoolRow(p, ipam.pool_size(p), used.get(p.id, 0), ipam.rdns_zone(p.family, p.gateway, p.mask))
            for p in pools]
