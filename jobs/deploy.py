"""The deploy pipeline: from ``creation`` to ``ready``, the statuses, order and labels of the original.

Every step first reads what Proxmox has (does the VMID exist, how big is the disk, what is in net0) and only
then acts, so a step run twice, or resumed after a crash, changes nothing the second time.
"""
from __future__ import annotations

import logging
import re
import secrets
from urllib.parse import quote

from sqlalchemy.exc import IntegrityError

from core import dns, ipam, settings, whmcs
from core.accounts import customer_vm
from core.extensions import db
from core.models import IPAddress
from core.products import Package
from core.proxmox import disks
from core.proxmox.client import ProxmoxError
from core.proxmox.cluster import choose_target_node, choose_vmid, is_ours, storage_on_node, vm_location
from core.vault import unseal

from .pipeline import Done, Pipeline, Step, StepContext, StepFailed, StepResult, Wait, register

log = logging.getLogger("pkvm.deploy")
IPSET = "ipfilter-net0"


# --------------------------------------------------------------------------- helpers

def _config(ctx: StepContext) -> dict:
    vm = ctx.vm
    return ctx.pve().get("nodes", vm.node, "qemu", vm.vmid, "config") or {}


def _put_config(ctx: StepContext, **values) -> None:
    vm = ctx.vm
    ctx.pve().put("nodes", vm.node, "qemu", vm.vmid, "config", **values)


def _addresses(ctx: StepContext) -> list[IPAddress]:
    return ipam.assigned(ctx.service.id)


def vm_fqdn(ctx: StepContext) -> str:
    """``<vm name>.<main domain>``; without a main domain the VM has no name in DNS ("": no A, AAAA or PTR
    records but those an admin names by hand), never a single-label one."""
    domain = ctx.package.main_domain.rstrip(".")
    return f"{ctx.vm.name}.{domain}" if domain else ""


def _resize(ctx: StepContext, config: dict, key: str | None, size_gb: int, what: str) -> StepResult:
    """The disk ``key`` of the VM (``config``: its config as this step read it) grown to ``size_gb``."""
    if key is None:
        raise StepFailed(f"the VM has no {what} to resize")
    if size_gb <= 0:
        return Done("skip - no size set")
    current, wanted = disks.disk_size(config, key), size_gb * 1024 ** 3
    if current == wanted:
        return Done("skip - no change")
    if current > wanted:
        return Done("skip - shrink not allowed by Proxmox")
    vm = ctx.vm
    return ctx.await_task(lambda: ctx.pve().put("nodes", vm.node, "qemu", vm.vmid, "resize", disk=key,
                                                 size=f"{size_gb}G"),
                          settings.get("api_heavy_timeout"), "disk resize")


def _set_throttles(ctx: StepContext, config: dict, key: str | None, prefix: str, clear: bool = False) -> StepResult:
    """Limits on a disk as the package says (``config``: the VM's config as this step read it; in a deploy,
    the callers read none when all limits are 0: no API call at all). In a change package (clear) limits the
    package no longer has are removed."""
    pkg = ctx.package
    wanted = {name: getattr(pkg, f"{prefix}_{name}") for name in disks.THROTTLES}
    if not any(wanted.values()) and not clear:
        return Done("skip - no limits set")
    if key is None:
        raise StepFailed("the VM has no such disk to limit")
    value = config.get(key, "")
    new = disks.with_throttles(value, wanted)
    if new == value:
        return Done("skip - no change")
    _put_config(ctx, **{key: new})
    return Done()


def _storage_of(config: dict, key: str) -> str:
    return disks.split_value(config.get(key, ""))[0].split(":", 1)[0]


def _additional_disk(config: dict, pkg: Package) -> str | None:
    """The additional disk this product manages: the first data disk after the system disk on the product's
    additional disk storage. A disk an admin attached by hand elsewhere, or a template's second disk, is not
    ours to resize or remove; a product without an additional disk storage manages none."""
    if not pkg.additional_disk_storage:
        return None
    system = disks.system_disk(config)
    return next((key for key in disks.data_disks(config)
                 if key != system and _storage_of(config, key) == pkg.additional_disk_storage), None)


def _new_additional_disk(config: dict, pkg: Package) -> dict[str, str]:
    """The config line of a new additional disk: on the system disk's storage it takes that disk's format
    (its trailing extension, else raw); on another storage, that storage's own default (a block storage
    takes no qcow2)."""
    system = disks.system_disk(config)
    key = disks.free_disk_key(config, disks.bus_of(system) if system else "scsi")
    value = f"{pkg.additional_disk_storage}:{pkg.additional_disk_gb}"
    if system and _storage_of(config, system) == pkg.additional_disk_storage:
        value += f",format={disks.volume_format(disks.split_value(config[system])[0])}"
    return {key: value}


# --------------------------------------------------------------------------- steps

def allocate_ip(ctx: StepContext) -> StepResult:
    pkg = ctx.package
    if pkg.dhcp:
        return Done("skip - DHCP")
    if not pkg.ipv4_count and not pkg.ipv6_count:
        return Done("skip - no addresses in package")
    try:
        got = ipam.allocate_all(ctx.server, ctx.service.id,
                                {family: count for family, count in ((4, pkg.ipv4_count), (6, pkg.ipv6_count))
                                 if count})
    except ipam.NoFreeAddress as exc:
        raise StepFailed(str(exc)) from None
    fqdn = vm_fqdn(ctx)
    rev = dict(ctx.vm.rev_dns or {})
    for address in got:
        rev.setdefault(address.address, fqdn)
    ctx.vm.rev_dns = rev  # committed with the step (the addresses are the service's already)
    return Done(", ".join(a.address for a in got))


def dns_target(ctx: StepContext) -> dns.Target:
    return dns.Target(ctx.service.id, vm_fqdn(ctx), [a.address for a in _addresses(ctx)], dict(ctx.vm.rev_dns or {}))


def set_dns(ctx: StepContext) -> StepResult:
    """Forward and reverse records; a DNS problem is reported and never holds the deploy back."""
    return Done(dns.set_records(dns_target(ctx), ctx.out.line).note)


def template_of(ctx: StepContext) -> tuple[int, str]:
    """(VMID, node) of the template to clone: the one the client chose at a reinstall, else the package's.
    A template other than the product's own (a reinstall's choice, the Operating System option) is looked
    up on the cluster: its node, and that it is a template (an ordinary VM is never cloned for a client)."""
    vm, pkg = ctx.vm, ctx.package
    chosen = vm.os_template if vm.os_template and vm.os_template != pkg.template_vmid else None
    if chosen is None and "template_vmid" in pkg.options and pkg.template_vmid:
        chosen = pkg.template_vmid
    if chosen is not None:
        found = vm_location(ctx.pve(), chosen)
        if found is None or not found.get("template"):
            raise StepFailed(f"template {chosen} is not a template on the cluster")
        if customer_vm(vm.server_id, chosen):
            raise StepFailed(f"template {chosen} is a service's VM made into a template, not an OS template")
        return chosen, found["node"]
    if not pkg.template_vmid or not pkg.template_node:
        raise StepFailed("the product has no OS template (template VMID and node) set")
    return pkg.template_vmid, pkg.template_node


def clone(ctx: StepContext) -> StepResult:
    vm, pkg = ctx.vm, ctx.package
    template_vmid, template_node = template_of(ctx)
    pve = ctx.pve()
    resources: list[dict] = []
    if not ctx.tracked_task():
        # One read for our VMID's holder, the VMIDs in use and the storages of the template's node.
        resources = pve.get("cluster", "resources") or []
        if vm.vmid is not None:
            found = vm_location(pve, vm.vmid, resources)
            if found is not None:
                if not is_ours(found, vm.name, vm.vmid):
                    # Somebody else's VM holds our VMID: leave it alone and pick another.
                    vm.vmid = None
                    ctx.commit()
                elif found.get("lock") == "clone":
                    vm.node = found["node"]
                    ctx.commit()
                    return Wait("clone in progress")
                else:
                    vm.node = found["node"]
                    ctx.commit()
                    return _after_clone(ctx)
        if vm.vmid is None:
            _claim_vmid(ctx, resources)
            vm = ctx.vm

    def start() -> str:
        full = pkg.clone_mode != "linked"
        storage = pkg.system_disk_storage if full else None
        if storage and not storage_on_node(resources, storage, template_node):
            # Proxmox clones onto the template's node only; the migration's targetstorage moves the disk.
            if not settings.get("migration_enabled"):
                raise StepFailed(f"storage {storage} is not on the template's node {template_node} and the "
                                 "migration after the clone is off: turn it on (Settings) or choose a storage "
                                 f"{template_node} has")
            ctx.out.line(f"    storage {storage} is not on {template_node}: cloned to the template's storage, "
                         "the migration moves the disk")
            storage = None
        return pve.post("nodes", template_node, "qemu", template_vmid, "clone", newid=vm.vmid,
                        name=vm.name, full=full, storage=storage)

    vm.node = template_node
    outcome = ctx.await_task(start, settings.get("api_heavy_timeout"), "clone")
    if isinstance(outcome, Wait):
        return outcome
    return _after_clone(ctx)


def _claim_vmid(ctx: StepContext, resources: list[dict]) -> None:
    """Reserve a VMID on the VM row (``resources``: the cluster's /cluster/resources, with the VMIDs in
    use); the unique (server, vmid) constraint settles races between workers."""
    vm, exclude = ctx.vm, set()
    for _ in range(20):
        vm.vmid = choose_vmid(ctx.pve(), vm.server_id, ctx.package.first_vmid, exclude, resources)
        try:
            db.session.commit()
            return
        except IntegrityError:
            db.session.rollback()
            exclude.add(vm.vmid)
            vm = ctx.vm = db.session.get(type(vm), vm.service_id)
    raise StepFailed("could not reserve a free VMID")


def send_mail(ctx: StepContext, template: str, customvars: dict, what: str, must_reach: bool = False) -> StepResult:
    """A WHMCS email template to the service's client; a mail that cannot go out is noted, never fatal,
    unless it ``must_reach`` the client: then a WHMCS API that refused it or did not answer fails the step
    (tried again next tick). With no WHMCS API set up at all there is nobody to send through: a note."""
    if template:
        try:
            whmcs.send_email(template, ctx.service.id, customvars)
        except whmcs.WhmcsError as exc:
            if must_reach and not isinstance(exc, whmcs.WhmcsNotConfigured):
                raise StepFailed(f"{what} email not sent: {exc}") from None
            return Done(f"{what} email not sent: {exc}")
    return Done()


def _after_clone(ctx: StepContext) -> StepResult:
    """The Welcome email ("your VM is being created"), once per order: not again for a reinstall's clone."""
    vm = ctx.vm
    if vm.welcome_sent_at is not None:
        return Done()
    done = send_mail(ctx, ctx.package.email_welcome, {"vm_name": vm.name, "vmid": str(vm.vmid)}, "welcome")
    if not done.note:  # sent, or no Welcome template set: nothing to send later
        vm.welcome_sent_at = ctx.clock.now()
    return done


def migrate(ctx: StepContext) -> StepResult:
    vm, pkg = ctx.vm, ctx.package
    if not settings.get("migration_enabled"):
        return Done("skip - migration disabled")
    pve = ctx.pve()
    if not ctx.tracked_task():
        resources = pve.get("cluster", "resources") or []  # where the VM is, and the nodes it may go to
        found = vm_location(pve, vm.vmid, resources)
        if found is None:
            raise StepFailed(f"VM {vm.vmid} is not on the cluster")
        vm.node = found["node"]
        if found.get("lock") == "migrate":  # started by an earlier pass whose answer was lost
            ctx.commit()
            return Wait("migration in progress")
        choice = choose_target_node(resources, pkg.system_disk_storage, pkg.target_node)
        if choice.node is None:
            ctx.commit()
            return Done(f"skip - {choice.reason}, staying on {vm.node}")
        if choice.node == vm.node:
            ctx.commit()
            return Done(f"skip - already on {vm.node}")
        target = choice.node
    else:
        target = None
    source = vm.node

    def start() -> str:
        return pve.post("nodes", source, "qemu", vm.vmid, "migrate", target=target, online=0,
                        targetstorage=pkg.system_disk_storage or None)

    try:
        outcome = ctx.await_task(start, settings.get("migration_timeout"), "migration")
    except StepFailed as exc:
        return Done(f"{exc}; staying on {source}")
    except ProxmoxError as exc:
        if not exc.status:  # no answer: the migration may have started, so look again next time
            raise
        return Done(f"migration refused: {exc.message}; staying on {source}")
    if isinstance(outcome, Wait):
        return outcome
    found = vm_location(pve, vm.vmid)
    vm.node = found["node"] if found else vm.node
    ctx.commit()
    return Done() if vm.node != source else Done(f"still on {source}")


def set_cpu_ram(ctx: StepContext) -> StepResult:
    pkg = ctx.package
    config = _config(ctx)
    wanted = {"cores": pkg.cpu_cores, "sockets": pkg.cpu_sockets, "memory": pkg.ram_mb}
    current = {k: int(str(config.get(k, 1 if k != "memory" else 512)).split("=")[-1] or 0) for k in wanted}
    if current == wanted:
        return Done("skip - no change")
    _put_config(ctx, **wanted)
    return Done()


def resize_system_disk(ctx: StepContext) -> StepResult:
    config = _config(ctx)
    return _resize(ctx, config, disks.system_disk(config), ctx.package.system_disk_gb, "system disk")


def set_system_disk_io(ctx: StepContext) -> StepResult:
    pkg = ctx.package
    if not any(getattr(pkg, f"system_disk_{n}") for n in disks.THROTTLES):
        return Done("skip - no limits set")
    config = _config(ctx)
    return _set_throttles(ctx, config, disks.system_disk(config), "system_disk")


def create_additional_disk(ctx: StepContext) -> StepResult:
    pkg = ctx.package
    if pkg.additional_disk_gb <= 0 or not pkg.additional_disk_storage:
        return Done("skip - not configured")
    config = _config(ctx)
    if _additional_disk(config, pkg):
        return Done("skip - already present")
    _put_config(ctx, **_new_additional_disk(config, pkg))
    return Done()


def resize_additional_disk(ctx: StepContext) -> StepResult:
    pkg = ctx.package
    if pkg.additional_disk_gb <= 0 or not pkg.additional_disk_storage:
        return Done("skip - not configured")
    config = _config(ctx)
    return _resize(ctx, config, _additional_disk(config, pkg), pkg.additional_disk_gb, "additional disk")


def set_additional_disk_io(ctx: StepContext) -> StepResult:
    pkg = ctx.package
    if pkg.additional_disk_gb <= 0 or not any(getattr(pkg, f"additional_disk_{n}") for n in disks.THROTTLES):
        return Done("skip - no limits set")
    config = _config(ctx)
    return _set_throttles(ctx, config, _additional_disk(config, pkg), "additional_disk")


def _random_mac() -> str:
    # Proxmox's own OUI (BC:24:11), as the GUI assigns them.
    return "BC:24:11:" + ":".join(f"{b:02X}" for b in secrets.token_bytes(3))


def network_values(ctx: StepContext, config: dict) -> str:
    vm, pkg = ctx.vm, ctx.package
    mac = vm.mac or disks.nic_mac(config.get("net0")) or _random_mac()
    if vm.mac != mac:  # committed with the step: one that fails takes the VM's own (or a new one) again
        vm.mac = mac
    bridge, vlan = pkg.network_bridge, pkg.network_vlan
    pool = ctx.pool_of_main_address(4, 6)
    if pkg.auto_bridge_vlan and pool is not None and not pkg.dhcp:
        bridge, vlan = pool.bridge or bridge, pool.vlan
    firewall = pkg.firewall_enable and not pkg.dhcp
    return disks.nic_value(pkg.network_model, mac, bridge, vlan, pkg.network_rate_mbs, firewall)


def configure_network(ctx: StepContext) -> StepResult:
    config = _config(ctx)
    value = network_values(ctx, config)
    if config.get("net0") == value:
        return Done("skip - no change")
    _put_config(ctx, net0=value)
    return Done()


def configure_firewall(ctx: StepContext) -> StepResult:
    vm, pkg = ctx.vm, ctx.package
    if pkg.dhcp:
        return Done("skip - DHCP")
    if not pkg.firewall_enable:
        return Done("skip - firewall disabled in product")
    pve = ctx.pve()
    base = ("nodes", vm.node, "qemu", vm.vmid, "firewall")
    pve.put(*base, "options", enable=True, dhcp=pkg.firewall_dhcp, ndp=pkg.firewall_ndp,
            macfilter=pkg.firewall_macfilter, ipfilter=pkg.firewall_ipfilter,
            log_level_in=pkg.firewall_log_level_in, log_level_out=pkg.firewall_log_level_out,
            policy_in=pkg.firewall_policy_in, policy_out=pkg.firewall_policy_out)
    sync_ipset(ctx)
    return Done()


def sync_ipset(ctx: StepContext) -> None:
    """The anti-spoofing IPSet ipfilter-net0 holds exactly the VM's own addresses."""
    vm = ctx.vm
    pve = ctx.pve()
    base = ("nodes", vm.node, "qemu", vm.vmid, "firewall", "ipset")
    present: dict = {}
    if IPSET not in {s.get("name") for s in pve.get(*base) or []}:
        pve.post(*base, name=IPSET, comment="anti-spoofing: addresses of this VM")  # empty, as made
    else:
        present = {str(e.get("cidr")).split("/")[0]: e.get("cidr") for e in pve.get(*base, IPSET) or []}
    wanted = {a.address for a in _addresses(ctx)}
    for address in sorted(wanted - set(present)):
        pve.post(*base, IPSET, cidr=address)
    for address in sorted(set(present) - wanted):
        pve.delete(*base, IPSET, present[address])


def os_user(ctx: StepContext) -> str:
    """The guest's login: the product's OS username, else the service's, else root."""
    return ctx.package.os_username or ctx.service.username or "root"


def cloudinit_values(ctx: StepContext) -> dict:
    pkg, service = ctx.package, ctx.service
    values: dict = {"ciuser": os_user(ctx)}
    password = unseal(service.password)
    if password:
        values["cipassword"] = password
    addresses = _addresses(ctx)
    dns_servers: list[str] = []
    if pkg.dhcp:
        values["ipconfig0"] = "ip=dhcp" + (",ip6=dhcp" if pkg.ipv6_count else "")
    else:
        parts = []
        for family, ip_key, gw_key in ((4, "ip", "gw"), (6, "ip6", "gw6")):
            main = next((a for a in addresses if a.family == family), None)
            if main is None:
                continue
            pool = main.pool
            if pool is not None:
                mask, gateway, servers = pool.mask, pool.gateway, (pool.dns1, pool.dns2)
            else:  # from the server's legacy Assigned IP Addresses list: its line gives the network
                entry = ipam.legacy_entry(ctx.server, main.address)
                mask = (entry.prefix if entry and entry.prefix else (32 if family == 4 else 128))
                gateway, servers = (entry.gateway, entry.dns) if entry else ("", ())
            parts.append(f"{ip_key}={main.address}/{mask}")
            if gateway:
                parts.append(f"{gw_key}={gateway}")
            dns_servers += [d for d in servers if d]
        if parts:
            values["ipconfig0"] = ",".join(parts)
    if dns_servers:
        values["nameserver"] = " ".join(dict.fromkeys(dns_servers))
    if pkg.main_domain:
        values["searchdomain"] = pkg.main_domain.rstrip(".")
    keys = ssh_keys(service.customfields or {})
    if keys:
        values["sshkeys"] = quote(keys, safe="")
    return values


def ssh_keys(customfields: dict) -> str:
    for name, value in customfields.items():
        if name.lower().replace(" ", "").replace("_", "") in ("sshkey", "sshkeys", "sshpublickey") and value:
            return "\n".join(line.strip() for line in str(value).splitlines() if line.strip())
    return ""


def configure_cloudinit(ctx: StepContext) -> StepResult:
    config = _config(ctx)
    values = cloudinit_values(ctx)
    if not any("cloudinit" in str(v) for k, v in config.items() if disks.DISK_KEY.match(k)):
        storage = disks.split_value(config.get(disks.system_disk(config) or "", ""))[0].split(":")[0] \
            or ctx.package.system_disk_storage
        values[disks.free_disk_key(config, "ide")] = f"{storage}:cloudinit"
    _put_config(ctx, **values)
    return Done()


def _status(ctx: StepContext) -> dict:
    vm = ctx.vm
    return ctx.pve().get("nodes", vm.node, "qemu", vm.vmid, "status", "current") or {}


def start_vm(ctx: StepContext, natural_wait: float | None = None, known_off: bool = False) -> StepResult:
    """Start the VM (or poll the start an earlier pass sent); ``known_off``: the caller has just seen it is
    not running."""
    vm = ctx.vm
    if not ctx.tracked_task() and not known_off and _status(ctx).get("status") == "running":
        return Done("already running")
    pve = ctx.pve()
    try:
        outcome = ctx.await_task(lambda: pve.post("nodes", vm.node, "qemu", vm.vmid, "status", "start"),
                                 natural_wait or settings.get("api_heavy_timeout"), "start")
    except StepFailed as exc:
        raise StepFailed(f"VM failed to start ({exc})") from None
    return outcome


def ensure_running(ctx: StepContext) -> None:
    """After a start task that ended OK: the VM runs, or the step fails with the start task forgotten (and
    that committed, since the failure rolls the step back), so the next attempt sends a new start rather
    than polling the finished one for ever."""
    status = _status(ctx).get("status")
    if status != "running":
        ctx.forget_task()
        raise StepFailed(f"VM failed to start (status: {status})")


def stop_vm(ctx: StepContext, natural_wait: float) -> StepResult:
    """Power the VM off: an ACPI shutdown, forced once ``natural_wait`` seconds have passed."""
    vm = ctx.vm
    pve = ctx.pve()
    if not ctx.tracked_task() and _status(ctx).get("status") != "running":
        return Done()
    return ctx.await_task(lambda: pve.post("nodes", vm.node, "qemu", vm.vmid, "status", "shutdown",
                                           timeout=int(natural_wait), forceStop=1), natural_wait + 30, "stop")


def task_type(upid: str | None) -> str:
    """The type field of a UPID (``UPID:node:pid:pstart:starttime:type:id:user:``): qmstart, qmshutdown..."""
    parts = (upid or "").split(":")
    return parts[5] if len(parts) > 5 else ""


CLOUDINIT_KEY = re.compile(r"^(ipconfig\d+|nameserver|searchdomain|ciuser|cipassword|sshkeys|cicustom)$")


def _is_pending(item: dict) -> bool:
    """An entry of /pending that the next power-on changes: a deletion, or a value other than the current one
    (Proxmox itself drops a pending value equal to the current)."""
    return bool(item.get("delete")) or ("pending" in item and str(item["pending"]) != str(item.get("value", "")))


def pending_changes(ctx: StepContext) -> list[str]:
    """What a running VM takes only at its next power-on: the config keys Proxmox keeps pending (CPU, RAM,
    disks and network that are not hot-plugged) and cloud-init settings its drive does not have yet. (A
    running guest keeps its old addresses until then, while the pool may already hand a released one to
    another VM.) Proxmox 7.2 and later write cloud-init options of a running VM into its config at once
    and list what the drive lacks under /cloudinit; an older one keeps them in /pending."""
    path = ("nodes", ctx.vm.node, "qemu", ctx.vm.vmid)
    keys = [str(item.get("key")) for item in ctx.pve().get(*path, "pending") or [] if _is_pending(item)]
    if not any(CLOUDINIT_KEY.match(key) for key in keys) and _cloudinit_drive_behind(ctx, path):
        keys.append("cloud-init")
    return keys


def _cloudinit_drive_behind(ctx: StepContext, path: tuple) -> bool:
    try:
        drive = ctx.pve().get(*path, "cloudinit") or []
    except ProxmoxError as exc:
        if exc.status not in (400, 404, 501):  # only "no such call here" means an older Proxmox
            raise
        return False  # an older Proxmox: its cloud-init changes are among the pending keys
    return any(CLOUDINIT_KEY.match(str(item.get("key", ""))) and _is_pending(item) for item in drive)


def start_step(ctx: StepContext) -> StepResult:
    """The deploy's start: not for a suspended service, whose VM stays off until it is unsuspended.

    A VM that already runs (a deploy run again from an earlier status by an admin, or the one-step VMStart
    after a change) has what Proxmox cannot apply live pending until it is powered off: it is powered off
    and started again here."""
    if ctx.suspended():
        return Done("skip - service suspended")
    tracked = task_type(ctx.tracked_task())
    note = "restarted to apply pending changes"
    if tracked == "qmstart":
        return start_vm(ctx)
    if not tracked:  # nothing under way: a fresh clone is off; a VM that runs is restarted for what is pending
        if _status(ctx).get("status") != "running":
            return start_vm(ctx, known_off=True)
        pending = pending_changes(ctx)
        if not pending:
            return Done("already running")
        note += f": {', '.join(pending)}"
    outcome = stop_vm(ctx, settings.get("api_heavy_timeout"))
    if isinstance(outcome, Wait):
        return outcome
    outcome = start_vm(ctx)
    return outcome if isinstance(outcome, Wait) else Done(note)


def verify_running(ctx: StepContext) -> StepResult:
    if ctx.suspended():
        outcome = keep_suspended_off(ctx)
        if isinstance(outcome, Wait):
            return outcome
    elif _status(ctx).get("status") != "running":
        outcome = start_vm(ctx)
        if isinstance(outcome, Wait):  # a runner with a short wait per pass: polled on the next one
            return outcome
        ensure_running(ctx)
    # The client's way to their VM: a mail the WHMCS API did not take keeps the VM at `starting`, with the
    # reason in the log and the red banner, and the next tick sends it again.
    return send_mail(ctx, ctx.package.email_vm_ready, access_parameters(ctx), "VM ready", must_reach=True)


def keep_suspended_off(ctx: StepContext) -> StepResult:
    """A suspended service's VM off (Wait while it stops): a suspend that came while the start step ran (it
    read the service as active) is made good here."""
    if task_type(ctx.tracked_task()) == "qmstart":  # a start still under way: its end first, then the stop
        try:
            outcome = ctx.await_task(lambda: ctx.vm.task_upid, settings.get("api_heavy_timeout"), "start")
        except StepFailed:
            outcome = Done()  # it did not start: off, as it should be
        if isinstance(outcome, Wait):
            return outcome
    return stop_vm(ctx, settings.get("api_heavy_timeout"))


def access_parameters(ctx: StepContext) -> dict[str, str]:
    """The merge fields of the emails that give the client their VM: name, VMID, addresses, user, password."""
    addresses = _addresses(ctx)
    return {"vm_name": ctx.vm.name, "vmid": str(ctx.vm.vmid),
            "ip": next((a.address for a in addresses if a.family == 4), ""),
            "ipv6": next((a.address for a in addresses if a.family == 6), ""),
            "username": os_user(ctx), "password": unseal(ctx.service.password)}


DEPLOY = register(Pipeline("Deploy", "deploy", (
    Step("Allocate IP", "creation", "set_ip", allocate_ip),
    Step("Set DNS records", "set_ip", "set_dns", set_dns),
    Step("Clone VM", "set_dns", "clone", clone),
    Step("Migrate to target node", "clone", "migrated", migrate),
    Step("Set CPU & RAM", "migrated", "set_cpu_ram", set_cpu_ram),
    Step("Resize system disk", "set_cpu_ram", "set_system_disk_size", resize_system_disk),
    Step("Set system disk I/O", "set_system_disk_size", "set_system_disk_bandwidth", set_system_disk_io),
    Step("Create additional disk", "set_system_disk_bandwidth", "set_created_additional_disk",
         create_additional_disk),
    Step("Resize additional disk", "set_created_additional_disk", "set_additional_disk_size",
         resize_additional_disk),
    Step("Set additional disk I/O", "set_additional_disk_size", "set_additional_disk_bandwidth",
         set_additional_disk_io),
    Step("Configure network", "set_additional_disk_bandwidth", "set_network", configure_network),
    Step("Configure firewall", "set_network", "set_firewall", configure_firewall),
    Step("Configure cloud-init", "set_firewall", "set_cloudinit", configure_cloudinit),
    Step("Start VM", "set_cloudinit", "starting", start_step),
    Step("Verify running + Email", "starting", "ready", verify_running),
)))
