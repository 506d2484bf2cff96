"""``GET /healthz``: what a load balancer or a monitor asks, without a login, against the real servers."""
from __future__ import annotations

import secrets

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from conftest import make_app

# A Redis database of its own: the worker count seen here is this test's alone.
HEALTH_REDIS_URL = "redis://127.0.0.1:6379/14"


def healthz(app):
    answer = app.test_client().get("/healthz")
    assert answer.headers.get("Set-Cookie") is None  # nothing to log in to, no session
    return answer.status_code, answer.get_json()


def test_without_redis_it_is_degraded_until_the_cron_ticks(app, runner):
    status, body = healthz(app)
    assert status == 200
    assert body == {"status": "degraded", "database": True, "mode": "ticker", "redis": None, "workers": None, "workers_dead": None,
                    "tick_late": True, "last_tick": None, "clock_skew": None}
    assert runner.invoke(args=["cron"]).exit_code == 0
    status, body = healthz(app)
    assert status == 200 and body["status"] == "ok" and body["tick_late"] is False
    assert body["last_tick"] is not None


def test_a_database_that_does_not_answer_is_down(tmp_path):
    from app import create_app
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"), "REDIS_URL": None,
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'no-such-folder' / 'pkvm.sqlite3'}"})
    with app.app_context():
        status, body = healthz(app)
    assert status == 503 and body["status"] == "down" and body["database"] is False


def test_with_redis_it_counts_the_workers_of_its_queue(tmp_path):
    """Found in review: every worker on the Redis server counted, those of another installation's queue too,
    so /healthz said ok with nobody working this installation's jobs."""
    queue_name = f"pkvm-test-{secrets.token_hex(4)}"
    app = make_app(tmp_path, f"sqlite:///{tmp_path / 'test.sqlite3'}", REDIS_URL=HEALTH_REDIS_URL, RQ_QUEUE=queue_name)
    conn = Redis.from_url(HEALTH_REDIS_URL)
    with app.app_context():
        assert app.test_cli_runner().invoke(args=["cron"]).exit_code == 0
        status, body = healthz(app)
        assert status == 200 and body["mode"] == "rq" and body["redis"] is True
        assert body["workers"] == 0 and body["status"] == "degraded"  # calls are taken, nothing works them
        elsewhere = SimpleWorker([Queue(f"pkvm-other-{secrets.token_hex(4)}", connection=conn)], connection=conn)
        ours = SimpleWorker([Queue(queue_name, connection=conn)], connection=conn)
        elsewhere.register_birth()
        try:
            status, body = healthz(app)
            assert body["workers"] == 0 and body["status"] == "degraded"  # another installation's worker
            ours.register_birth()
            status, body = healthz(app)
            assert status == 200 and body["workers"] == 1 and body["status"] == "ok"
        finally:
            for worker in (elsewhere, ours):
                worker.register_death()
                conn.delete(worker.key)


def test_redis_that_does_not_answer_is_down(tmp_path):
    app = make_app(tmp_path, f"sqlite:///{tmp_path / 'test.sqlite3'}", REDIS_URL="redis://127.0.0.1:1/0")
    with app.app_context():
        status, body = healthz(app)
    assert status == 503 and body["status"] == "down" and body["redis"] is False and body["workers"] == 0


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_clock_far_from_the_database_servers_is_reported(tmp_path, monkeypatch, kind):
    """Found in review: leases and the cron lock compare times written by different machines, so a worker
    whose clock is minutes off could take a live lease. /healthz reports this machine's clock against the
    database server's and is degraded beyond 30 s."""
    import time

    import core.clock
    from tests.conftest import database_url
    url, drop = database_url(kind, tmp_path)
    app = make_app(tmp_path, url)
    try:
        with app.app_context():
            assert app.test_cli_runner().invoke(args=["cron"]).exit_code == 0
            status, body = healthz(app)
            assert body["status"] == "ok" and abs(body["clock_skew"]) < 5, body
            real = time.time
            monkeypatch.setattr(core.clock.time, "time", lambda: real() + 120)  # this machine runs ahead
            status, body = healthz(app)
            assert status == 200 and body["status"] == "degraded" and -125 < body["clock_skew"] < -115, body
            monkeypatch.undo()
            from core.extensions import db
            db.session.remove()
            db.engine.dispose()
    finally:
        drop()


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_leases_follow_the_database_servers_clock_not_the_machines(tmp_path, monkeypatch, kind):
    """Found in review: each machine stamped and compared leases with its own clock, so a worker whose clock
    ran three minutes ahead took a live lease of another (and the cron lock likewise). The runners' clock
    is the database server's now: this machine's time plus its measured offset."""
    import time
    from datetime import timedelta

    from core import clock as db_clock
    from core.extensions import db
    from core.models import VM
    from jobs.pipeline import SystemClock, claim
    from tests.conftest import database_url, one_vm
    url, drop = database_url(kind, tmp_path)
    app = make_app(tmp_path, url)
    try:
        with app.app_context():
            one_vm("creation")
            db_clock.forget()
            assert claim(7, "worker-a", 185, SystemClock())  # a machine on time
            real = time.time
            from core.models import utcnow
            # another machine, 200 s ahead: whichever way its clock is read
            monkeypatch.setattr(db_clock.time, "time", lambda: real() + 200)
            monkeypatch.setattr("jobs.pipeline.utcnow", lambda: utcnow() + timedelta(seconds=200), raising=False)
            db_clock.forget()
            ahead = SystemClock().now()  # this test machine's own clock is the database server's
            assert abs((ahead - utcnow()).total_seconds()) < 5  # its clock, set to the database's
            assert not claim(7, "worker-b", 185, SystemClock())  # so it does not take the live lease
            vm = db.session.get(VM, 7)
            vm.lease_until = vm.lease_until - timedelta(seconds=190)  # ... until it really runs out
            db.session.commit()
            assert claim(7, "worker-b", 185, SystemClock())
            monkeypatch.undo()
            db_clock.forget()
            db.session.remove()
            db.engine.dispose()
    finally:
        drop()


def test_a_worker_killed_in_the_middle_of_a_vm_job_does_not_count(tmp_path, monkeypatch):
    """Found in review: a SimpleWorker killed in a job stays registered for the job's timeout (an hour for a
    VM job), so /healthz said ok with its only worker dead. A worker whose VM job no longer holds its VM's
    lease is dead."""
    from datetime import timedelta

    import core.health
    from core.extensions import db
    from core.models import VM, Client, Product, Server, Service, utcnow
    from core.queue import vm_job_id, worker_lease_prefix
    queue_name = f"pkvm-test-{secrets.token_hex(4)}"
    app = make_app(tmp_path, f"sqlite:///{tmp_path / 'test.sqlite3'}", REDIS_URL=HEALTH_REDIS_URL, RQ_QUEUE=queue_name)
    conn = Redis.from_url(HEALTH_REDIS_URL)
    queue = Queue(queue_name, connection=conn)
    worker = SimpleWorker([queue], connection=conn)
    with app.app_context():
        assert app.test_cli_runner().invoke(args=["cron"]).exit_code == 0
        db.session.add_all([Server(id=1, name="pve", hostname="127.0.0.1", token_id="root@pam!t"), Client(id=1),
                            Product(id=1, name="p", settings={})])
        db.session.flush()
        db.session.add(Service(id=5546, client_id=1, product_id=1, server_id=1))
        db.session.flush()
        db.session.add(VM(service_id=5546, server_id=1, vmid=2000, name="vm", status="clone"))
        db.session.commit()
        job = queue.enqueue("jobs.worker.process_vm_job", 5546, job_id=vm_job_id(5546))
        worker.register_birth()
        try:
            worker.prepare_execution(job)  # what a worker records as it starts the job
            status, body = healthz(app)
            assert body["workers"] == 1 and body["workers_dead"] == 0  # just started: its lease comes next
            monkeypatch.setattr(core.health, "JOB_START_GRACE", timedelta(seconds=-1))
            status, body = healthz(app)
            assert body["workers"] == 0 and body["workers_dead"] == 1 and body["status"] == "degraded"
            vm = db.session.get(VM, 5546)
            vm.lease_owner = worker_lease_prefix(worker.name) + "0a1b2c"  # working on it
            vm.lease_until = utcnow() + timedelta(minutes=5)
            db.session.commit()
            status, body = healthz(app)
            assert body["workers"] == 1 and body["workers_dead"] == 0 and body["status"] == "ok"
            # found in an audit: once its VM's lease lapsed to another worker, a dead worker counted alive
            vm.lease_owner = worker_lease_prefix("another-worker") + "0a1b2c"
            db.session.commit()
            status, body = healthz(app)
            assert body["workers"] == 0 and body["workers_dead"] == 1
            # the same for a follow-up job (found in review: "-poll-" ids went unrecognised)
            vm.lease_until = utcnow() - timedelta(minutes=1)
            db.session.commit()
            worker.execution = None
            conn.delete(worker.executions_key)
            poll = queue.enqueue("jobs.worker.process_vm_job", 5546, job_id=f"{vm_job_id(5546)}-poll-0a1b2c3d")
            worker.prepare_execution(poll)
            status, body = healthz(app)
            assert body["workers"] == 0 and body["workers_dead"] == 1
        finally:
            worker.register_death()
            conn.delete(worker.key)
            queue.delete(delete_jobs=True)
