"""Whether this installation can do its work: the database answers, Redis and its workers answer (when
Redis is used), the cron tick runs. The dashboard shows it; ``GET /healthz`` answers it to a load
balancer or a monitor."""
from __future__ import annotations

import logging
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select

from .extensions import db
from .models import CronTask, utcnow

log = logging.getLogger("pkvm.health")
TICK_LATE = timedelta(minutes=5)


def health() -> dict:
    """``database``: it answers; ``mode``: rq or ticker; ``redis``/``workers``: None without Redis
    (``workers``: those alive; ``workers_dead``: registered still, but killed in the middle of a job);
    ``last_tick``: when any cron task last ran; ``tick_late``: not in the last 5 minutes; ``clock_skew``:
    seconds this machine's clock is behind the database server's (None on SQLite, which has no clock of
    its own)."""
    report = {"database": True, "mode": "rq" if current_app.config.get("REDIS_URL") else "ticker",
              "redis": None, "workers": None, "workers_dead": None, "last_tick": None, "tick_late": True,
              "clock_skew": None}
    try:
        report["last_tick"] = db.session.scalar(select(func.max(CronTask.last_run_at)))
    except Exception:  # noqa: BLE001 - a database that does not answer is what this reports
        log.warning("health: the database does not answer", exc_info=True)
        db.session.rollback()
        report["database"] = False
    else:
        report["tick_late"] = report["last_tick"] is None or utcnow() - report["last_tick"] > TICK_LATE
        report["clock_skew"] = clock_skew()
    if report["mode"] == "rq":
        from .queue import redis_connection, rq_queue
        try:
            conn = redis_connection()
            conn.ping()
        except Exception:  # noqa: BLE001 - a down Redis is what this reports
            log.warning("health: Redis does not answer", exc_info=True)
            report["redis"], report["workers"] = False, 0
        else:
            # Workers of this installation's queue only: one Redis may serve several installations.
            report["redis"] = True
            report["workers"], report["workers_dead"] = workers_alive(rq_queue())
    return report


JOB_START_GRACE = timedelta(seconds=60)  # a VM job takes its VM's lease in its first moments


def workers_alive(queue) -> tuple[int, int]:
    """(alive, dead) among the workers RQ has registered for the queue. A worker killed in the middle of a
    job stays registered for the job's timeout (an hour for a VM job): one whose VM job no longer holds
    its VM's lease (lapsed, or taken by another worker since) is dead (a VM job renews it as it goes). An
    idle worker's registration lapses by itself, a few minutes after its last heartbeat."""
    from rq import Worker

    from .queue import holds_lease, service_of_job
    alive = dead = 0
    for worker in Worker.all(queue=queue):
        execution = worker.execution
        service_id = service_of_job(execution.job_id) if execution is not None else None
        started = execution.created_at.replace(tzinfo=None) if execution is not None else None  # UTC
        try:
            # Its own lease: once a dead worker's VM has lapsed to another worker, that one holds it.
            lapsed = service_id is not None and utcnow() - started > JOB_START_GRACE and \
                not holds_lease(service_id, worker.name)
        except Exception:  # noqa: BLE001 - the database's own state is reported above; count it alive
            db.session.rollback()
            lapsed = False
        if lapsed:
            dead += 1
        else:
            alive += 1
    return alive, dead


# Leases and the cron lock take their time from the database server (core.clock), but a machine whose own
# clock is this far off wants fixing (its logs, and its offset between two measurements).
CLOCK_SKEW_LIMIT = 30.0


def clock_skew() -> float | None:
    """The database server's clock minus this machine's, in seconds (None on SQLite)."""
    from .clock import skew
    measured = skew()
    return None if measured is None else round(measured, 1)


def verdict(report: dict) -> str:
    """``down``: the database or Redis does not answer (calls cannot be taken); ``degraded``: calls are
    taken but nothing works them off (no tick lately, or no worker); ``ok``."""
    if not report["database"] or report["redis"] is False:
        return "down"
    skew = report.get("clock_skew")
    if report["tick_late"] or report["workers"] == 0 or (skew is not None and abs(skew) > CLOCK_SKEW_LIMIT):
        return "degraded"
    return "ok"

