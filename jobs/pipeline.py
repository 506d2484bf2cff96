"""The pipeline engine: explicit, persisted step tables and the runner that walks a VM through them.

A pipeline is an ordered table of steps; each step moves the VM from one stored status to the next. The
runner takes the VM's lease, runs the step that starts at the stored status, commits the new status and
a log line, and goes on until the pipeline's final status, a step that must wait for Proxmox, or a step
that fails. A failure leaves the VM at its last good status; the next tick resumes there. Steps look at
the real state before they act, so running one twice does no harm.

The live output is the original module's format, line for line::

    --- Deploy: service=5546 vm=2002 status=clone ---
    [+] 1. Migrate to target node          success (clone -> migrated) [30.23s]
    ...
    --- Deploy complete: service=5546 status=ready ---
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Protocol

from flask import current_app
from rq.timeouts import JobTimeoutException
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value

from core import clock as db_clock
from core import ipam, settings
from core.extensions import db
from core.models import VM, IPPool, Server, Service, VMRun
from core.products import Package, PackageError, resolve_package
from core.proxmox.client import ProxmoxError, Pve, endpoint_for, task_outcome
from core.vault import unseal

log = logging.getLogger("pkvm.pipeline")
RUNS_KEPT = 50
STEP_LINES_KEPT = 40  # detail lines kept per step in the VM log
ERROR_KEPT = 4000  # characters of a step's error kept on the VM and in its log


class Clock(Protocol):
    def now(self) -> datetime: ...
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return db_clock.now()  # the database server's time: leases are compared across machines

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Output:
    """Where the live lines go: a stream (the cron CLI), a logger (workers), or nowhere; the detail lines a
    step writes (DNS zone by zone, a stop's progress) are also kept with the step in the VM log."""

    def __init__(self, write: Callable[[str], None] | None = None, clock: Clock | None = None):
        self._write = write
        self.clock = clock or SystemClock()
        self.captured: list[str] | None = None  # the detail lines of the step that runs, for its run entry

    def line(self, text: str) -> None:
        if self.captured is not None:
            self.captured.append(text.strip())
        if self._write is not None:
            self._write(text)

    def stamped(self, text: str) -> None:
        self.line(f"{self.clock.now():%Y-%m-%d %H:%M:%S} {text}")


class StepFailed(Exception):
    """A step could not do its work this time; the message is what the admin reads."""


@dataclass
class Done:
    note: str = ""  # shown after the label: "skip - no change"


@dataclass
class Wait:
    reason: str  # a Proxmox task still runs; the status stays and a later pass polls it


StepResult = Done | Wait


@dataclass(frozen=True)
class Step:
    label: str
    source: str
    target: str
    run: Callable[["StepContext"], StepResult]
    # Where a failure leaves the VM: its status (retried next tick), or a terminal status (never retried).
    failure_status: str | None = None


@dataclass(frozen=True)
class Pipeline:
    name: str  # "Deploy": shown in the output
    action: str  # "deploy": the sid line and the run log
    steps: tuple[Step, ...]
    final: str = "ready"
    label_width: int = 34  # the "N. label" column of the output, as the original pads it

    def step_from(self, status: str) -> Step | None:
        for step in self.steps:
            if step.source == status:
                return step
        return None

    @property
    def statuses(self) -> set[str]:
        return {step.source for step in self.steps}


PIPELINES: list[Pipeline] = []


def register(pipeline: Pipeline) -> Pipeline:
    PIPELINES.append(pipeline)
    return pipeline


def pipeline_for(status: str) -> Pipeline | None:
    for pipeline in PIPELINES:
        if status in pipeline.statuses:
            return pipeline
    return None


def active_statuses() -> set[str]:
    out: set[str] = set()
    for pipeline in PIPELINES:
        out |= pipeline.statuses
    return out


class StepContext:
    """What a step works with: the VM row and its service, the package, Proxmox, the clock, the output."""

    def __init__(self, vm: VM, out: Output, clock: Clock, max_wait: float | None,
                 keep_lease: Callable[[], None] = lambda: None):
        self.vm = vm
        # A step that waits long within one pass (terminate's stop windows) calls this between its polls, so
        # that its VM's lease never runs out under it and no other worker starts on the VM meanwhile.
        self.keep_lease = keep_lease
        self.service: Service = vm.service
        self.server: Server = vm.server
        self.out = out
        self.clock = clock
        self.max_wait = max_wait
        self._pve: dict[bool, Pve] = {}
        self._package: Package | None = None
        self.poll_seconds = float(current_app.config["TASK_POLL_SECONDS"])

    @property
    def package(self) -> Package:
        """The service's package; an unreadable configurable option fails the step that needs it."""
        if self._package is None:
            try:
                self._package = resolve_package(self.service.product.settings, self.service.configoptions)
            except PackageError as exc:
                raise StepFailed(str(exc)) from None
        return self._package

    def pve(self, heavy: bool = True) -> Pve:
        """The cluster's API (heavy: the cron operations timeout, else the default one)."""
        if heavy not in self._pve:
            timeout = settings.get("api_heavy_timeout" if heavy else "api_timeout")
            endpoint = endpoint_for(self.server, unseal(self.server.token_secret), current_app.instance_path)
            self._pve[heavy] = Pve(endpoint, timeout=timeout)
        return self._pve[heavy]

    @property
    def api_calls(self) -> int:
        return sum(p.calls for p in self._pve.values())

    def commit(self) -> None:
        db.session.commit()

    def budget(self, natural: float) -> float:
        """How long this pass may wait for a task: the step's own limit, capped by the runner's."""
        return natural if self.max_wait is None else min(natural, self.max_wait)

    def suspended(self) -> bool:
        """Whether the service is suspended now: read afresh, as WHMCS may suspend or unsuspend it while a
        pass works on its VM (the VM's lease does not hold the service's row)."""
        status = db.session.scalar(select(Service.status).where(Service.id == self.vm.service_id))
        return status == "Suspended"

    def tracked_task(self) -> str | None:
        """The UPID of the Proxmox task this step started on an earlier pass, if any (await_task polls it
        rather than start another)."""
        vm = self.vm
        return vm.task_upid if vm.task_upid and vm.task_status == vm.status else None

    def await_task(self, start: Callable[[], str], natural_wait: float, what: str) -> StepResult:
        """Start a Proxmox task once (its UPID is stored on the VM) and poll it up to the wait budget.

        Returns Done when it ended OK, Wait while it runs; raises StepFailed when it ended in error, after
        forgetting the UPID so the next attempt starts afresh."""
        vm = self.vm
        if not self.tracked_task():
            upid = start()
            if not isinstance(upid, str) or not upid.startswith("UPID:"):
                return Done()  # the call finished synchronously
            vm.task_upid, vm.task_status, vm.task_started_at = upid, vm.status, self.clock.now()
            self.commit()
        deadline = self.clock.monotonic() + self.budget(natural_wait)
        # Polled at once, then at growing intervals (TASK_POLL_SECONDS doubling up to four times it) and
        # once more at the deadline: a long clone costs a few calls per pass, a short task is seen at once.
        interval = self.poll_seconds
        while True:
            finished, error = task_outcome(self.pve().task_status(vm.task_upid))
            if finished:
                if error:
                    self.forget_task()
                    raise StepFailed(error if error.lower().startswith(what) else f"{what} failed: {error}")
                # Committed with the step's new status. Should anything later in the step fail instead, the
                # next attempt finds this finished task again and goes on from it.
                self.forget_task(commit=False)
                return Done()
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return Wait(f"{what} still running")
            self.clock.sleep(min(interval, left))
            self.keep_lease()
            interval = min(interval * 2, self.poll_seconds * 4)

    def forget_task(self, commit: bool = True) -> None:
        vm = self.vm
        vm.task_upid = vm.task_status = vm.task_started_at = None
        if commit:
            self.commit()

    def pool_of_main_address(self, *families: int) -> IPPool | None:
        """The pool of the service's first address of the first of ``families`` it has one of."""
        pools = {}
        for address in ipam.assigned(self.service.id):
            pools.setdefault(address.family, address.pool)
        return next((pools[family] for family in families if family in pools), None)


@dataclass
class RunResult:
    service_id: int
    action: str = ""
    result: str = "idle"  # idle / busy / success / waiting / error / changed (see VMChanged)
    message: str = ""
    steps: int = 0
    api_calls: int = 0
    step_cpu: list[float] = field(default_factory=list)


def _fmt_step(mark: str, number: int, label: str, width: int, body: str, source: str, target: str,
              seconds: float) -> str:
    return f"[{mark}] {f'{number}. {label}'.ljust(width)} {body} ({source} -> {target}) [{seconds:.2f}s]"


def claim(service_id: int, owner: str, lease_seconds: float, clock: Clock) -> bool:
    """Take the VM's lease if nobody holds a live one (a conditional UPDATE: safe across workers)."""
    now = clock.now()
    taken = db.session.execute(
        update(VM).where(VM.service_id == service_id,
                         or_(VM.lease_until.is_(None), VM.lease_until < now, VM.lease_owner == owner))
        .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds)))
    db.session.commit()
    return taken.rowcount == 1


def release(service_id: int, owner: str) -> None:
    db.session.rollback()
    db.session.execute(update(VM).where(VM.service_id == service_id, VM.lease_owner == owner)
                       .values(lease_owner=None, lease_until=None))
    db.session.commit()


# Set when the worker process is told to stop: a pass then ends before its next step (see jobs.worker).
stopping = threading.Event()


class VMChanged(Exception):
    """The VM is not this pass's any more: its status was changed (a terminate, an admin's reset) or another
    runner took its lease while the pass worked on it."""


def _advance(vm: VM, step: Step, status: str | None = None) -> None:
    """Move the VM from the step's source status to its target (or ``status``), in the step's transaction,
    unless its status was changed meanwhile by someone who does not wait for a pass to end: VMChanged."""
    status = status or step.target
    moved = db.session.execute(update(VM).where(VM.service_id == vm.service_id, VM.status == step.source)
                               .values(status=status))
    if moved.rowcount != 1:
        current = db.session.scalar(select(VM.status).where(VM.service_id == vm.service_id))
        raise VMChanged(f"was changed meanwhile (now {current})")
    set_committed_value(vm, "status", status)


def retry_delay() -> float:
    """Seconds before a failed step is tried again: the next processVirtualMachines tick (never sooner than
    a minute's tick would, also when the task is off)."""
    return max(settings.get("interval_processVirtualMachines") * 60 - 10, 50)


# A lease outlasts the longest step (its wait plus two API calls at the heavy timeout) by this much; a pass
# renews it once this much has gone, so a step never starts on a lease that could run out under it.
LEASE_SLACK = 60


def lease_seconds(max_wait: float | None) -> float:
    heavy = settings.get("api_heavy_timeout")
    longest = max_wait if max_wait is not None else max(settings.get("migration_timeout"), heavy)
    return longest + 2 * heavy + LEASE_SLACK


# Pipelines that apply what WHMCS last sent for the service (its package, its password).
RUN_AGAIN_ON_CHANGE = ("change_package", "change_password")


def _service_changed(vm: VM) -> bool:
    """Whether the service's package or password differs now from what this pass read at its start."""
    service = vm.service
    row = db.session.execute(select(Service.product_id, Service.configoptions, Service.password)
                             .where(Service.id == vm.service_id)).first()
    return row is not None and (row.product_id, row.configoptions, row.password) != (
        service.product_id, service.configoptions, service.password)


def _save_run(vm: VM, pipeline: Pipeline, source: str, result: str, error: str | None, steps: list[dict],
              started: datetime, clock: Clock) -> None:
    db.session.add(VMRun(service_id=vm.service_id, action=pipeline.action, from_status=source,
                         to_status=vm.status, result=result, error=error, steps=steps, started_at=started,
                         finished_at=clock.now()))
    db.session.flush()
    stale = list(db.session.scalars(select(VMRun.id).where(VMRun.service_id == vm.service_id)
                                    .order_by(VMRun.id.desc()).offset(RUNS_KEPT)))
    if stale:
        db.session.execute(delete(VMRun).where(VMRun.id.in_(stale)))


INTERRUPTED = ("the pass before did not finish (its worker was stopped or killed, or it outlived its lease); "
               "what it committed stays, and the VM goes on from here")


def _save_interrupted(vm: VM, pipeline: Pipeline, source: str, steps: list[dict], started: datetime, clock: Clock,
                      step: Step, exc: BaseException) -> None:
    """The run of a pass cut short in a step, with the steps it finished, as far as the database lets."""
    reason = f"interrupted in {step.label}: {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
    try:
        db.session.rollback()
        _save_run(vm, pipeline, source, "interrupted", reason[:ERROR_KEPT], steps, started, clock)
        db.session.commit()
    except Exception:  # noqa: BLE001 - the pass is ending anyway; what stopped it is raised on
        log.warning("the run of service %s could not be saved", vm.service_id, exc_info=True)
        db.session.rollback()


def run_vm(service_id: int, out: Output, clock: Clock | None = None, max_wait: float | None = None,
           owner: str | None = None) -> RunResult:
    """Advance one VM through its pipeline as far as it can go in this pass."""
    with settings.snapshot():
        return _run_vm(service_id, out, clock or out.clock, max_wait, owner or f"run-{secrets.token_hex(6)}")


def _run_vm(service_id: int, out: Output, clock: Clock, max_wait: float | None, owner: str) -> RunResult:
    result = RunResult(service_id)
    lease = lease_seconds(max_wait)
    # Every pass lets its lease go at its end: one still named on a lapsed lease never got there.
    before = db.session.execute(select(VM.lease_owner, VM.lease_until, VM.status)
                                .where(VM.service_id == service_id)).first()
    if not claim(service_id, owner, lease, clock):
        result.result = "busy"
        return result
    interrupted = before is not None and before.lease_owner not in (None, owner) and before.lease_until < clock.now()
    claimed = [clock.monotonic()]

    def renew() -> None:
        """A long pass keeps its lease (checked between steps and between a long step's polls); one whose
        lease another runner has taken meanwhile stops (VMChanged)."""
        if clock.monotonic() - claimed[0] >= LEASE_SLACK:
            if not claim(service_id, owner, lease, clock):
                raise VMChanged("another runner holds the VM now")
            claimed[0] = clock.monotonic()
    # While a VM holds our lease no other runner writes its rows, so what this pass committed stays what it
    # read: no reloading the VM, service, product and server after every commit of every step. A terminate
    # or an admin's reset does not wait for the pass: each status move checks for one (_advance).
    session = db.session()
    expiring, session.expire_on_commit = session.expire_on_commit, False
    try:
        # The VM with its service, product and server: what every step reads, in one query.
        vm = db.session.get(VM, service_id, options=[joinedload(VM.service).joinedload(Service.product),
                                                     joinedload(VM.server)])
        pipeline = pipeline_for(vm.status) if vm else None
        if interrupted and pipeline is not None:  # a run in the VM's log, so that it has no unexplained gap
            out.line(f"--- service={service_id}: {INTERRUPTED} ({vm.status}) ---")
            _save_run(vm, pipeline, vm.status, "interrupted", INTERRUPTED, [], clock.now(), clock)
            db.session.commit()
        # One pipeline may hand over to another (a redeploy ends at ``creation``, where the deploy starts).
        for _ in range(len(PIPELINES)):
            if pipeline is None:
                break
            result.action = pipeline.action
            try:
                _run_pipeline(vm, pipeline, out, clock, max_wait, result, renew=renew)
            except VMChanged as changed:
                # A terminate, an admin's reset or another runner took the VM while this pass worked on it:
                # what this pass had not committed is dropped, and the VM is left to its new owner.
                db.session.rollback()
                out.line(f"--- {pipeline.name} stopped: service={service_id} {changed} ---")
                result.result, result.message = "changed", str(changed)
            if result.result != "success":
                break
            following = pipeline_for(vm.status)
            if following is None or following is pipeline:
                break
            pipeline = following
            out.line("")
        return result
    finally:
        session.expire_on_commit = expiring
        release(service_id, owner)


# Pipelines that work on a VM made earlier: it may have moved to another node since (Proxmox HA, an admin's
# migration), so its node is looked up first. (Deploy, terminate and redeploy look it up themselves.)
FOLLOWS_MOVES = ("change_package", "reset_password", "change_password")


def _follow_move(ctx: "StepContext") -> None:
    from core.proxmox.cluster import is_ours, vm_location
    vm = ctx.vm
    try:
        found = vm_location(ctx.pve(), vm.vmid)
    except ProxmoxError:
        return  # the steps meet the same problem and say it
    if found and found.get("node") and found["node"] != vm.node and is_ours(found, vm.name, vm.vmid):
        ctx.out.line(f"VM {vm.vmid} is on node {found['node']} now (it was on {vm.node})")
        vm.node = found["node"]
        ctx.commit()


def _run_pipeline(vm: VM, pipeline: Pipeline, out: Output, clock: Clock, max_wait: float | None,
                  result: RunResult, renew: Callable[[], None] = lambda: None) -> None:
    ctx = StepContext(vm, out, clock, max_wait, keep_lease=renew)
    source, started, steps = vm.status, clock.now(), []
    out.line(f"--- {pipeline.name}: service={vm.service_id} vm={vm.vmid or '-'} status={vm.status} ---")
    if pipeline.action in FOLLOWS_MOVES and vm.vmid and vm.node:
        _follow_move(ctx)
    number, error = 0, None
    outcome = "success"
    while vm.status != pipeline.final:
        step = pipeline.step_from(vm.status)
        if step is None:
            break
        if number and stopping.is_set():  # the worker is stopping: what is committed stays, the rest waits
            outcome, result.message = "waiting", "the worker is stopping"
            error = "the worker was stopping: the pass ended before its next step; the next pass goes on from here"
            break
        number += 1
        began, cpu_began = clock.monotonic(), time.process_time()
        out.captured = []
        try:
            done = step.run(ctx)
        except (StepFailed, ProxmoxError) as exc:
            done, error = None, str(exc)
        except VMChanged:
            # Not this step's failure (never its failure status): the VM was taken from this pass. The status
            # stays as committed; its new owner goes on from there.
            raise
        except (JobTimeoutException, SystemExit, KeyboardInterrupt) as exc:
            # Nor this: the worker's job ran out of time, or the worker is made to stop. The status stays as
            # committed and the next tick goes on from there; the log says where this pass was cut short.
            _save_interrupted(vm, pipeline, source, steps, started, clock, step, exc)
            raise
        except Exception as exc:  # noqa: BLE001 - one VM's bug must not stop the tick
            db.session.rollback()
            log.error("step %s of service %s crashed:\n%s", step.label, vm.service_id, traceback.format_exc())
            done, error = None, f"internal error in step: {type(exc).__name__}: {exc}"
        finally:
            captured, out.captured = out.captured, None
        seconds = clock.monotonic() - began
        result.step_cpu.append(time.process_time() - cpu_began)
        if error is not None and len(error) > ERROR_KEPT:  # a TEXT column on MariaDB holds 64 KB at most
            error = error[:ERROR_KEPT] + " [...]"
        entry = {"label": step.label, "from": step.source, "at": clock.now().isoformat(timespec="seconds"),
                 "seconds": round(seconds, 2)}
        if captured:
            entry["lines"] = [line[:300] for line in captured[:STEP_LINES_KEPT]]
        if done is None:
            db.session.rollback()
            stays = step.failure_status or step.source
            if stays != step.source:
                _advance(vm, step, stays)
            if step.failure_status:
                message = f"{error.rstrip('.')}. Admin action required."
            else:
                message = error if error.endswith("Will retry.") else f"{error.rstrip('.')}. Will retry."
            out.line(_fmt_step("!", number, step.label, pipeline.label_width, message, step.source, stays,
                               seconds))
            entry.update(to=stays, result="error: " + error)
            steps.append(entry)
            vm.status = stays
            vm.last_error_action, vm.last_error_message, vm.last_error_at = pipeline.action, error, clock.now()
            vm.next_run_at = clock.now() + timedelta(seconds=retry_delay())
            if step.failure_status:  # a terminal status: no task of this pipeline is polled any more
                vm.task_upid = vm.task_status = vm.task_started_at = None
            outcome, result.message = "error", message
            break
        if isinstance(done, Wait):
            out.line(_fmt_step("~", number, step.label, pipeline.label_width, f"waiting - {done.reason}",
                               step.source, step.source, seconds))
            entry.update(to=step.source, result="waiting", note=done.reason)
            steps.append(entry)
            vm.next_run_at = clock.now() + timedelta(seconds=max(ctx.poll_seconds, 1.0))
            outcome, result.message = "waiting", done.reason
            break
        label = f"{step.label} ({done.note})" if done.note else step.label
        _advance(vm, step)
        ctx.commit()
        renew()
        out.line(_fmt_step("+", number, label, pipeline.label_width, "success", step.source, step.target, seconds))
        if done.note.startswith("skip"):
            # The VM Log shows a skipped step as "skip (no change)", with no duration of its own.
            entry.update(result=f"skip ({done.note.removeprefix('skip').lstrip(' -')})", seconds=0)
        else:
            entry.update(result="success")
        entry.update(to=step.target, note=done.note)
        steps.append(entry)
        result.steps += 1
    if outcome == "success":
        vm.next_run_at = None
    if outcome == "success" and vm.status == pipeline.final:
        vm.last_error_action = vm.last_error_message = vm.last_error_at = None
        out.line(f"--- {pipeline.name} complete: service={vm.service_id} status={vm.status} ---")
    else:
        out.line(f"--- {pipeline.name} paused: waiting at [{vm.status}] ---")
    result.result = outcome if outcome != "success" or vm.status == pipeline.final else "waiting"
    result.api_calls = ctx.api_calls
    current = db.session.scalar(select(VM.status).where(VM.service_id == vm.service_id))
    if current != vm.status:  # changed since this pass's last step: its retry time and log are not wanted
        raise VMChanged(f"was changed meanwhile (now {current})")
    _save_run(vm, pipeline, source, result.result, error, steps, started, clock)
    if result.result == "success" and pipeline.action in RUN_AGAIN_ON_CHANGE and _service_changed(vm):
        # WHMCS changed the service while this pass worked from what it read at its start (a second
        # ChangePackage or ChangePassword, accepted as the pipeline's status was already its own): the
        # pipeline runs again with what the service says now.
        entry = pipeline.steps[0].source
        db.session.execute(update(VM).where(VM.service_id == vm.service_id, VM.status == vm.status)
                           .values(status=entry))
        set_committed_value(vm, "status", entry)
        out.line(f"--- {pipeline.name}: the service changed while it ran: again from [{entry}] ---")
        result.result, result.message = "changed", "the service changed while the pass ran"
    db.session.commit()
