"""Redeploy (VM Management's red button): destroy the VM on Proxmox, hand its addresses back, clear its log,
and start the deploy again from ``creation``."""
from __future__ import annotations

from sqlalchemy import delete

from core import ipam, settings
from core.extensions import db
from core.models import VMRun
from core.proxmox.cluster import is_ours, vm_location

from .pipeline import Done, Pipeline, Step, StepContext, StepResult, Wait, register


def destroy_on_proxmox(ctx: StepContext) -> StepResult | None:
    """Stop and purge the VM if it is ours and still there. Returns Wait while a task runs, None when the
    VM is gone."""
    vm = ctx.vm
    pve = ctx.pve()
    heavy = settings.get("api_heavy_timeout")
    if ctx.tracked_task():  # a stop or delete from an earlier pass
        outcome = ctx.await_task(lambda: vm.task_upid, heavy, "task")
        if isinstance(outcome, Wait):
            return outcome
    if vm.vmid is None:
        return None
    found = vm_location(pve, vm.vmid)
    if not is_ours(found, vm.name, vm.vmid):
        return None  # gone already, or the VMID now belongs to someone else: not ours to delete
    if found.get("lock"):  # a clone or migration still running: Proxmox would refuse the delete
        return Wait(f"VM is locked ({found['lock']}) until Proxmox finishes")
    node = found["node"]
    if found.get("status") == "running":
        outcome = ctx.await_task(lambda: pve.post("nodes", node, "qemu", vm.vmid, "status", "stop"), heavy, "stop")
        if isinstance(outcome, Wait):
            return outcome
    outcome = ctx.await_task(lambda: pve.delete("nodes", node, "qemu", vm.vmid, purge=1,
                                                **{"destroy-unreferenced-disks": 1}), heavy, "delete")
    return outcome if isinstance(outcome, Wait) else None


def remove_for_redeploy(ctx: StepContext) -> StepResult:
    waiting = destroy_on_proxmox(ctx)
    if waiting is not None:
        return waiting
    vm = ctx.vm
    ipam.release(vm.service_id)
    db.session.execute(delete(VMRun).where(VMRun.service_id == vm.service_id))
    vm.vmid, vm.node, vm.mac, vm.rev_dns, vm.welcome_sent_at = None, "", "", {}, None
    vm.last_error_action = vm.last_error_message = vm.last_error_at = None
    ctx.commit()
    return Done()


def remove_for_reinstall(ctx: StepContext) -> StepResult:
    """Snapshots deleted, backups kept, the VM removed; its VMID, MAC and addresses stay for the new one.
    The template is checked first: a VM is never removed for one that cannot be cloned."""
    from .deploy import template_of
    vm = ctx.vm
    template_of(ctx)  # StepFailed when the chosen template is not one: the VM is left as it is
    if not ctx.tracked_task() and vm.vmid:
        found = vm_location(ctx.pve(), vm.vmid)
        if is_ours(found, vm.name, vm.vmid):
            base = ("nodes", found["node"], "qemu", vm.vmid, "snapshot")
            for snapshot in ctx.pve().get(*base) or []:
                if snapshot.get("name") and snapshot["name"] != "current":
                    ctx.pve().delete(*base, snapshot["name"])
                    ctx.out.line(f"    snapshot deleted: {snapshot['name']}")
    waiting = destroy_on_proxmox(ctx)
    if waiting is not None:
        return waiting
    vm.node = ""
    vm.snapshots = 0
    ctx.commit()
    return Done()


REINSTALL = register(Pipeline("Reinstall", "reinstall", (
    Step("Remove VM", "reinstall", "set_ip", remove_for_reinstall),
), final="set_ip"))

REDEPLOY = register(Pipeline("Redeploy", "redeploy", (
    Step("Remove VM", "redeploy", "creation", remove_for_redeploy),
), final="creation"))
