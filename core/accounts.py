"""What WHMCS module calls carry, validated, and the account operations behind them.

Every call upserts the client, product, server and service it names, so our records follow WHMCS without
any import step. Validation happens before anything is written; each operation is one transaction.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, exists, insert, select, update

from . import queue as work_queue
from .extensions import db, insert_missing, upsert_statement
from .models import VM, Client, IPAddress, ModuleLog, Product, Server, Service
from .products import PackageError, ProductSettings, resolve_package
from .proxmox.client import split_token_id
from .vault import seal, seals, unseal

SECRET_KEYS = {"password", "serverpassword", "serveraccesshash", "secret", "token_secret"}
ID_FIELDS = ("serviceid", "userid", "pid", "serverid")
# What a TEXT column holds on MariaDB (65,535 bytes), with room to spare: larger is refused, never cut.
TEXT_LIMIT = 60000
SERVER_STATUSES = ("Pending", "Active", "Suspended", "Terminated", "Cancelled", "Fraud", "Completed")


class ParamsError(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class ServerParams:
    id: int
    name: str
    hostname: str
    ip: str
    port: int
    token_id: str
    token_secret: str
    verify_tls: bool
    ca_pem: str | None
    assigned_ips: str


def _int(payload: dict, key: str, errors: dict, required: bool = True, minimum: int = 1,
         maximum: int = 2 ** 31 - 1) -> int | None:
    value = payload.get(key)
    if value in (None, ""):
        if required:
            errors[key] = "is required"
        return None
    if isinstance(value, bool):
        errors[key] = "must be a whole number"
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        errors[key] = "must be a whole number"
        return None
    if not minimum <= number <= maximum:
        errors[key] = f"must be between {minimum} and {maximum}"
        return None
    return number


def _str(payload: dict, key: str, errors: dict, limit: int = 255) -> str:
    value = payload.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        errors[key] = "must be a string"
        return ""
    text = str(value)
    if len(text) > limit:
        errors[key] = f"must be at most {limit} characters"
    return text


def _dict(payload: dict, key: str, errors: dict) -> dict:
    value = payload.get(key)
    if value in (None, "", []):
        return {}
    if not isinstance(value, dict):
        errors[key] = "must be an object"
        return {}
    # WHMCS nests lists in some of these maps (clientsdetails' customfields, for one): keep the plain values.
    return {name: item for name, item in value.items() if item is None or isinstance(item, (str, int, float, bool))}


def _bool(value: Any, default: bool) -> bool:
    if value in (None, ""):
        return default
    return str(value).strip().lower() in ("1", "true", "on", "yes", "checked")


def parse_server(payload: dict, errors: dict, require_id: bool = True) -> ServerParams | None:
    """The Proxmox server a call names: serverhostname/serverip, serverport, serverusername (the API token
    id), serverpassword (its secret). serveraccesshash may hold a CA certificate (PEM) and/or a line
    ``verify_tls=0`` for a cluster with a self-signed certificate."""
    server_id = _int(payload, "serverid", errors, required=require_id) or 0
    hostname = _str(payload, "serverhostname", errors).strip()
    ip = _str(payload, "serverip", errors, limit=64).strip()
    if not hostname and not ip:
        errors["serverhostname"] = "serverhostname or serverip is required"
    if hostname and not re.match(r"^[A-Za-z0-9.:\[\]-]+$", hostname):
        errors["serverhostname"] = "is not a valid host name"
    port = _int(payload, "serverport", errors, required=False, maximum=65535) or 8006
    token_id = _str(payload, "serverusername", errors).strip()
    try:
        split_token_id(token_id)
    except ValueError as exc:
        errors["serverusername"] = str(exc)
    token_secret = _str(payload, "serverpassword", errors, limit=4096)
    if not token_secret:
        errors["serverpassword"] = "is required (the API token secret)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in token_secret):
        errors["serverpassword"] = "must not hold control characters (a line break pasted with the secret?)"
    access = _str(payload, "serveraccesshash", errors, limit=TEXT_LIMIT)
    ca_pem = None
    if "BEGIN CERTIFICATE" in access:
        start = access.index("-----BEGIN CERTIFICATE-----")
        ca_pem = access[start:access.rindex("-----END CERTIFICATE-----") + 25] + "\n"
    verify_tls = not re.search(r"verify_tls\s*=\s*(0|false|no|off)", access, re.I)
    assigned = payload.get("serverassignedips") or payload.get("assignedips") or ""
    if isinstance(assigned, list):
        assigned = "\n".join(str(a) for a in assigned)
    if len(str(assigned).encode()) > TEXT_LIMIT:
        errors["serverassignedips"] = f"must be at most {TEXT_LIMIT} bytes"
    if "serverid" in errors or "serverhostname" in errors:
        return None
    return ServerParams(id=server_id, name=_str(payload, "servername", errors) or hostname or ip,
                        hostname=hostname, ip=ip, port=port, token_id=token_id, token_secret=token_secret,
                        verify_tls=verify_tls, ca_pem=ca_pem, assigned_ips=str(assigned))


@dataclass
class AccountParams:
    service_id: int
    client_id: int
    product_id: int
    server: ServerParams
    domain: str
    username: str
    password: str
    status: str
    product_name: str
    client: dict
    configoptions: dict
    customfields: dict


def parse_account(payload: Any) -> AccountParams:
    """Validate the WHMCS $params of a service call; raises ParamsError with every problem at once."""
    if not isinstance(payload, dict):
        raise ParamsError({"body": "must be a JSON object with the WHMCS module parameters"})
    errors: dict[str, str] = {}
    service_id = _int(payload, "serviceid", errors)
    client_id = _int(payload, "userid", errors)
    product_id = _int(payload, "pid", errors)
    server = parse_server(payload, errors)
    client = _dict(payload, "clientsdetails", errors)
    configoptions = _dict(payload, "configoptions", errors)
    customfields = _dict(payload, "customfields", errors)
    status = _str(payload, "status", errors) or "Active"
    if status not in SERVER_STATUSES:
        errors["status"] = "must be one of " + ", ".join(SERVER_STATUSES)
    params = AccountParams(
        service_id=service_id or 0, client_id=client_id or 0, product_id=product_id or 0, server=server,
        domain=_str(payload, "domain", errors), username=_str(payload, "username", errors),
        password=_str(payload, "password", errors, limit=1024), status=status,
        product_name=_str(payload, "productname", errors), client=client, configoptions=configoptions,
        customfields=customfields)
    if errors:
        raise ParamsError(errors)
    return params


# ----------------------------------------------------------------------------- the rows a call carries
#
# Written with plain SQL statements in the caller's transaction: every bridge call runs this, so it is one
# read of what is stored and one upsert per row. The client, server and product rows, which many calls
# share, are written (and so locked) only when a call changes them.

SERVER_FIELDS = ("name", "hostname", "ip", "port", "token_id", "token_secret", "verify_tls", "ca_pem",
                 "assigned_ips")
CLIENT_FIELDS = ("firstname", "lastname", "companyname", "email")
_servers, _products, _clients, _services, _vms, _log, _ips = (
    model.__table__ for model in (Server, Product, Client, Service, VM, ModuleLog, IPAddress))


def _stored(column, key, param: str):
    return select(column).where(key == bindparam(param)).scalar_subquery()


# What is stored for the call's client, server, product, service and VM, in one round trip (None where
# missing).
_STORED = select(
    _stored(_clients.c.id, _clients.c.id, "client_id").label("client_id"),
    *(_stored(_clients.c[name], _clients.c.id, "client_id").label(name) for name in CLIENT_FIELDS),
    _stored(_servers.c.id, _servers.c.id, "server_id").label("server_id"),
    *(_stored(_servers.c[name], _servers.c.id, "server_id").label(name) for name in SERVER_FIELDS),
    _stored(_products.c.id, _products.c.id, "product_id").label("product_id"),
    _stored(_products.c.name, _products.c.id, "product_id").label("product_name"),
    _stored(_products.c.settings, _products.c.id, "product_id").label("product_settings"),
    _stored(_services.c.password, _services.c.id, "service_id").label("service_password"),
    _stored(_vms.c.status, _vms.c.service_id, "service_id").label("vm_status"),
    # Addresses a service holds with no VM row: those of a VM whose record was deleted while it failed to
    # terminate (it may still run on Proxmox).
    exists().where(_ips.c.service_id == bindparam("service_id")).label("held"),
)
_UPSERTS: dict[tuple, Any] = {}
_INSERT_VM, _INSERT_LOG = insert(_vms), insert(_log)
_RESET_VM = update(_vms).where(_vms.c.service_id == bindparam("key")).values(
    vmid=None, node="", mac="", task_upid=None, task_status=None, task_started_at=None, next_run_at=None,
    last_error_action=None, last_error_message=None, last_error_at=None, welcome_sent_at=None, os_template=None)


def _upsert(connection, table, values: dict[str, Any]) -> None:
    """Insert or update one row by its ``id`` (see ``upsert_statement``)."""
    dialect = connection.dialect.name
    key = (table.name, dialect, tuple(values))
    stmt = _UPSERTS.get(key)
    if stmt is None:
        stmt = _UPSERTS[key] = upsert_statement(table, tuple(values), dialect)
    connection.execute(stmt, values)


def _keep_sealed(stored: str | None, plaintext: str) -> str | None:
    """The stored ciphertext when it still seals this secret (no needless write), else a fresh one."""
    return stored if seals(stored, plaintext) else seal(plaintext)


def _server_values(params: ServerParams, stored_secret: str | None) -> dict[str, Any]:
    values = dict(id=params.id, name=params.name, hostname=params.hostname, ip=params.ip, port=params.port,
                  token_id=params.token_id, token_secret=_keep_sealed(stored_secret, params.token_secret),
                  verify_tls=params.verify_tls, ca_pem=params.ca_pem)
    if params.assigned_ips:  # an empty list in a call does not clear the one stored
        values["assigned_ips"] = params.assigned_ips
    return values


def _changed(stored, values: dict[str, Any]) -> bool:
    return stored is None or any(getattr(stored, name) != value for name, value in values.items() if name != "id")


def upsert_server(params: ServerParams) -> None:
    """Store a server as a call carries it (the panel, the demo and the tests register clusters with it)."""
    connection = db.session.connection()
    stored = connection.execute(select(_servers).where(_servers.c.id == params.id)).first()
    values = _server_values(params, stored.token_secret if stored is not None else None)
    if _changed(stored, values):
        _upsert(connection, _servers, values)


@dataclass
class Stored:
    product_settings: dict
    vm_status: str | None
    held_addresses: bool = False


def store_account(params: AccountParams, connection=None) -> Stored:
    """Write the client, product, server and service a call carries into the current transaction; returns
    the product's settings and the status of the service's VM (None: it has none).

    One read, then the writes one after another, everything else worked out in between: a database that
    locks as a whole for a write (SQLite) is held only while they run. Client, server and product rows,
    which many calls share, are written only when a call changes them. ``connection``: the session's, if
    the caller has it already."""
    connection = connection or db.session.connection()
    row = connection.execute(_STORED, {"client_id": params.client_id, "server_id": params.server.id,
                                       "product_id": params.product_id, "service_id": params.service_id}).one()
    details = params.client
    client = dict(id=params.client_id, **{name: str(details.get(name) or "")[:255] for name in CLIENT_FIELDS})
    stored_server = row if row.server_id is not None else None
    server = _server_values(params.server, stored_server.token_secret if stored_server is not None else None)
    service = dict(id=params.service_id, client_id=params.client_id, product_id=params.product_id,
                   server_id=params.server.id, domain=params.domain, username=params.username,
                   password=_keep_sealed(row.service_password, params.password), status=params.status,
                   configoptions=params.configoptions, customfields=sealed_fields(params.customfields))

    if _changed(row if row.client_id is not None else None, client):
        _upsert(connection, _clients, client)
    settings = row.product_settings
    if row.product_id is None:
        # A product seen for the first time: its module settings all take their defaults. Read back, as
        # the panel or a concurrent call may have stored it meanwhile: a locking read, which sees a row
        # committed after this transaction's snapshot (MariaDB's repeatable read would not).
        insert_missing(connection, _products, id=params.product_id,
                       name=params.product_name or f"Product {params.product_id}", settings={})
        settings = connection.execute(select(_products.c.settings).where(_products.c.id == params.product_id)
                                      .with_for_update(read=True)).scalar_one()
    elif params.product_name and row.product_name != params.product_name:
        connection.execute(update(_products).where(_products.c.id == params.product_id)
                           .values(name=params.product_name))
    if _changed(stored_server, server):
        _upsert(connection, _servers, server)
    _upsert(connection, _services, service)
    return Stored(settings or {}, row.vm_status, bool(row.held))


def upsert_account(params: AccountParams) -> Service:
    """store_account, committed (before an operation that talks to Proxmox or waits), and the service."""
    store_account(params)
    db.session.commit()
    return db.session.get(Service, params.service_id)


def render_vm_name(settings: ProductSettings, client_id: int, service_id: int) -> str:
    """The VM's name from the product's rule: {prefix}, {client_id}, {service_id}, {timestamp},
    {random} (10 digits) or {random:N}; made a valid host name label."""
    def random_digits(match: re.Match) -> str:
        count = int(match.group(1) or 10)
        return "".join(secrets.choice("0123456789") for _ in range(max(1, min(count, 32))))
    name = settings.vm_name_rule or "{prefix}-{client_id}-{service_id}"
    name = re.sub(r"\{random(?::(\d+))?\}", random_digits, name)
    name = name.replace("{prefix}", settings.vm_name_prefix).replace("{client_id}", str(client_id)) \
        .replace("{service_id}", str(service_id)).replace("{timestamp}", str(int(time.time())))
    name = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return name or f"vm-{service_id}"


class AccountError(Exception):
    """An operation cannot be done; the message is what the WHMCS admin reads."""


def package_of(service: Service):
    """The service's package; a configurable option that cannot be read is an error for the admin."""
    return _package(service.product.settings, service.configoptions)


def _package(settings: dict, configoptions: dict):
    try:
        return resolve_package(settings, configoptions)
    except PackageError as exc:
        raise AccountError(str(exc)) from None


def product_problems(settings: ProductSettings) -> list[str]:
    problems = []
    if not settings.template_vmid or not settings.template_node:
        problems.append("the product has no OS template: set the template VMID and its node in the product's "
                        "module settings")
    if not settings.system_disk_storage:
        problems.append("the product has no system disk storage set")
    return problems


def create_account(params: AccountParams, connection) -> tuple[str, bool]:
    """Store the call's rows and record the VM with status ``creation``, in the transaction of
    ``connection``: the caller commits, then queues the deploy when told to. Returns (the VM's status,
    queued): a service that is already deploying or running is left as it is."""
    stored = store_account(params, connection)
    package = _package(stored.product_settings, params.configoptions)
    problems = product_problems(package.settings)
    if problems:
        raise AccountError("; ".join(problems))
    if stored.vm_status == "error_terminate":
        raise AccountError("this service's previous VM failed to terminate and may still exist on Proxmox; "
                           "resolve it in VM Management first")
    if stored.vm_status is None and stored.held_addresses:
        raise AccountError("this service still holds the addresses of an earlier VM whose record was deleted "
                           "while it failed to terminate, in case that VM still runs on Proxmox; once it is gone, "
                           f"hand them back with: flask pool release-service {params.service_id}")
    if stored.vm_status == "terminate":
        raise AccountError("this service's previous VM is being terminated; create it again when that is done")
    if stored.vm_status not in (None, "remove"):
        return stored.vm_status, False
    fresh = dict(server_id=params.server.id, status="creation",
                 name=render_vm_name(package.settings, params.client_id, params.service_id), rev_dns={})
    if stored.vm_status is None:
        connection.execute(_INSERT_VM, dict(service_id=params.service_id, **fresh))
    else:  # a terminated service ordered again: a fresh deploy
        connection.execute(_RESET_VM, dict(key=params.service_id, **fresh))
    return "creation", True


def secret_name(key: Any) -> bool:
    """A key whose value is a secret: a known one, or any naming a password or a secret (a custom field
    "Root Password", say), as the shim masks them."""
    name = str(key).lower()
    return name in SECRET_KEYS or "password" in name or "secret" in name


def sealed_fields(fields: dict) -> dict:
    """Custom fields as stored: a value named like a secret (a "Root Password" field) encrypted, as the module
    log masks it; the others (the SSH key the deploy reads) as they are."""
    return {k: (seal(str(v)) if secret_name(k) and v not in (None, "") else v) for k, v in fields.items()}


def mask(payload: Any) -> Any:
    """A copy of a payload with every secret replaced, for the module log."""
    if isinstance(payload, dict):
        return {k: ("********" if secret_name(k) and v else mask(v)) for k, v in payload.items()}
    if isinstance(payload, list):
        return [mask(v) for v in payload]
    return payload


def log_text(payload: Any) -> str:
    """A call's payload as the module log keeps it: secrets masked, as JSON, at most 65,000 characters."""
    return json.dumps(mask(payload), default=str)[:65000]


def log_call(action: str, service_id: int | None, request: Any, response: Any, commit: bool = True,
             request_text: str | None = None, connection=None) -> None:
    """Write one module log entry (committed with the session unless told not to, or in the transaction of
    ``connection``); ``request_text``: the payload's ``log_text`` if already made."""
    (connection or db.session.connection()).execute(_INSERT_LOG, dict(
        action=action, service_id=service_id, request=request_text if request_text is not None else
        log_text(request), response=json.dumps(response, default=str)[:65000]))
    if commit and connection is None:
        db.session.commit()


# ----------------------------------------------------------------------------- after the deploy

def _vm_of(service: Service) -> VM:
    vm = db.session.get(VM, service.id)
    if vm is None or vm.status in ("remove",):
        raise AccountError("this service has no VM")
    return vm


def _pve(server: Server, timeout: float | None = None):
    """The server's Proxmox API with the API timeout (or a shorter ``timeout``)."""
    from flask import current_app

    from . import settings
    from .proxmox.client import Pve, endpoint_for
    return Pve(endpoint_for(server, unseal(server.token_secret), current_app.instance_path),
               timeout=min(settings.get("api_timeout"), timeout or float("inf")))


def power(params: AccountParams, action: str) -> None:
    """start / stop / shutdown now (the answer is Proxmox's task id; nothing waits for it). A VM in a
    pipeline is not started by hand: it would run with its changes half made (CPU and RAM pending,
    cloud-init not yet read); the pipeline starts it at its end."""
    service = upsert_account(params)
    vm = _vm_of(service)
    if not vm.vmid or not vm.node:
        raise AccountError(f"the VM is not deployed yet (status {vm.status})")
    if action == "start" and service.status == "Suspended":  # as the billing system holds it: off until paid
        raise AccountError("the service is suspended: unsuspend it to start its VM")
    if action == "start" and vm.status != "ready":
        raise AccountError(f"the VM is being worked on (status {vm.status}): its pipeline starts it when it "
                           "is done")
    _power(vm, action)


def _power(vm: VM, action: str) -> None:
    from .proxmox.client import ProxmoxError
    from .proxmox.cluster import is_ours, vm_location
    pve = _pve(vm.server)
    for attempt in (1, 2):
        try:
            pve.post("nodes", vm.node, "qemu", vm.vmid, "status", action)
            return
        except ProxmoxError as exc:
            # Moved to another node since (Proxmox HA, an admin's migration): found there, and asked there.
            try:
                found = vm_location(pve, vm.vmid) if attempt == 1 and "does not exist" in exc.message else None
            except ProxmoxError:
                found = None  # the refusal is what the admin reads
            if not (found and found.get("node") != vm.node and is_ours(found, vm.name, vm.vmid)):
                raise AccountError(f"Proxmox refused to {action} VM {vm.vmid}: {exc.message}") from None
            vm.node = found["node"]
            db.session.commit()


def _queue(vm: VM, status: str, allowed_from: tuple[str, ...] = ("ready",)) -> None:
    if vm.status == status:
        return
    if vm.status not in allowed_from:
        raise AccountError(f"the VM is busy ({vm.status}); try again when it is ready")
    vm.status = status
    vm.task_upid = vm.task_status = vm.task_started_at = vm.next_run_at = None
    db.session.commit()
    work_queue.enqueue_recorded(vm.service_id)


def _refuse_if_busy(service_id: int, status: str) -> None:
    """A change refused because the VM is busy is refused before anything of it is stored: a pipeline in
    progress reads the service as stored, and would apply half of a change WHMCS was told failed."""
    vm = db.session.get(VM, service_id)
    if vm is not None and vm.status not in ("ready", status, "remove"):
        raise AccountError(f"the VM is busy ({vm.status}); try again when it is ready")


def change_package(params: AccountParams) -> VM:
    """Store the new package and queue the change-package pipeline; answers at once."""
    _refuse_if_busy(params.service_id, "change_package")
    service = upsert_account(params)
    problems = product_problems(package_of(service).settings)
    if problems:
        raise AccountError("; ".join(problems))
    vm = _vm_of(service)
    _queue(vm, "change_package")
    return vm


def suspend(params: AccountParams) -> None:
    """WHMCS sets the service's status to Suspended only after this call succeeds, so the call itself still
    carries the old one: the status is recorded here, for the client actions refused meanwhile (and the
    pipelines, which then leave the VM off). A VM still being deployed has nothing to stop yet."""
    vm = _vm_of(upsert_account(params))
    if vm.vmid and vm.node:
        try:
            _power(vm, "stop")
        except AccountError:
            # Refused, as Proxmox refuses to stop a VM under a config lock (a clone in progress): no error
            # when the VM is off anyway, since the pipelines leave a suspended service's VM off.
            if _power_state(vm) != "stopped":
                raise
    _record_status(params.service_id, "Suspended")


def vm_state(vm: VM, timeout: float | None = None) -> dict:
    """Proxmox's status/current of the VM (status, uptime, cpu, mem, maxmem); raises ProxmoxError."""
    return _pve(vm.server, timeout).get("nodes", vm.node, "qemu", vm.vmid, "status", "current") or {}


def _power_state(vm: VM) -> str | None:
    try:
        return vm_state(vm).get("status")
    except Exception:  # noqa: BLE001 - unknown: the caller reports the refusal it had
        return None


def unsuspend(params: AccountParams) -> None:
    """The VM starts now when it is ready; one in a pipeline is started by the pipeline at its end, now that
    the service is active again."""
    vm = _vm_of(upsert_account(params))
    if vm.status == "ready" and vm.vmid and vm.node:
        _power(vm, "start")
    _record_status(params.service_id, "Active")


def _record_status(service_id: int, status: str) -> None:
    db.session.execute(update(Service).where(Service.id == service_id).values(status=status))
    db.session.commit()


def _suspended(existing: Service | None, params: AccountParams) -> bool:
    return (existing is not None and existing.status == "Suspended") or params.status == "Suspended"


def terminate(params: AccountParams) -> VM | None:
    """A fire-and-forget stop, status ``terminate``, and the answer at once; the tick does the rest. WHMCS
    may call it again (a retry, a service whose VM never came): a VM terminating or gone is success, and a
    terminate in progress is left to run as it is. An active or suspended service with no VM recorded here
    (made before a switch from another module, or its record deleted) is an error: a success would let
    WHMCS close a service whose VM may still run."""
    service = upsert_account(params)
    vm = db.session.get(VM, service.id)
    if vm is None and params.status in ("Active", "Suspended"):
        raise AccountError("no VM is recorded here for this service (it was not created through this "
                           "module, or its record was deleted): nothing was stopped or deleted. If it has a "
                           "VM on Proxmox, remove that VM there, then set the service's status in WHMCS "
                           "by hand")
    if vm is None or vm.status in ("remove", "terminate"):
        return vm
    if vm.vmid and vm.node:
        try:
            _pve(vm.server).post("nodes", vm.node, "qemu", vm.vmid, "status", "stop")
        except Exception:  # noqa: BLE001 - the tick stops and deletes it properly; this only starts early
            pass
    # A pass working on the VM stops at its next status move (pipeline._advance); its lease is left to it.
    vm.status = "terminate"
    vm.task_upid = vm.task_status = vm.task_started_at = vm.next_run_at = None
    db.session.commit()
    work_queue.enqueue_recorded(vm.service_id)
    return vm


def change_password(params: AccountParams) -> VM:
    """WHMCS set a new password on the service: rewrite cloud-init with it (queued)."""
    _refuse_if_busy(params.service_id, "change_password")
    service = upsert_account(params)
    vm = _vm_of(service)
    _queue(vm, "change_password")
    return vm


def new_password(length: int = 16) -> str:
    """Letters and digits, at least one of each case and one digit."""
    import string
    alphabet = string.ascii_letters + string.digits
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(length))
        if any(c.isdigit() for c in password) and any(c.isupper() for c in password) and \
                any(c.islower() for c in password):
            return password


def _client_action(params: AccountParams, known_service: bool) -> tuple[Service, VM]:
    """What a client's action (reset password, reinstall) needs first: the service is this client's (checked
    before anything is stored; ``known_service``: it must exist already), not suspended, and its VM is ready.
    Returns the service (stored as the call carries it) and its VM."""
    existing = db.session.get(Service, params.service_id)
    if existing is None and known_service:
        raise AccountError("this service has no VM here")
    if existing is not None and existing.client_id != params.client_id:
        raise AccountError("this service belongs to another client")
    if _suspended(existing, params):
        raise AccountError("the service is suspended")
    service = upsert_account(params)
    vm = _vm_of(service)
    if vm.status != "ready":
        raise AccountError(f"the VM is busy ({vm.status}); try again when it is ready")
    return service, vm


def reset_password(params: AccountParams) -> VM:
    """The client's reset: a new random password, saved to the WHMCS service (UpdateClientProduct), then
    cloud-init rewritten with it and the Reset password email (queued)."""
    from . import whmcs
    service, vm = _client_action(params, known_service=True)
    password = new_password()
    whmcs.call("UpdateClientProduct", serviceid=service.id, servicepassword=password)
    service.password = seal(password)
    db.session.commit()
    _queue(vm, "reset_password")
    return vm


def redeploy(params: AccountParams) -> VM:
    """The admin Redeploy button in WHMCS: as in VM Management (refused for a ready VM)."""
    from . import vms
    service = upsert_account(params)
    vm = _vm_of(service)
    try:
        vms.redeploy(vm)
    except vms.VMActionError as exc:
        raise AccountError(str(exc.errors["status"])) from None
    return vm


def customer_vm(server_id: int, vmid: int) -> bool:
    """Whether the VMID is (or was) a service's VM on this server: never cloned for another client, even
    once made into a template."""
    return db.session.scalar(select(VM.service_id).where(VM.server_id == server_id, VM.vmid == vmid)
                             .limit(1)) is not None


def reinstall(params: AccountParams, template: int | None = None) -> VM:
    """Reinstall (admin button or client area): the VM is removed and cloned again, from the template the
    client chose or the package's, keeping its VMID, MAC and addresses; queued for the next tick."""
    _service, vm = _client_action(params, known_service=False)
    if template is not None:  # checked now, where the admin or client reads the answer
        from .proxmox.client import ProxmoxError
        from .proxmox.cluster import vm_location
        try:
            found = vm_location(_pve(vm.server), template)
        except ProxmoxError as exc:
            raise AccountError(f"the template cannot be checked now: {exc.message}") from None
        if found is None or not found.get("template"):
            raise AccountError(f"{template} is not a template on the cluster")
        if customer_vm(vm.server_id, template):
            raise AccountError(f"{template} is a service's VM made into a template, not an OS template")
    vm.os_template = template
    db.session.commit()
    _queue(vm, "reinstall")
    return vm
