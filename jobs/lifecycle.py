"""The lifecycle after the deploy: change package (the ``cp_*`` table), terminate (to ``remove`` or, on any
failure, ``error_terminate``), and reset password. Each step compares the package with the VM and says
``skip - no change`` rather than touch Proxmox for nothing."""
from __future__ import annotations

from core import dns, ipam, settings, whmcs
from core.proxmox import disks
from core.proxmox.client import ProxmoxError
from core.proxmox.cluster import is_ours, vm_location

from .deploy import (_additional_disk, _config, _new_additional_disk, _put_config, _resize, _set_throttles, _status,
                     access_parameters, cloudinit_values, configure_firewall, configure_network,
                     dns_target, ensure_running, keep_suspended_off, network_values, pending_changes,
                     resize_system_disk, send_mail, set_cpu_ram, start_vm, stop_vm, sync_ipset, task_type)
from .pipeline import Done, Pipeline, Step, StepContext, StepFailed, StepResult, Wait, register

CP_START_WAIT = 60  # seconds the start at the end of a change package is polled in the same pass


# --------------------------------------------------------------------------- change package

def _hardware_changes(ctx: StepContext) -> list[str]:
    """What the steps after the stop would change on this VM (empty: the VM need not be stopped)."""
    pkg, config = ctx.package, _config(ctx)
    changes = []
    current = {k: int(str(config.get(k, 1 if k != "memory" else 512)).split("=")[-1] or 0)
               for k in ("cores", "sockets", "memory")}
    if current != {"cores": pkg.cpu_cores, "sockets": pkg.cpu_sockets, "memory": pkg.ram_mb}:
        changes.append("cpu/ram")
    system = disks.system_disk(config)
    if system and disks.disk_size(config, system) < pkg.system_disk_gb * 1024 ** 3:
        changes.append("system disk size")
    if system and disks.throttles_of(config[system]) != {n: getattr(pkg, f"system_disk_{n}") for n in disks.THROTTLES}:
        changes.append("system disk I/O")
    extra = _additional_disk(config, pkg)
    wants_extra = pkg.additional_disk_gb > 0 and bool(pkg.additional_disk_storage)
    if bool(extra) != wants_extra:
        changes.append("additional disk")
    elif extra:
        if disks.disk_size(config, extra) < pkg.additional_disk_gb * 1024 ** 3:
            changes.append("additional disk size")
        if disks.throttles_of(config[extra]) != {n: getattr(pkg, f"additional_disk_{n}") for n in disks.THROTTLES}:
            changes.append("additional disk I/O")
    if config.get("net0") != network_values(ctx, config):
        changes.append("network")
    # What the VM does not run with yet, though its config (pending changes applied) shows it: a change made
    # while it ran, CPU, RAM or cloud-init, which only a power-off applies.
    pending = pending_changes(ctx)
    if pending:
        changes.append(f"pending: {', '.join(pending)}")
    return changes


def cp_update_ip(ctx: StepContext) -> StepResult:
    """Addresses to the package's counts (allocate or hand back), then DNS and the IPSet rewritten whole (as
    the original does on every change package: it also repairs records changed by hand), and cloud-init's
    addresses where they differ from the VM's."""
    pkg, vm = ctx.package, ctx.vm
    if pkg.dhcp:
        return Done("skip - DHCP")
    held = ipam.assigned(ctx.service.id)
    before = {a.address for a in held}
    counts = {4: pkg.ipv4_count, 6: pkg.ipv6_count}
    surplus = [a.address for family, count in counts.items() for a in [h for h in held if h.family == family][count:]]
    if surplus:
        # Their PTRs go before the addresses do: once handed back, an address may be another VM's. A reverse
        # zone that could not delete them keeps the addresses here until it can (the next tick).
        gone = dns.delete_records(dns.Target(ctx.service.id, "", surplus, {}), ctx.out.line)
        if gone.reverse_err:
            raise StepFailed(f"the PTRs of {', '.join(surplus)} could not be deleted ({gone.note}); the addresses "
                             "are handed back once they are")
        for family, count in counts.items():
            ipam.release(ctx.service.id, family, keep=count)
    try:
        for family, count in counts.items():
            if len([a for a in ipam.assigned(ctx.service.id) if a.family == family]) < count:
                ipam.allocate(ctx.server, family, ctx.service.id, count)
    except ipam.NoFreeAddress as exc:
        raise StepFailed(str(exc)) from None
    finally:
        # Reverse names only for what the VM holds, also when an allocation failed after a release.
        after = {a.address for a in ipam.assigned(ctx.service.id)}
        rev = {ip: name for ip, name in (vm.rev_dns or {}).items() if ip in after}
        for address in after - before:
            rev.setdefault(address, dns_target(ctx).fqdn)
        if rev != (vm.rev_dns or {}):
            vm.rev_dns = rev
            ctx.commit()
    removed = sorted(before - after)
    summary = dns.resync(dns_target(ctx), ctx.out.line)
    if pkg.firewall_enable:
        sync_ipset(ctx)
    # Compared with what the VM has, not with this attempt's before and after: an attempt that failed after
    # handing an address back (committed) leaves the retry with nothing to compare (found in review: the
    # VM kept the address in cloud-init while the pool gave it to another VM).
    # With no address left of a family (or none at all), its part goes, and with the last one ipconfig0
    # itself: the VM must not keep an address the pool may hand to another VM (found by fuzzing).
    wanted = {k: v for k, v in cloudinit_values(ctx).items() if k in ("ipconfig0", "nameserver")}
    config = _config(ctx)
    changed = {key: value for key, value in wanted.items() if config.get(key) != value}
    stale = [key for key in ("ipconfig0", "nameserver") if key not in wanted and key in config]
    if changed or stale:
        _put_config(ctx, **changed, **({"delete": ",".join(stale)} if stale else {}))
    if before == after:
        return Done(f"addresses unchanged; DNS: {summary.note}")
    return Done(f"+{len(after - before)} -{len(removed)} addresses; {summary.note}")


def cp_stop(ctx: StepContext) -> StepResult:
    changes = _hardware_changes(ctx)
    if not changes:
        return Done("skip - no change")
    outcome = stop_vm(ctx, settings.get("api_heavy_timeout"))
    return outcome if isinstance(outcome, Wait) else Done(", ".join(changes))


def cp_system_disk_bandwidth(ctx: StepContext) -> StepResult:
    config = _config(ctx)
    return _set_throttles(ctx, config, disks.system_disk(config), "system_disk", clear=True)


def cp_additional_disk(ctx: StepContext) -> StepResult:
    """Create the additional disk the package now has, or, at 0, detach it and purge it from storage."""
    pkg = ctx.package
    config = _config(ctx)
    extra = _additional_disk(config, pkg)
    wanted = pkg.additional_disk_gb > 0 and bool(pkg.additional_disk_storage)
    if wanted and not extra:
        _put_config(ctx, **_new_additional_disk(config, pkg))
        return Done()
    if not wanted and extra:
        _put_config(ctx, delete=extra, force=1)  # force: the volume is freed, not left as unusedN
        return Done(f"removed {extra}")
    return Done("skip - no change")


def cp_additional_disk_size(ctx: StepContext) -> StepResult:
    pkg = ctx.package
    config = _config(ctx)
    extra = _additional_disk(config, pkg)
    if not extra or pkg.additional_disk_gb <= 0:
        return Done("skip - no change")
    return _resize(ctx, config, extra, pkg.additional_disk_gb, "additional disk")


def cp_additional_disk_bandwidth(ctx: StepContext) -> StepResult:
    config = _config(ctx)
    extra = _additional_disk(config, ctx.package)
    if not extra:
        return Done("skip - no change")
    return _set_throttles(ctx, config, extra, "additional_disk", clear=True)


def cp_start(ctx: StepContext) -> StepResult:
    """Start once at the end, given up to a minute; a failure waits at cp_firewall. A runner that may wait
    less in one pass (an RQ worker, the in-process ticker) polls the start task again on its next pass."""
    if ctx.suspended():
        return Done("skip - service suspended")
    outcome = start_vm(ctx, natural_wait=CP_START_WAIT)
    if isinstance(outcome, Wait):
        started_at = ctx.vm.task_started_at
        if started_at is not None and (ctx.clock.now() - started_at).total_seconds() < CP_START_WAIT:
            return outcome
        ctx.forget_task()
        raise StepFailed(f"VM did not start within {CP_START_WAIT} seconds")
    ensure_running(ctx)
    return outcome


def cp_verify(ctx: StepContext) -> StepResult:
    if ctx.suspended():
        outcome = keep_suspended_off(ctx)
        if isinstance(outcome, Wait):
            return outcome
    elif _status(ctx).get("status") != "running":
        raise StepFailed("VM is not running")
    return send_mail(ctx, ctx.package.email_upgrade, {"vm_name": ctx.vm.name}, "upgrade")


CHANGE_PACKAGE = register(Pipeline("ChangePackage", "change_package", (
    Step("Update IP + DNS + Firewall", "change_package", "cp_update_ip", cp_update_ip),
    Step("Stop VM", "cp_update_ip", "cp_stop", cp_stop),
    # Where a change-package step does what its deploy step does, the table names the deploy step.
    Step("Set CPU & RAM", "cp_stop", "cp_cpu_ram", set_cpu_ram),
    Step("Resize system disk", "cp_cpu_ram", "cp_system_disk_size", resize_system_disk),
    Step("Set system disk I/O", "cp_system_disk_size", "cp_system_disk_bandwidth", cp_system_disk_bandwidth),
    Step("Create additional disk", "cp_system_disk_bandwidth", "cp_additional_disk", cp_additional_disk),
    Step("Resize additional disk", "cp_additional_disk", "cp_additional_disk_size", cp_additional_disk_size),
    Step("Set additional disk I/O", "cp_additional_disk_size", "cp_additional_disk_bandwidth",
         cp_additional_disk_bandwidth),
    Step("Configure network", "cp_additional_disk_bandwidth", "cp_network", configure_network),
    Step("Configure firewall", "cp_network", "cp_firewall", configure_firewall),
    Step("Start VM", "cp_firewall", "cp_start", cp_start),
    Step("Verify running", "cp_start", "ready", cp_verify),
), label_width=38))  # the original's change-package output pads wider


# --------------------------------------------------------------------------- terminate

GRACEFUL_STOP = 120  # seconds a shutdown is polled, every 5 s, before the force-stop window
FORCE_STOP = 60
POLL = 5
PROGRESS_EVERY = 15


def _stop_for_terminate(ctx: StepContext, node: str) -> None:
    """A graceful stop polled every 5 s for up to 120 s, then a 60 s force-stop window; progress every 15 s."""
    vm, pve, clock, out = ctx.vm, ctx.pve(), ctx.clock, ctx.out
    path = ("nodes", node, "qemu", vm.vmid, "status")

    def running() -> bool:
        return (pve.get(*path, "current") or {}).get("status") == "running"

    if not running():
        out.line("    VM is stopped")
        return
    pve.post(*path, "shutdown", timeout=GRACEFUL_STOP)
    out.line("    stop request sent")
    for window, limit in (("graceful", GRACEFUL_STOP), ("force", FORCE_STOP)):
        waited, next_note = 0, PROGRESS_EVERY
        while waited < limit:
            clock.sleep(POLL)
            ctx.keep_lease()
            waited += POLL
            if not running():
                out.line(f"    VM stopped after {waited}s ({window})")
                return
            if waited >= next_note:
                out.line(f"    still running, waited {waited}s / {limit}s")
                next_note += PROGRESS_EVERY
        if window == "graceful":
            # Not skiplock: Proxmox allows it to root@pam alone, never to an API token. The shutdown task
            # has ended by now (its own timeout is the graceful window).
            pve.post(*path, "stop")
            out.line("    graceful stop timed out: force stop sent")
    raise StepFailed(f"VM {vm.vmid} is still running after {GRACEFUL_STOP + FORCE_STOP}s")


BACKUP_DELETE_WAIT = 30  # seconds (Proxmox's maximum for `delay`)


def _backups_of(ctx: StepContext) -> list[tuple[str, str, bool]]:
    """(node, volid, protected) of every backup of the VM on the storages that hold backups."""
    pve, vmid = ctx.pve(), ctx.vm.vmid
    found = []
    for item in pve.get("cluster", "resources", type="storage") or []:
        if "backup" not in str(item.get("content", "")) or item.get("status") != "available":
            continue
        for volume in pve.get("nodes", item["node"], "storage", item["storage"], "content", content="backup",
                              vmid=vmid) or []:
            # A shared storage is listed once per node: each backup is removed once.
            if int(volume.get("vmid") or -1) == vmid and volume["volid"] not in {v for _n, v, _p in found}:
                found.append((item["node"], volume["volid"], bool(int(volume.get("protected") or 0))))
    return found


def terminate(ctx: StepContext) -> StepResult:
    """Stop, remove backups, delete DNS records, delete the VM with purge, hand the addresses back.

    A delete that Proxmox is still running when this pass may wait no longer is not a failure: its task is
    polled on the next pass, which goes straight back to it. Only a delete that fails is error_terminate."""
    vm, pve, out = ctx.vm, ctx.pve(), ctx.out
    try:
        deleting = bool(ctx.tracked_task())  # started on an earlier pass
        found = None if deleting or not vm.vmid else vm_location(pve, vm.vmid)
        if deleting or is_ours(found, vm.name, vm.vmid):
            if not deleting and found.get("lock"):
                # A clone, migration or backup Proxmox is still running (a service cancelled while its VM
                # was being made): Proxmox would refuse the delete, so the next pass looks again.
                return Wait(f"VM is locked ({found['lock']}) until Proxmox finishes")
            if not deleting:
                _stop_for_terminate(ctx, found["node"])
                for backup_node, volid, protected in _backups_of(ctx):
                    if protected:  # an admin marked it to be kept: Proxmox refuses to remove it anyway
                        out.line(f"    backup kept (protected): {volid}")
                        continue
                    storage = volid.split(":")[0]
                    # Proxmox removes it in a task: `delay` waits for it (an error if it fails, a protected
                    # backup say), and answers a UPID only when it runs longer.
                    running = pve.delete("nodes", backup_node, "storage", storage, "content", volid,
                                         delay=BACKUP_DELETE_WAIT)
                    ctx.keep_lease()  # each removal may take its 30 s: the lease must outlast them all
                    out.line(f"    backup removed: {volid}" if not running else
                             f"    backup removal started: {volid}")
                summary = dns.delete_records(dns_target(ctx), out.line)
                out.line(f"    DNS: {summary.note}")
            outcome = ctx.await_task(lambda: pve.delete("nodes", found["node"], "qemu", vm.vmid, purge=1,
                                                        **{"destroy-unreferenced-disks": 1}),
                                     settings.get("api_heavy_timeout"), "delete")
            if isinstance(outcome, Wait):
                return outcome
            out.line("    VM deleted")
        else:
            summary = dns.delete_records(dns_target(ctx), out.line)
            out.line(f"    VM {vm.vmid or '-'} is not on the cluster; DNS: {summary.note}")
    except (StepFailed, ProxmoxError) as exc:
        _activity(ctx, f"Service ID: {ctx.service.id} termination FAILED - admin attention required: {exc}")
        raise StepFailed(str(exc)) from None
    ipam.release(ctx.service.id)
    _activity(ctx, f"Service ID: {ctx.service.id} VM {vm.vmid} terminated successfully")
    return Done()


def _activity(ctx: StepContext, text: str) -> None:
    """One entry in the client's activity log per terminate attempt (WHMCS LogActivity)."""
    try:
        whmcs.call("LogActivity", clientid=ctx.service.client_id, description=text)
    except whmcs.WhmcsError as exc:
        ctx.out.line(f"    activity log not written: {exc}")


TERMINATE = register(Pipeline("Terminate", "terminate", (
    Step("Terminate", "terminate", "remove", terminate, failure_status="error_terminate"),
), final="remove"))


# --------------------------------------------------------------------------- reset password

def reset_password(ctx: StepContext) -> StepResult:
    """VM off, cloud-init rewritten with the service's password, VM started (the password was generated
    and saved to WHMCS when the reset was asked for, or given by WHMCS's ChangePassword)."""
    # An earlier pass that got as far as the start: only that start is left to wait for (writing cloud-init
    # again now would land on a running VM, where Proxmox keeps it for the next power-on).
    if task_type(ctx.tracked_task()) != "qmstart":
        outcome = stop_vm(ctx, settings.get("api_heavy_timeout"))
        if isinstance(outcome, Wait):
            return outcome
        values = cloudinit_values(ctx)
        _put_config(ctx, ciuser=values["ciuser"], cipassword=values.get("cipassword", ""))
    if not ctx.suspended():  # a suspended service's VM stays off (it boots with it later)
        started = start_vm(ctx)
        if isinstance(started, Wait):
            return started
    if ctx.vm.status != "reset_password":  # WHMCS's own ChangePassword: WHMCS tells the client itself
        return Done()
    return send_mail(ctx, ctx.package.email_reset_password, access_parameters(ctx), "reset password")


RESET_PASSWORD = register(Pipeline("ResetPassword", "reset_password", (
    Step("Reset password", "reset_password", "ready", reset_password),
)))
CHANGE_PASSWORD = register(Pipeline("ChangePassword", "change_password", (
    Step("Change password", "change_password", "ready", reset_password),
)))
