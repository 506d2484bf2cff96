"""What WHMCS module calls carry, validated, and the account operations behind them.

Every call upserts the client, product, server and service it names, so our records follow WHMCS without
any import step. Validation happens before anything is written; each operation is one transaction.
"""
from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from . import queue as work_queue
from .extensions import db, insert_missing
from .models import VM, Client, ModuleLog, Product, Server, Service
from .products import PackageError, ProductSettings, resolve_package
from .proxmox.client import split_token_id
from .vault import seal, unseal

SECRET_KEYS = {"password", "serverpassword", "serveraccesshash", "secret", "token_secret"}
ID_FIELDS = ("serviceid", "userid", "pid", "serverid")
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
    ip = _str(payload, "serverip", errors).strip()
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
    access = _str(payload, "serveraccesshash", errors, limit=65536)
    ca_pem = None
    if "BEGIN CERTIFICATE" in access:
        start = access.index("-----BEGIN CERTIFICATE-----")
        ca_pem = access[start:access.rindex("-----END CERTIFICATE-----") + 25] + "\n"
    verify_tls = not re.search(r"verify_tls\s*=\s*(0|false|no|off)", access, re.I)
    assigned = payload.get("serverassignedips") or payload.get("assignedips") or ""
    if isinstance(assigned, list):
        assigned = "\n".join(str(a) for a in assigned)
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


def _save(row, **values) -> bool:
    changed = False
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed = True
    return changed


_LOOK_UP = object()


def _upsert(model, key: int, values: dict[str, Any], row: Any = _LOOK_UP) -> None:
    """Insert or update one row by primary key in the current transaction, safe when two calls insert it at
    the same moment; an unchanged row is not written (and not locked). ``row``: the row if already loaded
    (None: known to be missing)."""
    if row is _LOOK_UP:
        row = db.session.get(model, key)
    if row is None:
        if insert_missing(model, id=key, **values):
            return
        row = db.session.get(model, key)  # a concurrent call inserted it first
    _save(row, **values)


def upsert_server(params: ServerParams) -> None:
    row = db.session.get(Server, params.id)
    secret = params.token_secret
    if row is not None and row.token_secret and unseal(row.token_secret) == secret:
        sealed = row.token_secret  # unchanged: keep the stored ciphertext, no needless write
    else:
        sealed = seal(secret)
    values = dict(name=params.name, hostname=params.hostname, ip=params.ip, port=params.port,
                  token_id=params.token_id, token_secret=sealed, verify_tls=params.verify_tls, ca_pem=params.ca_pem)
    if params.assigned_ips:
        values["assigned_ips"] = params.assigned_ips
    _upsert(Server, params.id, values, row)


def store_account(params: AccountParams) -> Product:
    """Write the client, product, server and service a call carries into the current transaction; returns
    the product."""
    details = params.client
    _upsert(Client, params.client_id, dict(
        firstname=str(details.get("firstname") or "")[:255], lastname=str(details.get("lastname") or "")[:255],
        companyname=str(details.get("companyname") or "")[:255], email=str(details.get("email") or "")[:255]))
    product = db.session.get(Product, params.product_id)
    if product is None:
        _upsert(Product, params.product_id, dict(name=params.product_name or f"Product {params.product_id}",
                                                 settings={}), None)
        product = db.session.get(Product, params.product_id)
    elif params.product_name and product.name != params.product_name:
        product.name = params.product_name
    upsert_server(params.server)
    service = db.session.get(Service, params.service_id)
    password = params.password
    sealed = service.password if service is not None and service.password and \
        unseal(service.password) == password else seal(password)
    _upsert(Service, params.service_id, dict(
        client_id=params.client_id, product_id=params.product_id, server_id=params.server.id, domain=params.domain,
        username=params.username, password=sealed, status=params.status, configoptions=params.configoptions,
        customfields=params.customfields), service)
    return product


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


def create_account(params: AccountParams) -> tuple[VM, bool]:
    """Record the VM with status ``creation``, in the current transaction: the caller commits, then queues
    the deploy when told to. Returns (vm, queued): a service that is already deploying or running is left
    as it is."""
    package = _package(store_account(params).settings, params.configoptions)
    problems = product_problems(package.settings)
    if problems:
        raise AccountError("; ".join(problems))
    vm = db.session.get(VM, params.service_id)
    if vm is not None and vm.status == "error_terminate":
        raise AccountError("this service's previous VM failed to terminate and may still exist on Proxmox; "
                           "resolve it in VM Management first")
    if vm is not None and vm.status != "remove":
        return vm, False
    name = render_vm_name(package.settings, params.client_id, params.service_id)
    server_id = params.server.id
    if vm is None:
        vm = VM(service_id=params.service_id, server_id=server_id, status="creation", name=name, rev_dns={})
        db.session.add(vm)
    else:  # a terminated service ordered again: a fresh deploy
        vm.server_id, vm.status, vm.name, vm.vmid, vm.node, vm.mac = server_id, "creation", name, None, "", ""
        vm.rev_dns, vm.task_upid, vm.task_status, vm.next_run_at = {}, None, None, None
        vm.last_error_action = vm.last_error_message = vm.last_error_at = None
    return vm, True


def mask(payload: Any) -> Any:
    """A copy of a payload with every secret replaced, for the module log."""
    if isinstance(payload, dict):
        return {k: ("********" if k.lower() in SECRET_KEYS and v else mask(v)) for k, v in payload.items()}
    if isinstance(payload, list):
        return [mask(v) for v in payload]
    return payload


def log_call(action: str, service_id: int | None, request: Any, response: Any, commit: bool = True) -> None:
    import json
    db.session.add(ModuleLog(action=action, service_id=service_id,
                             request=json.dumps(mask(request), default=str)[:65000],
                             response=json.dumps(response, default=str)[:65000]))
    if commit:
        db.session.commit()


# ----------------------------------------------------------------------------- after the deploy

def _vm_of(service: Service) -> VM:
    vm = db.session.get(VM, service.id)
    if vm is None or vm.status in ("remove",):
        raise AccountError("this service has no VM")
    return vm


def _pve(server: Server):
    from flask import current_app

    from . import settings
    from .proxmox.client import Pve, endpoint_for
    return Pve(endpoint_for(server, unseal(server.token_secret), current_app.instance_path),
               timeout=settings.get("api_timeout"))


def power(params: AccountParams, action: str) -> None:
    """start / stop / shutdown now (the answer is Proxmox's task id; nothing waits for it)."""
    from .proxmox.client import ProxmoxError
    service = upsert_account(params)
    vm = _vm_of(service)
    if not vm.vmid or not vm.node:
        raise AccountError(f"the VM is not deployed yet (status {vm.status})")
    try:
        _pve(vm.server).post("nodes", vm.node, "qemu", vm.vmid, "status", action)
    except ProxmoxError as exc:
        raise AccountError(f"Proxmox refused to {action} VM {vm.vmid}: {exc.message}") from None


def _queue(vm: VM, status: str, allowed_from: tuple[str, ...] = ("ready",)) -> None:
    if vm.status == status:
        return
    if vm.status not in allowed_from:
        raise AccountError(f"the VM is busy ({vm.status}); try again when it is ready")
    vm.status = status
    vm.task_upid = vm.task_status = vm.task_started_at = vm.next_run_at = None
    db.session.commit()
    work_queue.enqueue_vm(vm.service_id)


def change_package(params: AccountParams) -> VM:
    """Store the new package and queue the change-package pipeline; answers at once."""
    service = upsert_account(params)
    problems = product_problems(package_of(service).settings)
    if problems:
        raise AccountError("; ".join(problems))
    vm = _vm_of(service)
    _queue(vm, "change_package")
    return vm


def suspend(params: AccountParams) -> None:
    power(params, "stop")


def unsuspend(params: AccountParams) -> None:
    power(params, "start")


def terminate(params: AccountParams) -> VM:
    """A fire-and-forget stop, status ``terminate``, and the answer at once; the tick does the rest."""
    service = upsert_account(params)
    vm = db.session.get(VM, service.id)
    if vm is None or vm.status == "remove":
        raise AccountError("this service has no VM to terminate")
    if vm.vmid and vm.node:
        try:
            _pve(vm.server).post("nodes", vm.node, "qemu", vm.vmid, "status", "stop")
        except Exception:  # noqa: BLE001 - the tick stops and deletes it properly; this only starts early
            pass
    vm.status = "terminate"
    vm.task_upid = vm.task_status = vm.task_started_at = vm.next_run_at = None
    vm.lease_owner = vm.lease_until = None
    db.session.commit()
    work_queue.enqueue_vm(vm.service_id)
    return vm


def change_password(params: AccountParams) -> VM:
    """WHMCS set a new password on the service: rewrite cloud-init with it (queued)."""
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


def reset_password(params: AccountParams) -> VM:
    """The client's reset: a new random password, saved to the WHMCS service (UpdateClientProduct), then
    cloud-init rewritten with it and the Reset password email (queued)."""
    from . import whmcs
    existing = db.session.get(Service, params.service_id)
    if existing is None or existing.client_id != params.client_id:
        raise AccountError("this service belongs to another client")  # checked before anything is stored
    if existing.status == "Suspended":
        raise AccountError("the service is suspended")
    service = upsert_account(params)
    vm = _vm_of(service)
    if vm.status != "ready":
        raise AccountError(f"the VM is busy ({vm.status}); try again when it is ready")
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


def reinstall(params: AccountParams, template: int | None = None) -> VM:
    """Reinstall (admin button or client area): the VM is removed and cloned again, from the template the
    client chose or the package's, keeping its VMID, MAC and addresses; queued for the next tick."""
    existing = db.session.get(Service, params.service_id)
    if existing is not None and existing.client_id != params.client_id:
        raise AccountError("this service belongs to another client")
    if existing is not None and existing.status == "Suspended":
        raise AccountError("the service is suspended")
    service = upsert_account(params)
    vm = _vm_of(service)
    if vm.status != "ready":
        raise AccountError(f"the VM is busy ({vm.status}); try again when it is ready")
    vm.os_template = template
    db.session.commit()
    _queue(vm, "reinstall")
    return vm
