"""Handing work to the jobs side without importing it: RQ by dotted name when REDIS_URL is set, otherwise a
wake-up for the in-process ticker."""
from __future__ import annotations

import hashlib
import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

from flask import current_app

log = logging.getLogger("pkvm.queue")
VM_JOB = "jobs.worker.process_vm_job"
# Seconds a VM job may run, its follow-ups too (RQ's default is 180): a terminate's stop windows alone take
# 180 s, and a pass is only ever cut short by its own waits.
VM_JOB_TIMEOUT = 3600
# Set whenever work is queued without Redis; the in-process ticker waits on it.
wakeup = threading.Event()
_redis_cache: dict[str, object] = {}


def redis_connection():
    url = current_app.config.get("REDIS_URL")
    if not url:
        return None
    conn = _redis_cache.get(url)
    if conn is None:
        from redis import Redis
        conn = _redis_cache[url] = Redis.from_url(url)
    return conn


def rq_queue():
    conn = redis_connection()
    if conn is None:
        return None
    from rq import Queue
    return Queue(current_app.config["RQ_QUEUE"], connection=conn)


def vm_job_id(service_id: int) -> str:
    """Job ids are global in Redis: they carry the queue's name, so two installations never collide."""
    return f"{current_app.config['RQ_QUEUE']}-vm-{service_id}"


def service_of_job(job_id: str) -> int | None:
    """The service whose VM job this is (``vm_job_id``, or a follow-up's ``<vm_job_id>-poll-<x>``), or None
    for another job."""
    prefix = vm_job_id(0)[:-1]
    tail = job_id[len(prefix):].split("-poll-")[0] if job_id.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


ACTIVE_JOB_STATES = ("queued", "started", "deferred", "scheduled")
SCHEDULER_LATE = 60  # seconds after its time a scheduled job still waits for RQ's scheduler to queue it


def _id_free(job_id: str, queue, lapsed: Callable[[], bool] | None = None,
             idle: Callable[[object], bool] | None = None) -> bool:
    """Whether a new job may take this id: no job of it waits or runs (enqueueing it again would overwrite
    it). A "started" job whose worker died without a word (killed, its machine lost) stops counting when
    ``lapsed`` says the work it holds has been let go, or, without that, once RQ's heartbeat for it has
    expired (RQ's own cleanup marks it failed then, rather than at a worker's next maintenance).

    A job of the id that has ended is deleted here: RQ writes a new job over the old one's key without
    clearing the expiry the old one's result was given (result_ttl), and the new job vanished from Redis
    when that ran out, before a worker took it (found in a production-like run: VMs a tick listed as
    queued whose jobs never ran). A job that waits for its turn but will do nothing when it comes (``idle``
    says so) does not count either."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    try:
        # Job.fetch rather than Queue.fetch_job, which also scrubs a missing id from the queue (a round trip
        # for every new VM); the status comes with the fetch.
        job = Job.fetch(job_id, connection=queue.connection)
    except NoSuchJobError:
        return True
    status = job.get_status(refresh=False)
    if status in ("queued", "scheduled", "deferred") and idle is not None and idle(job):
        active = False
    elif status == "started":
        if lapsed is not None:
            active = not lapsed()
        else:
            queue.started_job_registry.cleanup()
            active = job.get_status(refresh=True) in ACTIVE_JOB_STATES
    elif status == "scheduled":
        # One whose time is long past waits for a scheduler that no worker runs (none was started with
        # --with-scheduler, or its worker stopped and no other has taken it over yet): nothing will run it.
        try:
            due = queue.scheduled_job_registry.get_scheduled_time(job)
            active = due > datetime.now(timezone.utc) - timedelta(seconds=SCHEDULER_LATE)
        except NoSuchJobError:  # queued by the scheduler meanwhile (or lost by it)
            active = job.get_status(refresh=True) in ("queued", "started")
    else:
        active = status in ACTIVE_JOB_STATES
    if not active:
        job.delete()
    return not active


def _lease(service_id: int) -> tuple[str | None, bool]:
    """Who holds the VM's lease, and whether it is still held now (not lapsed)."""
    from sqlalchemy import select

    from . import clock
    from .extensions import db
    from .models import VM
    row = db.session.execute(select(VM.lease_owner, VM.lease_until).where(VM.service_id == service_id)).first()
    if row is None or row.lease_until is None:
        return None, False
    return row.lease_owner, row.lease_until >= clock.now()


def _lease_lapsed(service_id: int) -> bool:
    """Whether nobody holds the VM's lease now. A VM job holds it from its start to its end and renews it
    as it goes, so a job RQ still calls "started" over a lapsed lease is dead, even where RQ's heartbeat
    would say so only an hour later (a SimpleWorker's is the job's timeout plus a minute)."""
    return not _lease(service_id)[1]


def worker_lease_prefix(worker_name: str) -> str:
    """How the lease owner of a VM job run by this RQ worker begins (``lease_owner`` holds 64 characters; a
    worker's name may be longer): a VM whose lease another holds is not that worker's work."""
    return "rq-" + hashlib.sha1(worker_name.encode()).hexdigest()[:16] + "-"


def holds_lease(service_id: int, worker_name: str) -> bool:
    """Whether the worker of this name holds the VM's lease now (its VM job is alive and at work)."""
    owner, held = _lease(service_id)
    return held and (owner or "").startswith(worker_lease_prefix(worker_name))


def vm_task_on(connection=None) -> bool:
    """Whether processVirtualMachines runs by itself: at interval 0 it is off, and VMs wait for it to be
    turned on again (or for a run of the task by hand). ``connection``: read in its transaction."""
    from . import settings
    return settings.get("interval_processVirtualMachines", connection) > 0


def follow_up_ids(service_id: int) -> tuple[str, str]:
    """The two ids a VM's follow-up jobs take in turn: a job asking for its follow-up may itself be one, and a
    finishing job writes its own state over any job of its id."""
    base = vm_job_id(service_id)
    return f"{base}-poll-a", f"{base}-poll-b"


def enqueue_vm(service_id: int, delay: float = 0, manual: bool = False, after: str | None = None,
               task_on: bool | None = None) -> bool:
    """Ask for the VM's pipeline to run soon. With Redis: one job per VM (an existing queued or running job,
    or a follow-up scheduled for it, is not doubled), none while processVirtualMachines is off unless
    ``manual`` (a run of the task by hand, whose jobs run anyway); without: wake the in-process ticker.
    ``delay``: a follow-up of the job ``after`` (its id), one at a time per VM. ``task_on``: ``vm_task_on()``
    when the caller has read it already. Returns True when a job was queued."""
    queue = rq_queue()
    if queue is None:
        wakeup.set()
        return False
    if task_on is None:
        task_on = vm_task_on()
    if not manual and not task_on:
        return False
    extra = {"manual": True} if manual else {}
    options = dict(result_ttl=60, failure_ttl=86400, job_timeout=VM_JOB_TIMEOUT)

    def lapsed() -> bool:
        return _lease_lapsed(service_id)
    first, second = follow_up_ids(service_id)
    if delay:
        job_id = second if after == first else first
        if not _id_free(job_id, queue, lapsed):
            return False  # a follow-up is scheduled already (this job ran beside it): one chain per VM
        queue.enqueue_in(timedelta(seconds=delay), VM_JOB, service_id, **extra, job_id=job_id, **options)
        return True
    # While a follow-up waits for its turn (a Proxmox task still runs), the VM's next run is due to a tick,
    # but the follow-up is that run. Not so for a run by hand while processVirtualMachines is off: a job
    # queued before it was turned off does nothing when its turn comes.
    def idle(job) -> bool:
        return not task_on and not job.kwargs.get("manual")
    from rq.job import Job
    ids = (vm_job_id(service_id), first, second)
    # One round trip answers for a VM with no job at all (every new order); the others look at each.
    if queue.connection.exists(*(Job.key_for(job_id) for job_id in ids)) and \
            not all(_id_free(job_id, queue, lapsed, idle) for job_id in ids):
        return False
    with queue.connection.pipeline() as pipe:  # one round trip (RQ's own enqueue takes two)
        queue.enqueue(VM_JOB, service_id, **extra, job_id=vm_job_id(service_id), pipeline=pipe, **options)
        pipe.execute()
    return True


class QueueUnavailable(Exception):
    """Redis does not answer: nothing could be queued."""


TICK_JOB = "jobs.worker.tick_job"
TICK_IN_PROCESS = "jobs.ticker.tick_in_background"


def start_tick() -> str:
    """Have a full cron tick run soon (WHMCS's cron hook): with Redis one tick job (not doubled while one
    waits: "queued" or "already queued"), without it a tick in a thread of this process ("started").
    QueueUnavailable when Redis does not answer."""
    queue = rq_queue()
    if queue is None:
        import importlib
        module, name = TICK_IN_PROCESS.rsplit(".", 1)
        getattr(importlib.import_module(module), name)(current_app._get_current_object())
        return "started"
    from redis.exceptions import RedisError
    job_id = f"{current_app.config['RQ_QUEUE']}-tick"
    try:
        if not _id_free(job_id, queue):
            return "already queued"  # waiting or running: a second tick would find nothing more to do
        # Ahead of the VM jobs: a tick is short, and behind a backlog of them it would come late.
        queue.enqueue(TICK_JOB, job_id=job_id, result_ttl=60, failure_ttl=86400, job_timeout=3600, at_front=True)
    except RedisError as exc:
        raise QueueUnavailable(f"Redis does not answer ({exc})") from exc
    return "queued"


def enqueue_recorded(service_id: int, task_on: bool | None = None) -> None:
    """Queue the VM's pipeline after its new status is committed: a queue that is down now only means the
    next tick queues it. ``task_on``: as ``enqueue_vm`` takes it."""
    try:
        enqueue_vm(service_id, task_on=task_on)
    except Exception:  # noqa: BLE001 - the work is recorded; the tick picks it up
        log.warning("service %s: could not be queued now; the next tick will", service_id, exc_info=True)


class JobFailed(Exception):
    """A job run on behalf of a request failed or did not finish in time."""


def run_and_wait(func: str, *args, timeout: float, job_timeout: float | None = None):
    """Run a job by its dotted name and wait for its answer: on an RQ worker when Redis is used, in this
    process otherwise (an admin button that must answer with the outcome). A job no worker took within
    ``timeout`` seconds is cancelled (it must not run by surprise later); one still running goes on, with
    ``job_timeout`` (default ``timeout`` + 30 s) to finish."""
    queue = rq_queue()
    if queue is None:
        import importlib
        module, name = func.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)(*args)
    from redis.exceptions import TimeoutError as RedisTimeout
    from rq.job import JobStatus
    # At the front of the queue: someone waits for it, and behind a backlog of VM jobs (a batch of orders
    # deploying) the next free worker would not reach it in time.
    job = queue.enqueue(func, *args, job_timeout=int(job_timeout or timeout + 30), result_ttl=600,
                        failure_ttl=86400, at_front=True)
    try:
        result = job.latest_result(timeout=int(timeout))
    except RedisTimeout:
        result = None
    if result is None:
        # Taken out of the queue by this call (not by a worker meanwhile): then it is certain it never runs.
        if job.get_status(refresh=True) == JobStatus.QUEUED and queue.remove(job.id):
            job.delete()
            raise JobFailed(f"no worker took it within {int(timeout)}s, so it was not run (is an rq worker "
                            "running, or were all of them busy?)")
        result = job.latest_result()
    if result is None:
        raise JobFailed(f"still running on a worker after {int(timeout)}s: it goes on there; its outcome "
                        "shows in VM Management shortly")
    if result.type != result.Type.SUCCESSFUL:
        last = (result.exc_string or "").strip().splitlines()
        raise JobFailed(last[-1] if last else "the job failed")
    return result.return_value
