"""RQ job entry points, enqueued by dotted name: ``jobs.worker.process_vm_job`` and ``jobs.worker.tick_job``.

A worker process builds the app once and runs every job inside an app context. A VM job advances the VM
as far as it can without holding the worker while Proxmox works: when a task still runs it re-queues
itself a few seconds later (``rq worker --with-scheduler``), and the next tick picks it up otherwise.
"""
from __future__ import annotations

import logging
import secrets
import signal

from flask import Flask
from rq.worker import SimpleWorker as RQSimpleWorker
from rq.worker import Worker

log = logging.getLogger("pkvm.worker")
_app: Flask | None = None


def _get_app() -> Flask:
    global _app
    if _app is None:
        from app import create_app, print_progress
        _app = create_app()
        print_progress()  # the cron output and the pipelines' steps in the worker's output
    return _app


class _RegistersAgain:
    """A worker that registers itself again when Redis has lost its data (restarted without persistence):
    RQ's own goes on working unregistered, and /healthz (like ``rq info``) would count no worker."""

    def heartbeat(self, timeout=None, pipeline=None):
        super().heartbeat(timeout, pipeline)
        if pipeline is None and not self.connection.hexists(self.key, "birth"):
            from rq import worker_registration
            with self.connection.pipeline() as again:
                again.hset(self.key, mapping=self.serialize())
                worker_registration.register(self, again)
                again.expire(self.key, self.worker_ttl + 60)
                again.execute()
            log.warning("worker %s registered again: Redis had lost its registration", self.name)


def _end_passes(signum, frame) -> None:
    from .pipeline import stopping
    stopping.set()


class PreloadedWorker(_RegistersAgain, Worker):
    """``rq worker -w jobs.worker.PreloadedWorker``: the app is built once, before the worker forks, so a
    job's work horse starts with it ready (the plain worker would build it again in every horse, about a
    second of CPU per job). Each horse drops the database connections it inherited.

    Told to stop, the worker passes it on to its work horse (SIGTERM), whose pass then ends before its next
    step, as SimpleWorker's does; a horse that gets SIGTERM straight from a service manager (which signals
    every process of the unit) does the same rather than die mid-step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _get_app()

    def main_work_horse(self, *args, **kwargs):
        from core.extensions import db
        with _get_app().app_context():
            db.engine.dispose(close=False)  # the parent's pooled connections are not this process's
        return super().main_work_horse(*args, **kwargs)

    def setup_work_horse_signals(self):
        super().setup_work_horse_signals()
        signal.signal(signal.SIGTERM, _end_passes)

    def handle_warm_shutdown_request(self):
        super().handle_warm_shutdown_request()
        if self.horse_pid:
            self.kill_horse(signal.SIGTERM)  # not a kill: the horse ends its pass at its next step


class SimpleWorker(_RegistersAgain, RQSimpleWorker):
    """``rq worker -w jobs.worker.SimpleWorker``: RQ's SimpleWorker (jobs run in the worker's own process),
    which, told to stop (SIGTERM, Ctrl+C), ends the pass it is in at its next step rather than carry a
    deploy through to its end; the VM's follow-up job (or the next tick) goes on from there."""

    def request_stop(self, signum, frame):
        _end_passes(signum, frame)
        super().request_stop(signum, frame)


def process_vm_job(service_id: int, manual: bool = False) -> dict:
    """One pass of the VM's pipeline; a task still running queues the next pass a few seconds later. With
    processVirtualMachines at interval 0 (off), VMs wait: a job queued before it was turned off does nothing,
    unless it comes from a run of the task by hand (``manual``, flask cron --task or --force)."""
    from core import queue as work_queue

    from .pipeline import Output, run_vm

    app = _get_app()
    with app.app_context():
        if not manual and not work_queue.vm_task_on():
            log.info("service %s: processVirtualMachines is off (interval 0): the VM waits", service_id)
            return {"service_id": service_id, "action": "", "result": "off", "message": "", "steps": 0,
                    "api_calls": 0}
        out = Output(log.info)
        result = run_vm(service_id, out, max_wait=app.config["JOB_MAX_WAIT"], owner=_lease_owner())
        if result.result in ("waiting", "changed"):  # a task to poll, or the VM's new status to work on
            from rq import get_current_job
            job = get_current_job()
            work_queue.enqueue_vm(service_id, delay=app.config["JOB_REQUEUE_SECONDS"], manual=manual,
                                  after=job.id if job else None)
        return {"service_id": service_id, "action": result.action, "result": result.result,
                "message": result.message, "steps": result.steps, "api_calls": result.api_calls}


def _lease_owner() -> str | None:
    """The VM lease owner of a job on an RQ worker: tied to the worker, so /healthz can tell a dead worker's
    VM from one another worker took over (None outside a worker: run_vm picks one)."""
    from rq import get_current_job

    from core.queue import worker_lease_prefix
    job = get_current_job()
    if job is None or not job.worker_name:
        return None
    return worker_lease_prefix(job.worker_name) + secrets.token_hex(6)


def tick_job() -> None:
    from .cron import run_tick
    from .pipeline import Output

    app = _get_app()
    with app.app_context():
        run_tick(Output(log.info))


def run_step_job(service_id: int, source: str, max_wait: float | None = None) -> dict:
    """One deploy step on its own (the original's admin commands such as VMSetCpuRam), under the VM's
    lease; the VM's status is left as it is. ``max_wait``: how long it may poll a Proxmox task before it
    answers that Proxmox goes on with it (the bridge must answer WHMCS in time)."""
    from flask import has_app_context

    from .deploy import DEPLOY
    from .pipeline import Done, Output, StepContext, StepFailed, claim, lease_seconds, release
    from core.extensions import db
    from core.models import VM
    from core.proxmox.client import ProxmoxError

    def run() -> dict:
        step = DEPLOY.step_from(source)
        out = Output(log.info)
        owner = f"step-{service_id}-{secrets.token_hex(4)}"  # two commands at once: one gets the lease
        if step is None:
            return {"result": "error", "message": f"no deploy step starts at {source}"}
        if db.session.get(VM, service_id) is None:  # no row to lease either: say why, not "being worked on"
            return {"result": "error", "message": _step_refused(None, source)}
        if not claim(service_id, owner, lease_seconds(None), out.clock):
            return {"result": "error", "message": "the VM is being worked on right now; try again shortly"}
        vm = db.session.get(VM, service_id)
        pipeline_task = vm.task_upid if vm is not None else None
        try:
            refused = _step_refused(vm, source)
            if refused:
                return {"result": "error", "message": refused}
            try:
                done = step.run(StepContext(vm, out, out.clock, max_wait))
            except (StepFailed, ProxmoxError) as exc:
                db.session.rollback()
                return {"result": "error", "message": f"{step.label}: {exc}"}
            if not isinstance(done, Done):
                return {"result": "error", "message": f"{step.label}: {done.reason}; Proxmox goes on with it"}
            db.session.commit()
            return {"result": "success", "message": f"{step.label}: {done.note or 'done'}"}
        finally:
            # A task this command started belongs to no pipeline: no later command may take it for its own.
            vm = db.session.get(VM, service_id)
            if vm is not None and vm.task_upid and vm.task_upid != pipeline_task:
                vm.task_upid = vm.task_status = vm.task_started_at = None
                db.session.commit()
            release(service_id, owner)

    if has_app_context():
        return run()
    with _get_app().app_context():
        return run()


def _step_refused(vm, source: str) -> str:
    """Why a one-step command may not run on this VM now ("" when it may): only on a VM that is deployed or
    being deployed, of a service that is not ended (a VMClone after a terminate made an untracked VM), and
    never a start for a suspended one."""
    from .deploy import DEPLOY
    if vm is None:
        return "this service has no VM"
    if vm.status != "ready" and vm.status not in {step.source for step in DEPLOY.steps}:
        return f"the VM is {vm.status}: a single deploy step runs only on a VM that is ready or being deployed"
    status = vm.service.status if vm.service is not None else ""
    if status in ("Terminated", "Cancelled", "Fraud"):
        return f"the service is {status}"
    if status == "Suspended" and source == "set_cloudinit":
        return "the service is suspended: its VM stays off"
    return ""
