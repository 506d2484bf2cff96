"""The cron tick: which of the six tasks are due, the tick lock, and the original's output format.

``flask cron`` mirrors ``php cron.php``: no arguments runs the due tasks, ``--task=NAME`` one task without
its interval check, ``--force`` all of them, ``--list`` shows them, ``--no-lock`` skips the lock.
The same ``run_tick`` is what ``rq cron`` (through ``jobs.worker.tick_job``) and the in-process ticker call.
"""
from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from flask import current_app
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from core import queue as work_queue
from core import settings
from core.extensions import db
from core.models import VM, CronLock, CronTask, VMRun
from core.settings import TASK_DEFAULTS, TASK_INFO

from . import deploy, dnsrecords, lifecycle, redeploy  # noqa: F401 - register the pipelines
from .pipeline import Clock, Output, RunResult, SystemClock, active_statuses, run_vm

LOCK_NAME = "cron"


@dataclass
class TaskResult:
    processed: int = 0
    errors: int = 0
    details: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    description: str
    run: Callable[["TickContext"], TaskResult]

    @property
    def default_interval(self) -> int:
        return TASK_DEFAULTS[self.name]


@dataclass
class TickContext:
    out: Output
    clock: Clock
    inline: bool  # run VM pipelines here (no Redis) or enqueue one job per VM
    max_wait: float | None = None
    parallel: int = 1
    manual: bool = False  # --task or --force: retry failed VMs now, not at their next tick
    results: list[RunResult] = field(default_factory=list)


def vms_due(clock: Clock, ignore_schedule: bool = False) -> list[int]:
    """Service ids of VMs in a pipeline whose lease is free and whose next run is due (a failed step waits
    for the next tick, a running Proxmox task for the next poll) unless the schedule is ignored."""
    now = clock.now()
    query = select(VM.service_id).where(VM.status.in_(sorted(active_statuses())),
                                        or_(VM.lease_until.is_(None), VM.lease_until < now))
    if not ignore_schedule:
        query = query.where(or_(VM.next_run_at.is_(None), VM.next_run_at <= now))
    return list(db.session.scalars(query.order_by(VM.service_id)))


def next_vm_due(clock: Clock) -> float | None:
    """Seconds until the next VM in a pipeline is due (0 when one is due now), None when none is. A VM is due
    when its next run has come and its lease (another runner's) is free: a leased VM is not due before the
    lease ends, so that a waiting loop does not spin on it."""
    now = clock.now()
    rows = db.session.execute(select(VM.next_run_at, VM.lease_until)
                              .where(VM.status.in_(sorted(active_statuses())))).all()
    if not rows:
        return None
    soonest = min(max(next_run or now, lease or now) for next_run, lease in rows)
    return max(0.0, (soonest - now).total_seconds())


def _sid_line(result: RunResult) -> str:
    shown = {"success": "success", "waiting": "waiting", "busy": "busy"}.get(result.result, result.message)
    return f"sid:{result.service_id} action:{result.action or '-'} [{shown}]"


def process_virtual_machines(ctx: TickContext) -> TaskResult:
    out = TaskResult()
    due = vms_due(ctx.clock, ignore_schedule=ctx.manual)
    if not ctx.inline:
        # The passes run on the workers (their blocks are in the workers' output); what this tick can tell
        # is which of the VMs it hands out ended their last pass in an error: those are its errors.
        failed = _last_pass_errors(due)
        for service_id in due:
            if work_queue.enqueue_vm(service_id, manual=ctx.manual):
                out.processed += 1
                state = "queued"
            else:  # its job waits for a worker still, or runs: nothing new was handed out
                state = "already queued"
            if service_id in failed:
                out.errors += 1
                state += f"; last pass: {failed[service_id]}"
            out.details.append(f"sid:{service_id} [{state}]")
        return out
    if ctx.parallel > 1 and len(due) > 1:
        results = _run_parallel(due, ctx)
    else:
        results = []
        for service_id in due:
            ctx.out.line("")
            results.append(run_vm(service_id, ctx.out, ctx.clock, ctx.max_wait))
    for result in results:
        if result.result in ("idle", "busy"):
            continue
        out.processed += 1
        out.errors += result.result == "error"
        out.details.append(_sid_line(result))
    ctx.results.extend(results)
    return out


def _last_pass_errors(service_ids: list[int]) -> dict[int, str]:
    """The error of each VM whose last pass (its newest VMRun) ended in one."""
    if not service_ids:
        return {}
    newest = select(func.max(VMRun.id)).where(VMRun.service_id.in_(service_ids)).group_by(VMRun.service_id)
    return {service_id: error or "error" for service_id, error in db.session.execute(
        select(VMRun.service_id, VMRun.error).where(VMRun.id.in_(newest), VMRun.result == "error"))}


def _run_parallel(due: list[int], ctx: TickContext) -> list[RunResult]:
    """Several VMs at once, each in its own thread and session; each VM's block is printed whole."""
    app = current_app._get_current_object()

    def one(service_id: int) -> RunResult:
        lines: list[str] = []
        with app.app_context():
            result = run_vm(service_id, Output(lines.append, ctx.clock), ctx.clock, ctx.max_wait)
        ctx.out.line("\n".join([""] + lines))
        return result

    with ThreadPoolExecutor(max_workers=ctx.parallel, thread_name_prefix="pkvm-vm") as pool:
        return list(pool.map(one, due))


def _not_yet(name: str) -> Callable[[TickContext], TaskResult]:
    def run(ctx: TickContext) -> TaskResult:
        return TaskResult()
    run.__name__ = name
    return run


RUNNERS: dict[str, Callable[[TickContext], TaskResult]] = {"processVirtualMachines": process_virtual_machines}
TASKS: tuple[TaskSpec, ...] = tuple(
    TaskSpec(name, str(TASK_INFO[name][0]), str(TASK_INFO[name][1]), RUNNERS.get(name) or _not_yet(name))
    for name in TASK_DEFAULTS)
TASKS_BY_NAME = {task.name: task for task in TASKS}


def interval_of(task: TaskSpec) -> int:
    return settings.get(f"interval_{task.name}")


def _task_row(name: str) -> CronTask:
    row = db.session.get(CronTask, name)
    if row is None:
        row = CronTask(name=name)
        db.session.add(row)
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            row = db.session.get(CronTask, name)
    return row


def is_due(task: TaskSpec, row: CronTask, now: datetime) -> bool:
    minutes = interval_of(task)
    if minutes == 0:
        return False
    # A little slack, so a task on a 1-minute interval run by a 1-minute cron is never skipped by jitter.
    return row.last_run_at is None or row.last_run_at + timedelta(minutes=minutes) - timedelta(seconds=5) <= now


def _last(row: CronTask, now: datetime) -> str:
    if row.last_run_at is None:
        return "never"
    if row.last_run_at.date() == now.date():
        return f"{row.last_run_at:%H:%M:%S}"
    return f"{row.last_run_at:%Y-%m-%d %H:%M:%S}"


def _seconds(value: float) -> str:
    return "0s" if value < 0.05 else f"{value:.1f}s"


def _interval_text(minutes: int) -> str:
    return f"{minutes}m"


def acquire_lock(holder: str, clock: Clock) -> bool:
    """The tick lock: one row; a lock older than the lock timeout is stale and taken over."""
    now = clock.now()
    try:
        # A plain INSERT: the session may hold the row another holder wrote (the unique key decides).
        db.session.execute(insert(CronLock).values(name=LOCK_NAME, holder=holder, acquired_at=now))
        db.session.commit()
        return True
    except IntegrityError:
        db.session.rollback()
    stale = now - timedelta(seconds=settings.get("cron_lock_timeout"))
    taken = db.session.execute(update(CronLock).where(CronLock.name == LOCK_NAME, CronLock.acquired_at < stale)
                               .values(holder=holder, acquired_at=now))
    db.session.commit()
    return taken.rowcount == 1


def release_lock(holder: str) -> None:
    db.session.rollback()
    db.session.execute(delete(CronLock).where(CronLock.name == LOCK_NAME, CronLock.holder == holder))
    db.session.commit()


def run_tick(out: Output, clock: Clock | None = None, only: str | None = None, force: bool = False,
             use_lock: bool = True, inline: bool | None = None, max_wait: float | None = None,
             parallel: int = 1, manual: bool = False) -> TickContext:
    """One cron tick: the due tasks (or one task, or all with force), printed as the original prints them."""
    clock = clock or out.clock
    if inline is None:
        inline = not current_app.config.get("REDIS_URL")
    ctx = TickContext(out=out, clock=clock, inline=inline, max_wait=max_wait, parallel=parallel,
                      manual=manual)
    began = clock.monotonic()
    out.stamped("PUQ Proxmox KVM Cron Start")
    holder = f"{socket.gethostname()}:{os.getpid()}:{id(ctx)}"
    if use_lock and not acquire_lock(holder, clock):
        row = db.session.get(CronLock, LOCK_NAME)
        since = f"{row.acquired_at:%Y-%m-%d %H:%M:%S}" if row else "?"
        out.stamped(f"Cron is already running (lock held by {row.holder if row else '?'} since {since}); "
                    "skipping this run")
        out.stamped(f"PUQ Proxmox KVM Cron End ({_seconds(clock.monotonic() - began)} total)")
        return ctx
    try:
        for task in TASKS:
            if only is not None and task.name != only:
                continue
            row = _task_row(task.name)
            now = clock.now()
            if only is None and not force and not is_due(task, row, now):
                continue
            out.stamped(f"[{task.name}] Running (interval: {_interval_text(interval_of(task))}, "
                        f"last: {_last(row, now)})")
            task_began = clock.monotonic()
            try:
                result = task.run(ctx)
                status = "success" if not result.errors else "errors"
            except Exception as exc:  # noqa: BLE001 - one task must not stop the others
                db.session.rollback()
                current_app.logger.exception("cron task %s crashed", task.name)
                result, status = TaskResult(errors=1, details=[f"[error] {type(exc).__name__}: {exc}"]), "failed"
            out.stamped(f"[{task.name}] Done ({_seconds(clock.monotonic() - task_began)}) - "
                        f"processed: {result.processed}, errors: {result.errors}")
            for line in result.details:
                out.stamped(f"  {line}")
            row = _task_row(task.name)
            row.last_run_at, row.last_status = now, status
            row.last_processed, row.last_errors = result.processed, result.errors
            db.session.commit()
    finally:
        if use_lock:
            release_lock(holder)
    out.stamped(f"PUQ Proxmox KVM Cron End ({_seconds(clock.monotonic() - began)} total)")
    return ctx


def task_table(clock: Clock | None = None) -> list[dict]:
    """Every task with its interval, default, last run and status (for --list and the settings page)."""
    clock = clock or SystemClock()
    rows = []
    for task in TASKS:
        row = _task_row(task.name)
        minutes = interval_of(task)
        rows.append({"name": task.name, "title": task.title, "description": task.description,
                     "interval": minutes, "default": task.default_interval,
                     "last_run": row.last_run_at, "last_status": row.last_status,
                     "active": minutes > 0})
    return rows
