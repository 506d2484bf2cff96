"""VM Management as a service: the list (filtered, searched, sorted, paginated in a constant number of
queries), the run log, and the admin actions (reset, redeploy, delete record, raw record edit)."""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask_babel import lazy_gettext as _l
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from . import ipam
from . import queue as work_queue
from .extensions import db
from .models import VM, Client, IPAddress, Product, Server, Service, VMRun, id_from_text

# The statuses an admin may reset a VM to (seed 002, "Reset VM Status"), with when to use each.
RESET_STATUSES = ("ready", "creation", "set_ip", "change_package", "set_dns_records", "terminate", "remove")
DELETABLE = ("error_terminate", "remove")
SERVICE_STATUSES = ("Active", "Suspended", "Terminated", "Cancelled", "Pending")
SERVICE_LABELS = {"Active": _l("Active"), "Suspended": _l("Suspended"), "Terminated": _l("Terminated"),
                  "Cancelled": _l("Cancelled"), "Pending": _l("Pending"), "Fraud": _l("Fraud"),
                  "Completed": _l("Completed")}
SORTS = {"id": Service.id, "client": Client.lastname, "product": Product.name, "server": Server.name,
         "vm": VM.vmid, "status": VM.status, "service": Service.status}
# Columns the DB Record editor shows and may change, with their types.
EDITABLE = {"vmid": int, "name": str, "status": str, "node": str, "mac": str, "rev_dns": dict,
            "snapshots": int, "backups": int, "task_upid": str, "last_error_action": str,
            "last_error_message": str}


class VMActionError(ValueError):
    def __init__(self, errors: dict[str, Any]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class VMRow:
    vm: VM
    service: Service
    client: Client
    product: Product
    server: Server
    addresses: list[tuple[str, str]] = field(default_factory=list)  # (address, rDNS name)


@dataclass
class Page:
    rows: list[VMRow]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def list_vms(service_status: str = "", vm_status: str = "", search: str = "", sort: str = "id",
             descending: bool = True, page: int = 1, per_page: int = 25) -> Page:
    """One page of VMs across every server: three queries (count, page, its addresses) whatever the size."""
    per_page = max(1, min(int(per_page), 200))
    page = max(1, min(int(page), 1_000_000))  # no database takes an offset of any size
    query = (select(VM, Service, Client, Product, Server)
             .join(Service, Service.id == VM.service_id).join(Client, Client.id == Service.client_id)
             .join(Product, Product.id == Service.product_id).join(Server, Server.id == VM.server_id))
    if service_status:
        query = query.where(Service.status == service_status)
    if vm_status:
        query = query.where(VM.status == vm_status)
    term = search.strip()
    if term:
        lowered = term.lower()  # searched as typed: "%" and "_" are no wildcards (autoescape)
        matches = [func.lower(column).contains(lowered, autoescape=True)
                   for column in (VM.name, Client.firstname, Client.lastname, Client.companyname, Product.name,
                                  Server.name, VM.status)]
        number = id_from_text(term.lstrip("#"))
        if number is not None:
            matches += [Service.id == number, VM.vmid == number]
        try:
            ipaddress.ip_address(term)
            matches.append(VM.service_id.in_(select(IPAddress.service_id).where(
                IPAddress.address == str(ipaddress.ip_address(term)))))
        except ValueError:
            if any(c in term for c in ".:") and len(term) >= 3:
                matches.append(VM.service_id.in_(select(IPAddress.service_id).where(
                    IPAddress.address.contains(term, autoescape=True))))
        query = query.where(or_(*matches))
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    column = SORTS.get(sort, Service.id)
    query = query.order_by(column.desc() if descending else column.asc(), Service.id.desc())
    found = db.session.execute(query.limit(per_page).offset((page - 1) * per_page)).all()
    rows = [VMRow(vm, service, client, product, server) for vm, service, client, product, server in found]
    by_service = {row.vm.service_id: row for row in rows}
    if by_service:
        for address in db.session.scalars(select(IPAddress).where(IPAddress.service_id.in_(by_service))
                                          .order_by(IPAddress.family, IPAddress.position, IPAddress.key)):
            row = by_service[address.service_id]
            row.addresses.append((address.address, (row.vm.rev_dns or {}).get(address.address, "")))
    return Page(rows, total, page, per_page)


def runs(service_id: int) -> list[VMRun]:
    return list(db.session.scalars(select(VMRun).where(VMRun.service_id == service_id)
                                   .order_by(VMRun.id.desc())))


def get(service_id: int) -> VM:
    vm = db.session.get(VM, service_id)
    if vm is None:
        raise LookupError(service_id)
    return vm


def reset(vm: VM, status: str) -> VM:
    """Put the VM at a re-runnable status; the next tick takes it from there."""
    if status not in RESET_STATUSES:
        raise VMActionError({"status": _l("Choose one of: %(statuses)s", statuses=", ".join(RESET_STATUSES))})
    # change_package and set_dns_records end at ready, and neither configures a VM from scratch: only for a
    # deployed one. set_ip goes on from the addresses the deploy allocated: not before it did, nor after a
    # terminate handed them back. (Found by fuzzing admin actions: each ended "ready" without a working VM.)
    # set_dns_records leaves the VM as it is: not one a change package or a password reset has powered off.
    deployed = DEPLOYED if status == "change_package" else RUNNING_AS_DEPLOYED
    if (status in ("change_package", "set_dns_records") and (vm.vmid is None or vm.status not in deployed)) \
            or (status == "set_ip" and vm.status in ("creation", "terminate", "remove", "error_terminate")):
        raise VMActionError({"status": _l("This VM is not deployed: reset it to creation, where its deploy "
                                          "starts.")})
    if status == "creation":  # a deploy from scratch: as a redeploy, not for a terminated service
        _refuse_if_terminated(vm)
    vm.status = status
    vm.task_upid = vm.task_status = vm.task_started_at = None
    vm.next_run_at = None
    vm.lease_owner = vm.lease_until = None
    # The admin has dealt with the last failure (the VM Log keeps it): no red banner on a VM put right.
    vm.last_error_action = vm.last_error_message = vm.last_error_at = None
    if status == "remove":
        # Force-marked as cleaned up: the VM is gone from Proxmox, so its addresses are free again.
        ipam.release(vm.service_id)
    db.session.commit()
    work_queue.enqueue_recorded(vm.service_id)
    return vm


def _refuse_if_terminated(vm: VM) -> None:
    """A terminated service is created again by WHMCS (CreateAccount), not deployed again from here."""
    if vm.status in ("terminate", "remove"):
        raise VMActionError({"status": _l("A terminated service is not redeployed; WHMCS creates it again.")})
    if vm.status == "error_terminate":
        raise VMActionError({"status": _l("A VM that failed to terminate is not redeployed: its service is "
                                          "being cancelled. Fix the cause, then reset it to terminate or "
                                          "remove.")})


def redeploy(vm: VM) -> VM:
    """Queue a full redeploy: the next tick destroys the VM on Proxmox, hands its addresses back, clears its
    log and deploys it from ``creation``. Refused for a VM that is ready (reset it first)."""
    if vm.status == "ready":
        raise VMActionError({"status": _l("A ready VM is not redeployed; reset its status first if you must.")})
    _refuse_if_terminated(vm)
    vm.status = "redeploy"
    vm.task_upid = vm.task_status = vm.task_started_at = None
    vm.next_run_at = None
    db.session.commit()
    work_queue.enqueue_recorded(vm.service_id)
    return vm


def delete_record(vm: VM) -> None:
    """Remove the row (and its log) of a VM that is terminated or failed to terminate; Proxmox is not
    touched. The addresses of a VM that failed to terminate stay taken (it may still run on Proxmox: another
    VM with its address would clash); reset it to remove first when it is gone. Those of a removed VM are
    handed back."""
    if vm.status not in DELETABLE:
        raise VMActionError({"status": _l("Only a VM in error_terminate or remove can be deleted.")})
    if vm.status == "remove":
        ipam.release(vm.service_id, commit=False)
    db.session.execute(VMRun.__table__.delete().where(VMRun.service_id == vm.service_id))
    db.session.delete(vm)
    db.session.commit()


def record(vm: VM) -> dict[str, Any]:
    """The raw row as the DB Record editor shows it."""
    out = {"service_id": vm.service_id, "server_id": vm.server_id}
    for key in EDITABLE:
        out[key] = getattr(vm, key)
    out["updated_at"] = vm.updated_at.isoformat() if vm.updated_at else None
    return out


def _bad_reverse_entry(mapping: dict) -> str:
    """The first entry of a rev_dns map that is not address -> host name (or empty), shown as JSON; "" if
    none: a name a DNS server refuses would fail every PTR of its zone on the next sync."""
    from .dns.names import is_host_name
    for address, name in mapping.items():
        try:
            ipaddress.ip_address(str(address))
        except ValueError:
            return json.dumps({address: name})[:200]
        if name not in ("", None) and not (isinstance(name, str) and is_host_name(name)):
            return json.dumps({address: name})[:200]
    return ""


def update_record(vm: VM, values: dict[str, Any]) -> VM:
    """Write raw values, each checked against its column's type; nothing is written if one is wrong."""
    errors: dict[str, Any] = {}
    clean: dict[str, Any] = {}
    for key, raw in values.items():
        kind = EDITABLE.get(key)
        if kind is None:
            errors[key] = _l("This field cannot be edited.")
            continue
        try:
            if kind is int:
                clean[key] = None if raw in ("", None) and key == "vmid" else int(raw)
                if clean[key] is not None and not 0 <= clean[key] < 2**31:
                    raise ValueError
            elif kind is dict:
                value = json.loads(raw) if isinstance(raw, str) else raw
                if not isinstance(value, dict):
                    raise ValueError
                if key == "rev_dns":
                    wrong = _bad_reverse_entry(value)
                    if wrong:
                        errors[key] = _l("Each key must be an IP address and each value a host name: %(entry)s",
                                         entry=wrong)
                        continue
                clean[key] = value
            else:
                clean[key] = None if raw is None else str(raw)
                limit = getattr(VM.__table__.c[key].type, "length", None)
                if clean[key] is not None and limit and len(clean[key]) > limit:
                    errors[key] = _l("At most %(count)s characters.", count=limit)
                    continue
        except (TypeError, ValueError, RecursionError):
            errors[key] = _l("Must be a whole number.") if kind is int else \
                _l("Must be a JSON object.") if kind is dict else _l("Invalid value.")
    if "status" in clean and not clean["status"]:
        errors["status"] = _l("The status cannot be empty.")
    elif "status" in clean and clean["status"] not in KNOWN_STATUSES:
        errors["status"] = _l("Not a status this product knows.")
    if errors:
        raise VMActionError(errors)
    for key, value in clean.items():
        setattr(vm, key, value)
    try:
        db.session.commit()
    except IntegrityError:  # the one unique column an admin can type: (server, VMID)
        db.session.rollback()
        raise VMActionError({"vmid": _l("Another VM of this server has this VMID.")}) from None
    return vm


# Every status a VM can have (the pipelines' in jobs/ are checked against it by the tests), by pipeline: the
# dashboard counts them so, the DB Record editor takes no other.
PIPELINE_STATUSES = {
    "deploy": ("creation", "set_ip", "set_dns", "clone", "migrated", "set_cpu_ram", "set_system_disk_size",
               "set_system_disk_bandwidth", "set_created_additional_disk", "set_additional_disk_size",
               "set_additional_disk_bandwidth", "set_network", "set_firewall", "set_cloudinit", "starting",
               "redeploy"),
    "change_package": ("change_package", "cp_update_ip", "cp_stop", "cp_cpu_ram", "cp_system_disk_size",
                       "cp_system_disk_bandwidth", "cp_additional_disk", "cp_additional_disk_size",
                       "cp_additional_disk_bandwidth", "cp_network", "cp_firewall", "cp_start"),
    "other": ("reinstall", "set_dns_records", "terminate", "reset_password", "change_password"),
}
# Statuses of a VM whose deploy has finished: ready, or a later pipeline at work on it.
DEPLOYED = frozenset(("ready", "set_dns_records", "reset_password", "change_password",
                      *PIPELINE_STATUSES["change_package"]))
# Of those, the statuses at which the VM runs as deployed (no pipeline has powered it off to change it).
RUNNING_AS_DEPLOYED = frozenset(("ready", "set_dns_records", "change_package", "cp_update_ip"))
KNOWN_STATUSES = frozenset(s for group in PIPELINE_STATUSES.values() for s in group) | {
    "ready", "remove", "error_terminate"}


def pipeline_counts() -> dict[str, int]:
    return dict(db.session.execute(select(VM.status, func.count()).group_by(VM.status)).all())


def errors_since(since: datetime) -> int:
    return db.session.scalar(select(func.count()).select_from(VMRun).where(
        VMRun.result == "error", VMRun.started_at >= since)) or 0


def active_services() -> int:
    return db.session.scalar(select(func.count()).select_from(Service).where(Service.status == "Active")) or 0


def queue_dns_resync(vm: VM) -> VM:
    """Set DNS records: queue a full delete-and-recreate of the VM's records for the next tick."""
    if vm.status == "set_dns_records":
        return vm
    if vm.status != "ready":
        raise VMActionError({"status": _l("The VM is busy (%(status)s); try again when it is ready.",
                                          status=vm.status)})
    vm.status = "set_dns_records"
    db.session.commit()
    work_queue.enqueue_recorded(vm.service_id)
    return vm


def dns_map() -> list[dict[str, str]]:
    """Every address handed to a live VM with its forward name and reverse name (the legacy dns.php)."""
    from .products import ProductSettings
    rows = db.session.execute(
        select(IPAddress.address, VM.name, VM.rev_dns, Product.settings)
        .join(VM, VM.service_id == IPAddress.service_id).join(Service, Service.id == VM.service_id)
        .join(Product, Product.id == Service.product_id)
        .where(VM.status.not_in(("remove",))).order_by(IPAddress.family, IPAddress.key)).all()
    out = []
    for address, name, rev_dns, product_settings in rows:
        domain = ProductSettings.from_stored(product_settings).main_domain.rstrip(".")
        forward = f"{name}.{domain}" if domain else name
        out.append({"forward": forward, "ip": address, "reverse": (rev_dns or {}).get(address) or forward})
    return out


LIVE_TIMEOUT = 5.0  # seconds Proxmox gets to say how a VM is doing while WHMCS draws a page


def service_summary(service_id: int) -> list[tuple[str, str]]:
    """What WHMCS shows of a service's VM on its admin page (label, plain text), in English as WHMCS's own
    module fields: the record, its addresses, its last run and error, and how it is doing now on Proxmox
    (asked with a short timeout; a cluster that does not answer is said, never an error)."""
    vm = db.session.get(VM, service_id)
    if vm is None:
        return [("VM", "No VM is recorded here for this service.")]
    where = f" on node {vm.node}" if vm.node else ""
    fields = [("VM status", vm.status),
              ("VM", f"{vm.name or '-'} (VMID {vm.vmid}){where}" if vm.vmid else f"{vm.name or '-'} (no VMID yet)")]
    addresses = ipam.assigned(service_id)
    fields.append(("IP addresses", ", ".join(a.address for a in addresses) or "none"))
    if vm.vmid and vm.node and vm.server is not None:
        fields.append(("Now", _live_state(vm)))
    last = db.session.scalars(select(VMRun).where(VMRun.service_id == service_id)
                              .order_by(VMRun.id.desc()).limit(1)).first()
    if last is not None:
        finished = f"{last.finished_at:%Y-%m-%d %H:%M} UTC" if last.finished_at else "-"
        fields.append(("Last run", f"{last.action}: {last.result} ({last.from_status} -> {last.to_status}), "
                                   f"{finished}"))
    if vm.last_error_message:
        at = f" at {vm.last_error_at:%Y-%m-%d %H:%M} UTC" if vm.last_error_at else ""
        fields.append(("Last error", f"{vm.last_error_action or '-'}{at}: {vm.last_error_message}"))
    return fields


def _live_state(vm: VM) -> str:
    from .accounts import vm_state
    try:
        state = vm_state(vm, LIVE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - a page of WHMCS must draw whatever went wrong here
        return f"not available: {exc}"
    parts = [str(state.get("status") or "unknown")]
    uptime = int(state.get("uptime") or 0)
    if uptime:
        days, rest = divmod(uptime, 86400)
        parts.append(f"up {days} d {rest // 3600} h {rest % 3600 // 60} min")
    if state.get("cpu") is not None and state.get("status") == "running":
        parts.append(f"CPU {float(state['cpu']) * 100:.0f} %")
    if state.get("maxmem"):
        parts.append(f"RAM {int(state.get('mem') or 0) >> 20} / {int(state['maxmem']) >> 20} MiB")
    return ", ".join(parts)
