"""With REDIS_URL: one RQ job per VM (never doubled), workers that never block on Proxmox, and the tick that
``rq cron`` runs. Against the real Redis on 127.0.0.1:6379."""
from __future__ import annotations

import secrets
import time
import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

import jobs.worker
from core.extensions import db
from core.models import VM, VMRun
from jobs.cron import run_tick
from jobs.pipeline import Output, claim, run_vm
from tests.conftest import Bridge, account_params, hold_migrations, make_app, register_cluster

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_conn():
    conn = Redis.from_url(REDIS_URL)
    try:
        conn.ping()
    except Exception:  # noqa: BLE001
        pytest.fail("Redis is not reachable on 127.0.0.1:6379 (RQ tests need the real server)")
    return conn


@pytest.fixture
def rq_app(tmp_path, redis_conn, monkeypatch):
    queue_name = f"pkvm-test-{secrets.token_hex(4)}"
    app = make_app(tmp_path, f"sqlite:///{tmp_path / 'rq.sqlite3'}", REDIS_URL=REDIS_URL, RQ_QUEUE=queue_name,
                   JOB_MAX_WAIT=0.2, JOB_REQUEUE_SECONDS=1)
    monkeypatch.setattr(jobs.worker, "_app", app)
    queue = Queue(queue_name, connection=redis_conn)
    with app.app_context():
        yield app, queue
        db.session.remove()
    drop_queue(queue)


def drop_queue(queue) -> None:
    """Leave nothing of a test's queue in Redis: its jobs, their results and its registries."""
    queue.empty()
    for registry in (queue.scheduled_job_registry, queue.finished_job_registry, queue.failed_job_registry):
        for job_id in registry.get_job_ids():
            try:
                registry.remove(job_id, delete_job=True)
            except NoSuchJobError:  # one id in two registries (a failed job queued again): deleted already
                registry.remove(job_id)
    started = queue.started_job_registry  # a killed worker's job (RQ 3 removes these only by cleanup)
    for job_id in started.get_job_ids(cleanup=False):
        queue.connection.delete(f"rq:job:{job_id}")
    queue.connection.delete(started.key)
    queue.delete(delete_jobs=True)


def work(queue, redis_conn):
    SimpleWorker([queue], connection=redis_conn).work(burst=True, with_scheduler=False)


def work_until_ready(queue, redis_conn, service_id: int, rounds: int = 60) -> VM:
    """Work the queue, moving scheduled follow-ups into it as RQ's scheduler would, until the VM is ready
    (or the rounds are spent): the VM as it is then."""
    scheduled = ScheduledJobRegistry(queue=queue)
    for _ in range(rounds):
        for job_id in scheduled.get_job_ids():
            queue.enqueue_job(queue.fetch_job(job_id))
            scheduled.remove(job_id)
        work(queue, redis_conn)
        db.session.expire_all()
        if db.session.get(VM, service_id).status == "ready":
            break
        time.sleep(0.1)
    return db.session.get(VM, service_id)


def test_create_account_queues_one_job_per_vm_and_a_worker_deploys_it(rq_app, redis_conn, cluster):
    app, queue = rq_app
    register_cluster(cluster)
    bridge = Bridge(app, app.test_client())
    assert bridge.call("CreateAccount", account_params(cluster, 501)).get_json()["queued"] is True
    job_id = f"{queue.name}-vm-501"
    assert queue.job_ids == [job_id]
    vm = db.session.get(VM, 501)
    vm.status = "creation"
    db.session.commit()
    # a tick while the job is still queued does not add another
    jobs.worker.tick_job()
    assert queue.job_ids == [job_id]
    work(queue, redis_conn)
    db.session.expire_all()
    vm = db.session.get(VM, 501)
    assert vm.status == "ready" and cluster.pve.vm(vm.vmid).status == "running"
    result = queue.fetch_job(job_id).return_value()
    assert result["result"] == "success" and result["steps"] == 15


def test_processing_turned_off_holds_every_vm_until_it_is_on_again_or_run_by_hand(rq_app, redis_conn, cluster,
                                                                                   clock):
    """Found in an audit against the original's documentation ("Set interval to 0 to disable a task"): with
    Redis, processVirtualMachines at 0 stopped nothing, as calls and the workers' follow-ups queue VM jobs
    themselves. Now a job queued before does nothing, calls queue none, and a run of the task by hand (flask
    cron --task) deploys anyway; turned on again, the next tick goes on."""
    from core import settings
    from jobs.cron import run_tick
    app, queue = rq_app
    register_cluster(cluster)
    bridge = Bridge(app, app.test_client())
    assert bridge.call("CreateAccount", account_params(cluster, 511)).get_json()["queued"] is True
    settings.update({"interval_processVirtualMachines": 0})
    assert bridge.call("CreateAccount", account_params(cluster, 512)).get_json()["status"] == "creation"
    assert queue.job_ids == [f"{queue.name}-vm-511"]  # recorded, no job queued
    work(queue, redis_conn)  # the job queued before: nothing done
    assert queue.fetch_job(f"{queue.name}-vm-511").return_value()["result"] == "off"
    db.session.expire_all()
    assert [db.session.get(VM, sid).status for sid in (511, 512)] == ["creation", "creation"]
    assert run_tick(Output(lambda line: None, clock)).results == []  # the tick skips the task
    assert queue.count == 0
    lines: list[str] = []
    run_tick(Output(lines.append, clock), only="processVirtualMachines", manual=True)  # flask cron --task
    assert [line.split("  ", 1)[-1].strip() for line in lines if "sid:" in line] == ["sid:511 [queued]", "sid:512 [queued]"]
    work(queue, redis_conn)
    db.session.expire_all()
    assert [db.session.get(VM, sid).status for sid in (511, 512)] == ["ready", "ready"]


@pytest.mark.time_scale(0.001)
def test_a_worker_does_not_wait_for_a_long_migration(rq_app, redis_conn, cluster):
    """Proxmox keeps migrating until the test lets it finish; the job stops polling after JOB_MAX_WAIT and
    schedules its own follow-up, so the worker is free for other VMs meanwhile."""
    app, queue = rq_app
    register_cluster(cluster)
    migration_done = hold_migrations(cluster.pve)
    bridge = Bridge(app, app.test_client())
    bridge.call("CreateAccount", account_params(cluster, 502))
    work(queue, redis_conn)
    db.session.expire_all()
    vm = db.session.get(VM, 502)
    assert vm.status == "clone" and vm.task_upid and ":qmigrate:" in vm.task_upid
    # the job ended while Proxmox still migrates: it handed the wait to a scheduled follow-up
    assert cluster.pve.tasks[vm.task_upid]["status"] == "running"
    migration_done.set()
    scheduled = ScheduledJobRegistry(queue=queue)
    assert [j for j in scheduled.get_job_ids() if j.startswith(f"{queue.name}-vm-502-poll-")]
    vm = work_until_ready(queue, redis_conn, 502)
    assert vm.status == "ready"
    assert len([v for v in cluster.pve.vms if v.name == vm.name]) == 1


@pytest.mark.time_scale(0.001)
def test_a_vm_waiting_for_proxmox_has_one_chain_of_follow_ups(rq_app, redis_conn, cluster):
    """Found in review: while a VM's follow-up job waited for a long Proxmox task, each tick found the VM due
    (its next poll had come) and queued it again, and that job scheduled follow-ups of its own: a long clone
    was polled by one more chain of jobs every minute."""
    from datetime import timedelta

    from core import clock as db_clock
    from tests.conftest import FakeClock
    app, queue = rq_app
    register_cluster(cluster)
    migration_done = hold_migrations(cluster.pve)
    Bridge(app, app.test_client()).call("CreateAccount", account_params(cluster, 514))
    work(queue, redis_conn)
    # the VM log says what the pass waits for
    run = db.session.scalars(select(VMRun).where(VMRun.service_id == 514).order_by(VMRun.id.desc())).first()
    assert (run.result, run.steps[-1]["note"]) == ("waiting", "migration still running"), run.steps
    scheduled = ScheduledJobRegistry(queue=queue)
    [follow_up] = scheduled.get_job_ids()
    lines: list[str] = []
    run_tick(Output(lines.append, FakeClock(db_clock.now() + timedelta(seconds=30))), only="processVirtualMachines")
    assert any(line.endswith("sid:514 [already queued]") for line in lines), lines
    assert queue.count == 0 and scheduled.get_job_ids() == [follow_up]
    # The follow-up's turn has come (queued) while a job of the VM's own id, queued before it, runs: that job
    # leaves the follow-up as it is (neither run twice nor scheduled again), which then schedules the next.
    queue.enqueue_job(queue.fetch_job(follow_up))
    scheduled.remove(follow_up)
    queue.enqueue("jobs.worker.process_vm_job", 514, job_id=f"{queue.name}-vm-514", at_front=True)
    SimpleWorker([queue], connection=redis_conn).work(burst=True, max_jobs=1, with_scheduler=False)
    assert queue.job_ids == [follow_up] and scheduled.get_job_ids() == []
    work(queue, redis_conn)
    [next_follow_up] = scheduled.get_job_ids()
    assert next_follow_up != follow_up
    # No scheduler moved it (no worker runs one, for now): the tick goes on with the VM, as it did before.
    redis_conn.zadd(scheduled.key, {next_follow_up: time.time() - 120})
    lines = []
    run_tick(Output(lines.append, FakeClock(db_clock.now() + timedelta(seconds=30))), only="processVirtualMachines")
    assert any(line.endswith("sid:514 [queued]") for line in lines), lines
    assert queue.job_ids == [f"{queue.name}-vm-514"] and scheduled.get_job_ids() == []
    migration_done.set()


@pytest.mark.time_scale(0.001)
def test_a_run_by_hand_while_processing_is_off_is_not_held_by_a_follow_up_from_before(rq_app, redis_conn, cluster):
    """Found in review: with processVirtualMachines turned off while a VM's follow-up waited, a run of the task
    by hand said [already queued], and the follow-up did nothing when its turn came (the task was off)."""
    from core import settings
    app, queue = rq_app
    register_cluster(cluster)
    migration_done = hold_migrations(cluster.pve)
    Bridge(app, app.test_client()).call("CreateAccount", account_params(cluster, 515))
    work(queue, redis_conn)
    scheduled = ScheduledJobRegistry(queue=queue)
    assert len(scheduled.get_job_ids()) == 1
    settings.update({"interval_processVirtualMachines": 0})
    db.session.commit()
    migration_done.set()
    lines: list[str] = []
    run_tick(Output(lines.append), only="processVirtualMachines", manual=True)  # flask cron --task
    assert any(line.endswith("sid:515 [queued]") for line in lines), lines
    assert scheduled.get_job_ids() == [] and queue.job_ids == [f"{queue.name}-vm-515"]
    assert work_until_ready(queue, redis_conn, 515).status == "ready"  # the hand run's job and its follow-ups


def test_a_vm_is_never_worked_on_by_two_runners(rq_app, cluster, clock):
    app, _queue = rq_app
    register_cluster(cluster)
    Bridge(app, app.test_client()).call("CreateAccount", account_params(cluster, 503))
    assert claim(503, "worker-a", 600, clock)
    requests_before = len(cluster.pve.requests)
    result = run_vm(503, Output(None, clock), clock, owner="worker-b")
    assert result.result == "busy"
    assert db.session.get(VM, 503).status == "creation"
    assert len(cluster.pve.requests) == requests_before
    clock.advance(601)  # the lease of a dead worker expires
    assert run_vm(503, Output(None, clock), clock, owner="worker-b").result == "success"


def test_rq_cron_config_registers_the_tick(redis_conn):
    from rq import cron
    from rq.cron import CronScheduler
    scheduler = CronScheduler(connection=redis_conn)
    cron._job_data_registry.clear()
    scheduler.load_config_from_file("jobs/rq_cron.py")
    [job] = scheduler.get_jobs()
    assert job.func_name == "jobs.worker.tick_job" and job.interval == 60 and job.queue_name == "pkvm"


def test_a_vm_job_holds_its_vms_lease_in_its_workers_name(rq_app, redis_conn, cluster, monkeypatch):
    """/healthz tells a dead worker's VM, taken over by another worker, from its own work by the lease."""
    import jobs.pipeline
    from core.queue import worker_lease_prefix
    app, queue = rq_app
    register_cluster(cluster)
    Bridge(app, app.test_client()).call("CreateAccount", account_params(cluster, 507))
    owners: list = []
    real_run_vm = jobs.pipeline.run_vm

    def run_vm(*args, **kwargs):
        owners.append(kwargs.get("owner"))
        return real_run_vm(*args, **kwargs)
    monkeypatch.setattr(jobs.pipeline, "run_vm", run_vm)
    worker = SimpleWorker([queue], connection=redis_conn)
    worker.work(burst=True, with_scheduler=False)
    assert owners and all(o.startswith(worker_lease_prefix(worker.name)) for o in owners), owners
    assert len(owners[0]) <= 64
    db.session.expire_all()
    assert db.session.get(VM, 507).status == "ready"


def test_a_tick_counts_only_the_vm_jobs_it_queued(rq_app, redis_conn, cluster, clock):
    """Found in an audit: with no worker taking jobs, every tick printed [queued] and processed: 1 for a VM
    whose one job was still waiting."""
    app, queue = rq_app
    register_cluster(cluster)
    Bridge(app, app.test_client()).call("CreateAccount", account_params(cluster, 508))
    queue.empty()  # the call's own job lost: the tick queues it again, once
    results = []
    for _ in range(2):
        lines: list[str] = []
        run_tick(Output(lines.append, clock), only="processVirtualMachines", manual=True)
        results.append([line for line in lines if "processed:" in line or "sid:508" in line])
    assert "processed: 1," in results[0][0] and results[0][1].endswith("sid:508 [queued]"), results
    assert "processed: 0," in results[1][0] and results[1][1].endswith("sid:508 [already queued]"), results
    assert queue.job_ids == [f"{queue.name}-vm-508"]


def test_a_tick_with_redis_counts_the_vms_whose_last_pass_failed_as_its_errors(rq_app, redis_conn, cluster, clock):
    """Found in an audit against the original's documentation (errors: "non-zero means at least one VM ran
    into a problem; look at the per-sid lines"): with Redis the passes run on the workers and the tick's
    errors were always 0. It counts the VMs it hands out whose last pass ended in an error, and says it."""
    app, queue = rq_app
    register_cluster(cluster)
    Bridge(app, app.test_client()).call("CreateAccount", account_params(cluster, 509))
    cluster.pve.fail("POST", "/clone", 500, "storage 'local-lvm' is full", times=1)
    work(queue, redis_conn)
    db.session.expire_all()
    assert db.session.get(VM, 509).status == "set_dns"
    lines: list[str] = []
    run_tick(Output(lines.append, clock), only="processVirtualMachines", manual=True)
    assert any("processed: 1, errors: 1" in line for line in lines), lines
    assert any(line.endswith("sid:509 [queued; last pass: HTTP 500: storage 'local-lvm' is full]") for line in lines), lines
    work(queue, redis_conn)  # the retry succeeds
    lines = []
    db.session.expire_all()
    vm = db.session.get(VM, 509)
    assert vm.status == "ready"
    vm.status = "creation"  # due again (an admin's reset): its last pass ended well
    db.session.commit()
    run_tick(Output(lines.append, clock), only="processVirtualMachines", manual=True)
    assert any("processed: 1, errors: 0" in line for line in lines), lines


def test_a_vm_queued_again_soon_after_its_last_job_keeps_its_new_job(rq_app, redis_conn, cluster):
    """Found in a production-like run: RQ writes a new job over an ended one of the same id without clearing
    the expiry the old one's result was given (60 s), so a VM queued again within that minute (an admin's
    reset, a tick run by hand) had its job vanish before a worker took it: listed as queued, never run."""
    from core.queue import enqueue_vm
    app, queue = rq_app
    register_cluster(cluster)
    Bridge(app, app.test_client()).call("CreateAccount", account_params(cluster, 513))
    job_id = f"{queue.name}-vm-513"
    work(queue, redis_conn)
    assert queue.fetch_job(job_id).get_status() == "finished" and redis_conn.ttl(f"rq:job:{job_id}") > 0
    db.session.expire_all()
    db.session.get(VM, 513).status = "set_dns_records"  # an admin's reset: work to do again
    db.session.commit()
    assert enqueue_vm(513) is True
    assert queue.job_ids == [job_id] and queue.fetch_job(job_id).get_status() == "queued"
    assert redis_conn.ttl(f"rq:job:{job_id}") == -1  # kept until a worker takes it


def test_the_stopping_simple_worker_tells_passes_to_end(redis_conn):
    """SIGTERM's handler (request_stop) of jobs.worker.SimpleWorker sets the flag passes look at."""
    import signal

    from rq.exceptions import StopRequested

    import jobs.pipeline
    worker = jobs.worker.SimpleWorker([Queue(f"pkvm-test-{secrets.token_hex(4)}", connection=redis_conn)],
                                      connection=redis_conn)
    try:
        with pytest.raises(StopRequested):  # an idle worker stops at once
            worker.request_stop(signal.SIGTERM, None)
        assert jobs.pipeline.stopping.is_set()
    finally:
        jobs.pipeline.stopping.clear()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("worker_class", ["SimpleWorker", "PreloadedWorker"])
def test_a_worker_registers_again_after_redis_lost_its_data(redis_conn, worker_class, monkeypatch, rq_app):
    """Found in an audit: after a Redis restart without its data the workers went on working unregistered,
    and /healthz said degraded with no worker until they were restarted."""
    from rq import Worker
    app, queue = rq_app
    worker = getattr(jobs.worker, worker_class)([queue], connection=redis_conn)
    worker.register_birth()
    try:
        assert [w.name for w in Worker.all(queue=queue)] == [worker.name]
        # what FLUSHDB leaves of a worker: nothing (its next heartbeat writes last_heartbeat alone)
        redis_conn.delete(worker.key)
        redis_conn.srem(worker.redis_workers_keys, worker.key)
        redis_conn.srem(f"rq:workers:{queue.name}", worker.key)
        assert Worker.all(queue=queue) == []
        worker.heartbeat()
        assert [w.name for w in Worker.all(queue=queue)] == [worker.name]
        assert Worker.all(queue=queue)[0].queue_names() == [queue.name]
    finally:
        worker.register_death()
        redis_conn.delete(worker.key)


def _ready_vm_with_less_memory(app, queue, redis_conn, cluster, service_id):
    """A deployed VM whose memory was changed behind our back (a one-step VMSetCpuRam puts it right)."""
    register_cluster(cluster)
    bridge = Bridge(app, app.test_client())
    bridge.call("CreateAccount", account_params(cluster, service_id))
    work(queue, redis_conn)
    db.session.expire_all()
    vm = db.session.get(VM, service_id)
    assert vm.status == "ready"
    cluster.pve.vm(vm.vmid).config["memory"] = 512
    return bridge, vm


def _one_job_worker_thread(queue, redis_conn):
    """An RQ worker in a thread of this process that takes one job."""
    import threading

    from rq.timeouts import TimerDeathPenalty

    class ThreadWorker(SimpleWorker):  # signals are the main thread's: no handlers, timer-based timeouts
        death_penalty_class = TimerDeathPenalty

        def _install_signal_handlers(self):
            pass

    worker = threading.Thread(target=lambda: ThreadWorker([queue], connection=redis_conn).work(
        burst=False, max_jobs=1, with_scheduler=False), daemon=True)
    worker.start()
    return worker


def test_a_step_command_runs_on_a_worker_and_answers_the_request(rq_app, redis_conn, cluster, clock):
    app, queue = rq_app
    bridge, vm = _ready_vm_with_less_memory(app, queue, redis_conn, cluster, 504)
    worker = _one_job_worker_thread(queue, redis_conn)
    answer = bridge.call("VMSetCpuRam", account_params(cluster, 504)).get_json()
    worker.join(30)
    assert answer == {"result": "success"}
    guest = cluster.pve.vm(vm.vmid)
    assert int(guest.pending.get("memory", guest.config["memory"])) == 1024


def test_a_step_command_goes_ahead_of_a_backlog_of_vm_jobs(rq_app, redis_conn, cluster, clock, monkeypatch):
    """A batch of orders deploying keeps the workers busy: an admin's or client's command (someone waits for
    its answer) is the next job a worker takes, not the one after the backlog."""
    from bridge import views
    from core.queue import VM_JOB, vm_job_id
    app, queue = rq_app
    bridge, vm = _ready_vm_with_less_memory(app, queue, redis_conn, cluster, 507)
    for service_id in range(600, 605):  # VM jobs queued before the command
        queue.enqueue(VM_JOB, service_id, job_id=vm_job_id(service_id))
    monkeypatch.setattr(views, "STEP_COMMAND_WAIT", 5)
    worker = _one_job_worker_thread(queue, redis_conn)  # takes one job, then stops
    answer = bridge.call("VMSetCpuRam", account_params(cluster, 507)).get_json()
    worker.join(30)
    assert answer == {"result": "success"}, answer
    guest = cluster.pve.vm(vm.vmid)
    assert int(guest.pending.get("memory", guest.config["memory"])) == 1024
    assert queue.job_ids == [vm_job_id(service_id) for service_id in range(600, 605)]  # still waiting


@pytest.mark.time_scale(0.001)
def test_a_step_command_still_running_when_the_wait_ends_is_answered_and_finishes_on_its_worker(
        rq_app, redis_conn, cluster, clock, monkeypatch):
    """A worker took the command but Proxmox answers slowly: WHMCS hears in time that it goes on, and it
    does."""
    from bridge import views
    app, queue = rq_app
    bridge, vm = _ready_vm_with_less_memory(app, queue, redis_conn, cluster, 506)
    monkeypatch.setattr(views, "STEP_COMMAND_WAIT", 1)
    cluster.pve.slow_network(800)  # 0.8 s per Proxmox answer: the step outlasts the bridge's wait
    worker = _one_job_worker_thread(queue, redis_conn)
    answer = bridge.call("VMSetCpuRam", account_params(cluster, 506)).get_json()
    assert answer["result"] == "error" and "still running on a worker after 1s: it goes on there" in \
        answer["message"], answer
    worker.join(30)
    assert not worker.is_alive()
    guest = cluster.pve.vm(vm.vmid)
    assert int(guest.pending.get("memory", guest.config["memory"])) == 1024


def test_the_whmcs_cron_hook_queues_one_tick_job(rq_app, redis_conn):
    """WHMCS Hook cron mode with Redis: the hook queues a tick job (never two at once) that a worker runs."""
    from core import settings
    from core.models import CronTask
    app, queue = rq_app
    bridge = Bridge(app, app.test_client())
    assert bridge.call("AfterCronJob", {}).get_json() == {"result": "success", "tick": "queued"}
    assert bridge.call("AfterCronJob", {}).get_json() == {"result": "success", "tick": "already queued"}
    assert queue.job_ids == [f"{queue.name}-tick"]
    work(queue, redis_conn)
    # Behind a backlog of VM jobs, the tick is queued ahead of them.
    from core.queue import VM_JOB, vm_job_id
    queue.enqueue(VM_JOB, 601, job_id=vm_job_id(601))
    assert bridge.call("AfterCronJob", {}).get_json()["tick"] == "queued"
    assert queue.job_ids == [f"{queue.name}-tick", vm_job_id(601)]
    work(queue, redis_conn)
    assert db.session.get(CronTask, "processVirtualMachines").last_run_at is not None
    settings.update({"cron_mode": "standalone"})
    assert bridge.call("AfterCronJob", {}).get_json()["tick"] == "skipped" and queue.job_ids == []


def _ordered_in_a_worker_database(tmp_path, redis_conn, cluster, service_id: int, max_wait: float = 0.2):
    """A CreateAccount recorded in a database file that a worker process started by the test can open too:
    (app, queue, the worker's environment)."""
    import os
    queue_name = f"pkvm-test-{secrets.token_hex(4)}"
    db_url = f"sqlite:///{tmp_path / 'worker.sqlite3'}"
    app = make_app(tmp_path, db_url, REDIS_URL=REDIS_URL, RQ_QUEUE=queue_name, JOB_MAX_WAIT=max_wait,
                   JOB_REQUEUE_SECONDS=1)
    queue = Queue(queue_name, connection=redis_conn)
    with app.app_context():
        register_cluster(cluster)
        assert Bridge(app, app.test_client()).call("CreateAccount", account_params(cluster, service_id)).get_json()[
            "queued"] is True
        db.session.remove()
    env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=REDIS_URL, PKVM_INSTANCE_PATH=str(tmp_path / "instance"),
               PKVM_RQ_QUEUE=queue_name, PKVM_TICKER_SECONDS="0", PKVM_JOB_MAX_WAIT=str(max_wait))
    return app, queue, env


def test_the_preloaded_worker_process_deploys_a_vm(tmp_path, redis_conn, cluster, monkeypatch):
    """The real command line: ``rq worker -w jobs.worker.PreloadedWorker --burst`` in its own process,
    forking a work horse per job, with the app built once before the fork."""
    import subprocess
    import sys
    from pathlib import Path
    app, queue, env = _ordered_in_a_worker_database(tmp_path, redis_conn, cluster, 510)
    try:
        rq = Path(sys.executable).with_name("rq")
        done = subprocess.run([str(rq), "worker", queue.name, "--burst", "-w", "jobs.worker.PreloadedWorker",
                               "--url", REDIS_URL], cwd=Path(__file__).resolve().parent.parent, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        # the pipeline's lines, in the original's format, in the worker's output (found in review: dropped)
        assert "[+] 1. Allocate IP" in done.stdout and "(creation -> set_ip)" in done.stdout, done.stdout[-2000:]
        with app.app_context():
            vm = db.session.get(VM, 510)
            assert vm.status == "ready", done.stderr[-3000:]
            assert cluster.pve.vm(vm.vmid).status == "running"
            db.session.remove()
            db.engine.dispose()
    finally:
        drop_queue(queue)


@pytest.mark.time_scale(0.05)
def test_a_stopping_preloaded_worker_ends_its_horses_pass_at_the_next_step(tmp_path, redis_conn, cluster):
    """Told to stop (SIGTERM), the forking worker passes it on to its work horse, whose pass ends before its
    next step (as SimpleWorker's does) rather than carry the deploy through to its end; the VM goes on from
    the status it reached. The horse does not die of it mid-step either."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path
    # One pass does the whole deploy (a long wait budget), its migration alone taking 1.5 s.
    app, queue, env = _ordered_in_a_worker_database(tmp_path, redis_conn, cluster, 530, max_wait=60)
    worker = None
    try:
        worker = subprocess.Popen([str(Path(sys.executable).with_name("rq")), "worker", queue.name,
                                   "-w", "jobs.worker.PreloadedWorker", "--url", REDIS_URL],
                                  cwd=Path(__file__).resolve().parent.parent, env=env, start_new_session=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        with app.app_context():
            while db.session.scalar(select(VM.status).where(VM.service_id == 530)) != "clone":
                assert time.monotonic() < deadline and worker.poll() is None, "the deploy never got to its clone"
                db.session.remove()
                time.sleep(0.02)
            db.session.remove()
        os.kill(worker.pid, signal.SIGTERM)  # the worker alone, as `kill` or a service manager's stop sends it
        output, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, output[-3000:]
        assert "paused: waiting at [migrated]" in output or "paused: waiting at [clone]" in output, output[-3000:]
        assert "Verify running" not in output, output[-3000:]
        with app.app_context():
            vm = db.session.get(VM, 530)
            assert vm.status in ("clone", "migrated") and vm.lease_owner is None
            run = db.session.scalars(select(VMRun).where(VMRun.service_id == 530)).one()
            assert run.result == "waiting"
            db.session.remove()
        with app.app_context():  # the VM's next job (or the next tick) goes on from there
            assert run_vm(530, Output(lambda line: None), max_wait=60).result == "success"
            assert db.session.get(VM, 530).status == "ready"
            db.session.remove()
            db.engine.dispose()
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        drop_queue(queue)


def test_a_vm_whose_worker_died_mid_job_is_queued_again(tmp_path, redis_conn, cluster, monkeypatch):
    """Found in review: a worker killed outright (OOM, a lost machine) leaves its job "started" in Redis, and
    the tick took that for a job still running: the VM waited for RQ's own cleanup (after RQ's heartbeat,
    90 s to an hour, and a worker's maintenance, up to 10 minutes more). A started job over a VM lease that
    has run out is dead: the tick queues the VM again."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from datetime import timedelta

    from rq.job import Job
    app, queue, env = _ordered_in_a_worker_database(tmp_path, redis_conn, cluster, 520)
    monkeypatch.setattr(jobs.worker, "_app", app)
    job_id = f"{queue.name}-vm-520"
    worker = None
    try:
        cluster.pve.network.update(hang_rate=1.0, hang_secs=4)  # every Proxmox request hangs: the job is mid-step
        worker = subprocess.Popen([str(Path(sys.executable).with_name("rq")), "worker", queue.name, "--burst",
                                   "-w", "jobs.worker.PreloadedWorker", "--url", REDIS_URL],
                                  cwd=Path(__file__).resolve().parent.parent, env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while Job.fetch(job_id, connection=redis_conn).get_status() != "started":
            assert time.monotonic() < deadline and worker.poll() is None, "the worker never started the job"
            time.sleep(0.05)
        time.sleep(0.5)  # into its first Proxmox request, which hangs
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and its work horse, with no chance to clean up
        worker.wait(10)
        cluster.pve.network.update(hang_rate=0.0)
        assert Job.fetch(job_id, connection=redis_conn).get_status() == "started"

        with app.app_context():
            vm = db.session.get(VM, 520)
            assert vm.lease_until is not None and vm.vmid is None  # a killed process leaves its lease
            # While the VM's lease holds, the job may still be running: it is not doubled.
            jobs.worker.tick_job()
            assert Job.fetch(job_id, connection=redis_conn).get_status() == "started"
            # The lease runs out (a live job renews it): the job is dead, whatever RQ's heartbeat says (a
            # SimpleWorker's lasts the job's timeout, an hour), and the next tick queues the VM again.
            vm.lease_until = vm.lease_until - timedelta(seconds=600)
            db.session.commit()
            run_tick(Output(None), only="processVirtualMachines")  # the next minute's tick
            assert Job.fetch(job_id, connection=redis_conn).get_status() == "queued"
            work(queue, redis_conn)
            db.session.expire_all()
            vm = db.session.get(VM, 520)
            assert vm.status == "ready" and cluster.pve.vm(vm.vmid).status == "running"
            assert len([v for v in cluster.pve.vms if v.name == vm.name]) == 1
            db.session.remove()
            db.engine.dispose()
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        cluster.pve.network.update(hang_rate=0.0)
        drop_queue(queue)


def test_the_whmcs_cron_hook_answers_an_error_when_redis_is_down(tmp_path):
    """Found in review: with Redis unreachable the hook's call was a bare 500 ("internal error"). WHMCS's
    module log now shows what is wrong, and nothing else changes."""
    from core import settings
    app = make_app(tmp_path, f"sqlite:///{tmp_path / 'down.sqlite3'}", REDIS_URL="redis://127.0.0.1:1/0")
    with app.app_context():
        settings.update({"cron_mode": "hook"})
        answer = Bridge(app, app.test_client()).call("AfterCronJob", {})
        assert answer.status_code == 200
        body = answer.get_json()
        assert body["result"] == "error" and "Redis" in body["message"] and "no tick" in body["message"], body
        db.session.remove()
        db.engine.dispose()


def test_a_follow_up_job_gets_the_vm_jobs_time_and_a_timeout_is_never_a_failure(rq_app, redis_conn, cluster,
                                                                                  monkeypatch):
    """Found in review: follow-up jobs (a poll a few seconds later) ran under RQ's default 180 s timeout,
    while a terminate's stop windows alone take 180 s; RQ's timeout then came out of the step as an
    "internal error" and put the VM in error_terminate. Follow-ups get the VM job's 3600 s, and a job that
    runs out of time leaves the status as it is for the next tick."""
    from rq.timeouts import JobTimeoutException

    import jobs.lifecycle
    from core import queue as work_queue
    app, queue = rq_app
    assert work_queue.enqueue_vm(530, delay=5) is True
    follow_up = queue.fetch_job(ScheduledJobRegistry(queue=queue).get_job_ids()[0])
    assert follow_up.timeout == work_queue.VM_JOB_TIMEOUT == 3600
    register_cluster(cluster)
    Bridge(app, app.test_client()).call("CreateAccount", account_params(cluster, 531))
    vm = db.session.get(VM, 531)
    vm.status = "terminate"
    db.session.commit()

    def out_of_time(ctx, node):
        raise JobTimeoutException("Task exceeded maximum timeout value (180 seconds)")
    monkeypatch.setattr(jobs.lifecycle, "_stop_for_terminate", out_of_time)
    vm.vmid = 9000  # any VM the cluster has, so the terminate gets to its stop
    vm.name = "debian-12-cloud"
    db.session.commit()
    with pytest.raises(JobTimeoutException):
        run_vm(531, Output(None))
    db.session.expire_all()
    assert db.session.get(VM, 531).status == "terminate"
    # the VM's log says where the pass was cut short (found in an audit: it had no entry at all)
    [run] = db.session.scalars(select(VMRun).where(VMRun.service_id == 531)).all()
    assert (run.action, run.result, run.from_status, run.to_status) == ("terminate", "interrupted", "terminate",
                                                                       "terminate")
    assert run.error.startswith("interrupted in Terminate: JobTimeoutException: Task exceeded")


def test_a_step_command_no_worker_takes_is_answered_in_time_and_never_run_later(rq_app, redis_conn, cluster,
                                                                                 clock, monkeypatch):
    """Found in review: the bridge waited api_heavy_timeout + 10 s (70 s by default) for a one-step command,
    past the shim's 30 s, and a job no worker had taken stayed queued, to run by surprise whenever a worker
    came."""
    from bridge import views
    app, queue = rq_app
    register_cluster(cluster)
    bridge = Bridge(app, app.test_client())
    bridge.call("CreateAccount", account_params(cluster, 505))
    work(queue, redis_conn)
    assert views.STEP_COMMAND_WAIT < 30  # the shim's own timeout
    monkeypatch.setattr(views, "STEP_COMMAND_WAIT", 1)
    answer = bridge.call("VMSetCpuRam", account_params(cluster, 505)).get_json()
    assert answer["result"] == "error" and "no worker took it within 1s, so it was not run" in answer["message"]
    assert queue.count == 0  # cancelled: a worker started later finds nothing
