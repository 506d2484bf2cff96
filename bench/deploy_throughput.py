"""Deploy throughput: N VMs end to end through the real path, for 1, 2, 4 and 8 RQ workers.

    python bench/deploy_throughput.py [--vms 50] [--workers 1,2,4,8] [--time-scale 0.05] ...

The path, for every measurement on a fresh PostgreSQL database, a fresh fake cluster and a fresh RQ queue:

* the fake Proxmox VE cluster runs as its own process (``python -m demo.pve_cluster``) with clone 30 s,
  migrate 30 s and start 8 s (PVE seconds, scaled by --time-scale: 1.5 s / 1.5 s / 0.4 s by default);
  a disk resize takes 1 s (0.05 s);
* the product is served by werkzeug's threaded WSGI server in its own process (bench/_wsgi.py);
* signed CreateAccount calls go to it over HTTP (8 at a time); each records the VM and enqueues its RQ job;
* ``rq worker <queue> --with-scheduler --url redis://127.0.0.1:6379/0 -w rq.worker.SimpleWorker`` processes
  (plus ``-j bench.rq_probe.ProbeJob``, see below; the environment carries PKVM_INSTANCE_PATH, DATABASE_URL,
  REDIS_URL, PKVM_RQ_QUEUE and the job settings) run the jobs; a job that meets a running Proxmox task
  re-queues itself (enqueue_in, run by the worker's scheduler); every --tick-seconds (default 60, what
  ``rq cron jobs/rq_cron.py`` does) the bench runs the cron tick (jobs.cron.run_tick, as tick_job does)
  to pick up anything that fell through;
* the bench polls vm_info until every VM is ``ready``.

The job settings are the product's defaults scaled by the time scale, so a job meets the same proportions
as in production (a 30 s clone against JOB_MAX_WAIT 5 s, re-queue 3 s, poll 1 s): by default
JOB_MAX_WAIT 0.25 s, JOB_REQUEUE_SECONDS 0.15 s, TASK_POLL_SECONDS 0.05 s. RQ's scheduler moves due jobs
only once a second, which does not scale: a re-queued job waits 0.15 to about 1.2 s.

T1 is one deploy alone (1 VM, 1 worker; the median of --t1-repeats deploys one after another). Each
worker count then gets N VMs: the makespan runs from the first CreateAccount to the last VM seen
``ready``; it is printed in seconds and as a multiple of T1. The original PHP module deploys serially, so
N VMs take N x T1; the target is 50 VMs on 8 workers within 8 x T1.

Workers are started and warmed up (each has run one no-op job, which builds the app in that process as
a long-lived worker has) before the clock starts.

Worker class. The README's command, ``rq worker pkvm --with-scheduler``, is RQ's standard Worker, which
forks a work horse per job: jobs.worker caches the app in a module global, but that global lives and dies
in the work horse, so every job (and every re-queued poll of a running task) imports the product and calls
create_app() again, about 1 s of CPU per job here, 4 to 6 s per deploy. On 2 cores that caps the forking
worker at about one deploy every 2 to 3 seconds whatever the number of workers, and the four series could
not run in 5 minutes. The series therefore use ``-w rq.worker.SimpleWorker`` (``--worker-class simple``,
the default: jobs run in the long-lived worker process, the app is built once), and the standard forking
Worker is measured afterwards for comparison (its own T1, then --fork-vms VMs on the largest worker
count; ``--worker-class fork`` runs the whole series with it, ``--fork-vms 0`` skips the comparison).

Our CPU, not Proxmox's. The job class ``bench.rq_probe.ProbeJob`` records, in the process that runs the
job and without changing what it does, each pipeline run's RunResult (api_calls, step_cpu: process CPU
time inside each step, as jobs.pipeline measures it), the VMRun step entries, the CPU of the whole run
and job, and the CPU the job's process spent since it started (for a forking worker: the work horse's
whole life, app start-up included), and the part of the run's CPU spent inside Proxmox API calls (the
client library's HTTP and TLS work, printed beside the step CPU). process_time counts only that process,
so the fake Proxmox's and PostgreSQL's work, done in their own processes, is never in it. Separately,
the CPU of each worker's process tree (worker, work horses, scheduler) is read from /proc before and
after, and so is the fake cluster's: "worker CPU per VM" is everything RQ and our code spent, "Proxmox
CPU per VM" the fake's.

Proxmox API calls per deploy are the sum of the jobs' api_calls (Pve.calls) over all runs of that VM.
Polls of running tasks count: a shorter poll interval makes more calls.

Everything started is stopped at the end (workers, server, cluster), the databases are dropped and the
Redis keys of the run's queues and jobs deleted. Timing is measured and printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (REDIS_URL, ROOT, FakeCluster, PgDatabase, ProductServer, account_params,  # noqa: E402
                     base_service_id, mean, percentile, product_env, register_cluster, signed_call,
                     stop_process, table, tree_cpu, venv_bin)

WORKER_CLASSES = {"fork": None, "simple": "rq.worker.SimpleWorker", "preloaded": "jobs.worker.PreloadedWorker"}


@dataclass
class Measurement:
    label: str
    workers: int
    vms: int
    worker_class: str = "simple"
    makespan: float | None = None  # seconds, None when not every VM was ready in time
    ready: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # CreateAccount sent -> VM seen ready
    create_seconds: float = 0.0  # all CreateAccounts answered
    worker_cpu: float = 0.0
    cluster_cpu: float = 0.0
    runs: list[dict] = field(default_factory=list)
    tick_enqueued: int = 0
    ticks: int = 0
    failed_jobs: int = 0
    notes: list[str] = field(default_factory=list)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=50, help="VMs per worker count (default 50, at most 999)")
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts, comma-separated (default 1,2,4,8)")
    parser.add_argument("--time-scale", type=float, default=0.05,
                        help="real seconds per Proxmox second in the fake cluster (default 0.05)")
    parser.add_argument("--clone-secs", type=float, default=30, help="PVE seconds of a clone (default 30)")
    parser.add_argument("--migrate-secs", type=float, default=30, help="PVE seconds of a migration (default 30)")
    parser.add_argument("--start-secs", type=float, default=8, help="PVE seconds of a VM start (default 8)")
    parser.add_argument("--job-max-wait", type=float, default=None,
                        help="JOB_MAX_WAIT seconds (default: 5 x time scale)")
    parser.add_argument("--requeue-seconds", type=float, default=None,
                        help="JOB_REQUEUE_SECONDS (default: 3 x time scale)")
    parser.add_argument("--poll-seconds", type=float, default=None,
                        help="TASK_POLL_SECONDS (default: 1 x time scale)")
    parser.add_argument("--worker-class", choices=sorted(WORKER_CLASSES), default="simple",
                        help="simple: rq.worker.SimpleWorker (default); fork: RQ's standard forking Worker; "
                             "preloaded: jobs.worker.PreloadedWorker (forks, the app built once before)")
    parser.add_argument("--fork-vms", type=int, default=8,
                        help="then compare with the other worker class (the forking one by default): T1 and "
                             "this many VMs on the largest worker count (default 8; 0: skip)")
    parser.add_argument("--tick-seconds", type=float, default=60,
                        help="run the cron tick this often, as rq cron does (default 60; 0: never)")
    parser.add_argument("--t1-repeats", type=int, default=3, help="single deploys for T1, median (default 3)")
    parser.add_argument("--timeout", type=float, default=180,
                        help="give up on a measurement after this many seconds (default 180)")
    parser.add_argument("--stall-seconds", type=float, default=30,
                        help="give up on a measurement when steps fail and no VM moved for this long (default 30)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker logs (printed path)")
    args = parser.parse_args(argv)
    args.worker_counts = [int(x) for x in args.workers.split(",") if x.strip()]
    if not 1 <= args.vms <= 999:
        parser.error("--vms must be between 1 and 999")
    scale = args.time_scale or 1.0
    if args.job_max_wait is None:
        args.job_max_wait = round(5.0 * scale, 4)
    if args.requeue_seconds is None:
        args.requeue_seconds = round(3.0 * scale, 4)
    if args.poll_seconds is None:
        args.poll_seconds = round(1.0 * scale, 4)
    return args


# ----------------------------------------------------------------------------- one measurement

class Run:
    """One database, cluster, queue, server and set of workers."""

    def __init__(self, args, instance: Path, workers: int, stack: ExitStack, worker_class: str):
        from redis import Redis

        from app import create_app
        from core.extensions import db

        self.args, self.instance, self.stack, self.worker_class = args, instance, stack, worker_class
        self.redis = Redis.from_url(REDIS_URL)
        self.queue_name = f"pkvm-bench-{secrets.token_hex(4)}"
        self.base = base_service_id()
        self.sids: list[int] = []
        stack.callback(self.cleanup_redis)
        self.database = PgDatabase()
        stack.callback(self.database.stop)
        self.cluster = FakeCluster(args.time_scale, clone_secs=args.clone_secs, migrate_secs=args.migrate_secs,
                                   start_secs=args.start_secs)
        stack.callback(self.cluster.stop)
        settings = dict(RQ_QUEUE=self.queue_name, TICKER_SECONDS=0, JOB_MAX_WAIT=args.job_max_wait,
                        JOB_REQUEUE_SECONDS=args.requeue_seconds, TASK_POLL_SECONDS=args.poll_seconds)
        self.app = create_app(dict(settings, INSTANCE_PATH=str(instance), SQLALCHEMY_DATABASE_URI=self.database.url,
                                   REDIS_URL=REDIS_URL))
        with self.app.app_context():
            db.create_all()
            register_cluster(self.cluster.info, self.cluster.ca_pem, system_disk_gb=10, additional_disk_gb=5)
            stack.callback(self._dispose)
        self.secret = self.app.config["BRIDGE_SECRET"]
        self.env = product_env(str(instance), self.database.env_url, REDIS_URL=REDIS_URL, **settings)
        self.server = ProductServer(self.env)
        stack.callback(self.server.stop)
        self.workers: list[subprocess.Popen] = []
        stack.callback(self.stop_workers)
        self.logs = instance / "logs"
        self.logs.mkdir(exist_ok=True)
        for n in range(workers):
            self.workers.append(self._start_worker(n))
        self._wait_for_workers(workers)
        self._warm_up(workers)

    def _dispose(self):
        from core.extensions import db
        with self.app.app_context():
            db.session.remove()
            db.engine.dispose()

    def _start_worker(self, n: int) -> subprocess.Popen:
        cmd = [venv_bin("rq"), "worker", self.queue_name, "--with-scheduler", "--url", REDIS_URL,
               "-j", "bench.rq_probe.ProbeJob", "-n", f"{self.queue_name}-w{n}"]
        worker_class = WORKER_CLASSES[self.worker_class]
        if worker_class:
            cmd += ["-w", worker_class]
        log = open(self.logs / f"{self.queue_name}-w{n}.log", "w")
        self.stack.callback(log.close)
        return subprocess.Popen(cmd, cwd=str(ROOT), env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def _wait_for_workers(self, count: int) -> None:
        from rq import Queue, Worker
        queue = Queue(self.queue_name, connection=self.redis)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            dead = [p for p in self.workers if p.poll() is not None]
            if dead:
                raise RuntimeError(f"an rq worker exited at start (code {dead[0].returncode}); logs in {self.logs}")
            if len(Worker.all(queue=queue)) >= count and self.redis.exists(f"rq:scheduler-lock:{self.queue_name}"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the rq workers did not register in 60 s; logs in {self.logs}")

    def _warm_up(self, count: int) -> None:
        """Run no-op jobs until every worker has run one: each builds the app once, as a worker that has
        been up for a while has."""
        from rq import Queue
        queue = Queue(self.queue_name, connection=self.redis)
        seen_key = f"pkvm-bench:{self.queue_name}:warm"
        deadline = time.monotonic() + 60
        n = 0
        while self.redis.scard(seen_key) < count and time.monotonic() < deadline:
            pending = [queue.enqueue("bench.rq_probe.warm_up", seen_key, job_id=f"{self.queue_name}-warm-{n + i}",
                                     result_ttl=0) for i in range(count)]
            n += count
            while time.monotonic() < deadline and any(self._waits(j) for j in pending):
                time.sleep(0.05)
        if self.redis.scard(seen_key) < count:
            raise RuntimeError("the workers did not all take a warm-up job")
        self.redis.delete(f"pkvm-bench:{self.queue_name}:runs")

    def _waits(self, job) -> bool:
        """Whether a warm-up job still waits or runs (result_ttl=0: its key goes as it ends, also between
        two reads)."""
        from rq.exceptions import InvalidJobOperation
        try:
            return job.get_status(refresh=True) in ("queued", "started")
        except InvalidJobOperation:
            return False

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()  # warm shutdown: the current job ends first
        for proc in self.workers:
            stop_process(proc, timeout=20)

    def cleanup_redis(self) -> None:
        """Delete every key of this run: the queue's (registries, worker sets, scheduler lock, the
        bench's own lists) and the jobs' (rq:job:vm-<sid>, results, executions)."""
        from rq import Queue
        try:
            queue = Queue(self.queue_name, connection=self.redis)
            queue.delete(delete_jobs=True)
        except Exception:  # noqa: BLE001 - best effort, the scan below gets the rest
            pass
        prefix = str(self.base)[:-3]
        sids = {str(s) for s in self.sids}
        doomed = set(self.redis.scan_iter(match=f"*{self.queue_name}*", count=1000))
        for key in self.redis.scan_iter(match=f"*vm-{prefix}*", count=1000):
            text = key.decode()
            sid = text.split("vm-", 1)[1][:len(str(self.base))]
            if sid in sids:
                doomed.add(key)
        if doomed:
            self.redis.delete(*doomed)
        self.redis.srem("rq:queues", f"rq:queue:{self.queue_name}")
        for key in list(self.redis.smembers("rq:workers")):
            if self.queue_name in key.decode():
                self.redis.srem("rq:workers", key)
        self.redis.close()

    # ------------------------------------------------------------------ the deploys

    def tick(self, measurement: Measurement) -> None:
        from jobs.cron import run_tick
        from jobs.pipeline import Output
        lines: list[str] = []
        with self.app.app_context():
            run_tick(Output(lines.append))
        measurement.ticks += 1
        measurement.tick_enqueued += sum("[queued]" in line for line in lines)

    def statuses(self, sids: list[int]) -> dict[int, tuple[str, str | None]]:
        from sqlalchemy import select

        from core.extensions import db
        from core.models import VM
        with self.app.app_context():
            rows = db.session.execute(select(VM.service_id, VM.status, VM.last_error_message)
                                      .where(VM.service_id.in_(sids))).all()
            db.session.rollback()
        return {r[0]: (r[1], r[2]) for r in rows}

    def deploy(self, measurement: Measurement, count: int) -> None:
        """Send count CreateAccounts (8 at a time) and wait until every VM is ready."""
        first = len(self.sids) + 1
        sids = [self.base + first + i for i in range(count)]
        self.sids += sids
        info, ca_pem = self.cluster.info, self.cluster.ca_pem
        params = {sid: account_params(info, ca_pem, sid) for sid in sids}
        sent: dict[int, float] = {}
        failures: list[str] = []

        def create(sid: int) -> None:
            sent[sid] = time.perf_counter()
            status, answer, _elapsed = signed_call(self.server.port, self.secret, "CreateAccount", params[sid])
            if status != 200 or answer.get("result") != "success":
                failures.append(f"service {sid}: HTTP {status} {answer}")

        cpu0 = {p.pid: tree_cpu(p.pid) for p in self.workers}
        cluster0 = tree_cpu(self.cluster.pid)
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(8, count)) as pool:
            list(pool.map(create, sids))
        measurement.create_seconds = time.perf_counter() - began
        if failures:
            raise RuntimeError("CreateAccount failed: " + "; ".join(failures[:3]))
        ready_at: dict[int, float] = {}
        next_tick = began + self.args.tick_seconds if self.args.tick_seconds else None
        deadline = began + self.args.timeout
        last: dict[int, tuple[str, str | None]] = {}
        previous, changed_at, stalled = None, began, False
        while len(ready_at) < count:
            now = time.perf_counter()
            if now > deadline:
                break
            if previous is not None and now - changed_at > self.args.stall_seconds and \
                    any(error for _status, error in last.values()):
                stalled = True  # failing steps and no progress: the product is broken, not slow
                break
            if next_tick is not None and now >= next_tick:
                threading.Thread(target=self.tick, args=(measurement,), daemon=True).start()
                next_tick += self.args.tick_seconds
            last = self.statuses([s for s in sids if s not in ready_at])
            seen = time.perf_counter()
            for sid, (status, _error) in last.items():
                if status == "ready":
                    ready_at[sid] = seen
            snapshot = {sid: status for sid, (status, _error) in last.items()}
            if snapshot != previous:
                previous, changed_at = snapshot, seen
            time.sleep(0.05)
        end = max(ready_at.values()) if ready_at else time.perf_counter()
        measurement.worker_cpu += sum(tree_cpu(p.pid) - cpu0[p.pid] for p in self.workers)
        measurement.cluster_cpu += tree_cpu(self.cluster.pid) - cluster0
        measurement.ready += len(ready_at)
        measurement.latencies += [ready_at[s] - sent[s] for s in ready_at]
        if len(ready_at) == count:
            measurement.makespan = (measurement.makespan or 0) + end - began
        else:
            measurement.makespan = None
            stuck = {sid: v for sid, v in last.items() if sid not in ready_at}
            by_status: dict[str, int] = defaultdict(int)
            for status, _error in stuck.values():
                by_status[status] += 1
            errors = sorted({e for _s, e in stuck.values() if e})[:3]
            why = f"no progress for {self.args.stall_seconds:.0f} s" if stalled else \
                f"after {self.args.timeout:.0f} s"
            measurement.notes.append(f"{count - len(ready_at)} of {count} not ready ({why}): "
                                     + ", ".join(f"{k}={v}" for k, v in sorted(by_status.items()))
                                     + (f"; errors: {errors}" if errors else ""))

    def collect(self, measurement: Measurement) -> None:
        """The probe's records of this run's VMs, and the jobs that failed."""
        from rq import Queue
        sids = set(self.sids)
        for raw in self.redis.lrange(f"pkvm-bench:{self.queue_name}:runs", 0, -1):
            record = json.loads(raw)
            if record.get("service_id") in sids:
                measurement.runs.append(record)
        queue = Queue(self.queue_name, connection=self.redis)
        measurement.failed_jobs += len(queue.failed_job_registry.get_job_ids())
        with self.app.app_context():
            from sqlalchemy import func, select

            from core.extensions import db
            from core.models import VM
            measurement.errors += db.session.scalar(select(func.count()).select_from(VM).where(
                VM.service_id.in_(sids), VM.last_error_at.is_not(None))) or 0
            db.session.rollback()


def measure(args, instance: Path, label: str, workers: int, vms: int, repeats: int = 1,
            worker_class: str | None = None) -> Measurement:
    worker_class = worker_class or args.worker_class
    measurement = Measurement(label=label, workers=workers, vms=vms, worker_class=worker_class)
    with ExitStack() as stack:
        try:
            run = Run(args, instance, workers, stack, worker_class)
            makespans = []
            for _ in range(repeats):
                single = Measurement(label=label, workers=workers, vms=vms)
                run.deploy(single, vms)
                makespans.append(single.makespan)
                measurement.ready += single.ready
                measurement.latencies += single.latencies
                measurement.worker_cpu += single.worker_cpu
                measurement.cluster_cpu += single.cluster_cpu
                measurement.create_seconds = max(measurement.create_seconds, single.create_seconds)
                measurement.notes += single.notes
                measurement.ticks += single.ticks
                measurement.tick_enqueued += single.tick_enqueued
                if single.makespan is None:
                    break
            done = [m for m in makespans if m is not None]
            measurement.makespan = sorted(done)[len(done) // 2] if len(done) == len(makespans) else None
            measurement.vms = vms
            time.sleep(0.3)  # let the last job write its record
            run.collect(measurement)
        except BaseException:
            print(f"  worker logs: {instance / 'logs'}" if args.keep_logs else "  (rerun with --keep-logs to keep "
                  "the worker logs)", file=sys.stderr)
            raise
    return measurement


# ----------------------------------------------------------------------------- report

def per_vm(runs: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for record in runs:
        out[record["service_id"]].append(record)
    return out


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    wall0 = time.perf_counter()
    print("Deploy throughput: signed CreateAccount over HTTP -> RQ on Redis -> rq worker processes -> fake PVE")
    print(f"  PostgreSQL (fresh database per measurement), {args.vms} VMs per worker count, workers "
          f"{','.join(map(str, args.worker_counts))}, rq worker class: {args.worker_class}"
          + (f"; then the forking worker with {args.fork_vms} VMs" if args.fork_vms else ""))
    scale = args.time_scale
    print(f"  fake PVE time scale {scale}: clone {args.clone_secs:g} s -> {args.clone_secs * scale:.2f} s, migrate "
          f"{args.migrate_secs:g} s -> {args.migrate_secs * scale:.2f} s, start {args.start_secs:g} s -> "
          f"{args.start_secs * scale:.2f} s, resize 1 s -> {scale:.2f} s")
    tick = f"every {args.tick_seconds:g} s" if args.tick_seconds else "never"
    print(f"  JOB_MAX_WAIT {args.job_max_wait:g} s, JOB_REQUEUE_SECONDS {args.requeue_seconds:g} s, "
          f"TASK_POLL_SECONDS {args.poll_seconds:g} s, cron tick {tick}")
    print("  load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="pkvm-bench-deploy-"))
    instance = tmp / "instance"
    instance.mkdir()
    series: list[Measurement] = []
    forked: list[Measurement] = []
    try:
        t1 = measure(args, instance, "T1 (1 VM alone)", 1, 1, repeats=args.t1_repeats)
        series.append(t1)
        print(f"  T1 = {fmt_s(t1.makespan)} s (median of {args.t1_repeats})", flush=True)
        for workers in args.worker_counts:
            if not all(m.makespan for m in series):
                print(f"  {workers} worker(s): skipped after a failed measurement", flush=True)
                continue
            m = measure(args, instance, f"{args.vms} VMs", workers, args.vms)
            series.append(m)
            print(f"  {workers} worker(s): {fmt_s(m.makespan)} s" + (f"  [{'; '.join(m.notes)}]" if m.notes else ""),
                  flush=True)
        other = "fork" if args.worker_class == "simple" else "simple"
        if args.fork_vms and args.worker_counts and all(m.makespan for m in series):
            top = max(args.worker_counts)
            ft1 = measure(args, instance, "T1 (1 VM alone)", 1, 1, worker_class=other)
            forked.append(ft1)
            print(f"  {other}: T1 = {fmt_s(ft1.makespan)} s", flush=True)
            fm = measure(args, instance, f"{args.fork_vms} VMs", top, args.fork_vms, worker_class=other)
            forked.append(fm)
            print(f"  {other}: {top} worker(s), {args.fork_vms} VMs: {fmt_s(fm.makespan)} s"
                  + (f"  [{'; '.join(fm.notes)}]" if fm.notes else ""), flush=True)
    finally:
        if args.keep_logs:
            print(f"  worker logs kept in {instance / 'logs'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    T1 = t1.makespan
    print()

    def makespan_row(m: Measurement, base: float | None) -> list:
        deploys = m.ready or 1
        vms_runs = per_vm(m.runs)
        runs_per_vm = mean([len(r) for r in vms_runs.values()]) if vms_runs else float("nan")
        ratio = (m.makespan / base) if (m.makespan and base) else None
        serial = (m.vms * base) if base else None
        return [f"{m.worker_class}: {m.label}", m.workers, fmt_s(m.makespan), "-" if ratio is None else f"{ratio:.2f}",
                fmt_s(serial), "-" if not m.makespan else f"{m.vms / m.makespan * 60:.0f}",
                fmt_s(percentile(m.latencies, 50)), fmt_s(max(m.latencies) if m.latencies else None),
                f"{runs_per_vm:.1f}", f"{m.worker_cpu / deploys:.2f}" if m.ready else "-",
                f"{m.cluster_cpu / deploys:.2f}" if m.ready else "-",
                m.errors, m.tick_enqueued]
    rows = [makespan_row(m, T1) for m in series]
    fork_t1 = forked[0].makespan if forked else None
    rows += [makespan_row(m, fork_t1) for m in forked]
    print(table(["run", "workers", "makespan s", "x T1", "serial N x T1 s", "VMs/min", "VM p50 s", "VM max s",
                 "jobs/VM", "worker CPU/VM s", "PVE CPU/VM s", "step errors", "tick-queued"], rows,
                title="Makespan (first CreateAccount -> last VM ready); x T1 against the T1 of the same worker class"))
    print()

    def step_stats(measurements: list[Measurement]) -> tuple[list[list], list[float]]:
        by_label: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
        for m in measurements:
            for record in m.runs:
                for step in record.get("steps") or []:
                    if "cpu" in step:
                        by_label[step["label"]].append((step["cpu"], step["seconds"], step.get("result", "")))
        from jobs.deploy import DEPLOY  # the pipeline's own order
        order = [s.label for s in DEPLOY.steps if s.label in by_label]
        order += sorted(set(by_label) - set(order))
        rows, every = [], []
        for label in order:
            cpus = [c for c, _s, _r in by_label[label]]
            walls = [s for _c, s, _r in by_label[label]]
            waits = sum(1 for _c, _s, r in by_label[label] if r == "waiting")
            every += cpus
            rows.append([label, len(cpus), waits, f"{mean(cpus) * 1000:.2f}", f"{percentile(cpus, 50) * 1000:.2f}",
                         f"{percentile(cpus, 95) * 1000:.2f}", f"{max(cpus) * 1000:.2f}",
                         sum(c > 0.005 for c in cpus), f"{mean(walls):.2f}"])
        if every:
            rows.append(["all steps", len(every), "", f"{mean(every) * 1000:.2f}",
                         f"{percentile(every, 50) * 1000:.2f}", f"{percentile(every, 95) * 1000:.2f}",
                         f"{max(every) * 1000:.2f}", sum(c > 0.005 for c in every), ""])
        return rows, every

    step_rows, every = step_stats(series)
    print(table(["step", "runs", "waiting", "CPU mean ms", "p50 ms", "p95 ms", "max ms", "> 5 ms", "wall mean s"],
                step_rows, title=f"Orchestration CPU per step, {args.worker_class} workers (RunResult.step_cpu: our "
                                 "process's CPU inside the step; target < 5 ms)"))
    for m in series:  # the same CPU, per measurement: more workers than cores make every step dearer
        _rows, one = step_stats([m])
        if one:
            print(f"  {m.label}: all steps CPU mean {mean(one) * 1000:.2f} ms, p50 {percentile(one, 50) * 1000:.2f} ms,"
                  f" p95 {percentile(one, 95) * 1000:.2f} ms ({len(one)} step runs, {m.workers} worker(s) on "
                  f"{os.cpu_count()} CPUs)")
    def api_share(measurements: list[Measurement]) -> tuple[float, float]:
        """CPU per step run inside Proxmox API calls (proxmoxer, requests, TLS), and the rest (our code, the
        database driver): in a deploy the calls are made only inside steps (the pipelines that look up a
        moved VM before their first step are not benchmarked here)."""
        runs = [r for m in measurements for r in m.runs if r.get("steps") is not None]
        step_runs = sum(len(r["step_cpu"]) for r in runs)
        if not step_runs:
            return float("nan"), float("nan")
        api = sum(r.get("api_cpu", 0.0) for r in runs) / step_runs
        return api, sum(sum(r["step_cpu"]) for r in runs) / step_runs - api

    api_ms, rest_ms = (x * 1000 for x in api_share(series))
    print(f"  all series, per step run: {api_ms:.2f} ms inside Proxmox API calls (proxmoxer, requests, TLS), "
          f"{rest_ms:.2f} ms the rest (the step's own code, SQLAlchemy and the database driver)")
    fork_every: list[float] = []
    if forked:
        _rows, fork_every = step_stats(forked)
        if fork_every:
            print(f"  {forked[0].worker_class} workers, all steps: CPU mean {mean(fork_every) * 1000:.2f} ms, p50 "
                  f"{percentile(fork_every, 50) * 1000:.2f} ms, p95 {percentile(fork_every, 95) * 1000:.2f} ms, "
                  f"max {max(fork_every) * 1000:.2f} ms (every job starts in a fresh work horse)")
    print()

    cost_rows = []
    for m in series + forked:
        runs = [r for r in m.runs if r.get("steps") is not None]
        if not runs:
            continue
        steps_cpu = [sum(s.get("cpu", 0) for s in r["steps"]) for r in runs]
        overhead = [r["run_cpu"] - c for r, c in zip(runs, steps_cpu)]
        calls = [sum(r["api_calls"] for r in rs) for rs in per_vm(runs).values()]
        cost_rows.append([f"{m.worker_class}: {m.label}, {m.workers}w", len(runs),
                          f"{mean([r['run_cpu'] for r in runs]) * 1000:.1f}", f"{mean(overhead) * 1000:.1f}",
                          f"{mean([r['job_cpu'] for r in runs]) * 1000:.1f}",
                          f"{mean([r['horse_cpu'] for r in runs]) * 1000:.0f}" if m.worker_class == "fork" else "-",
                          f"{mean(calls):.1f}", f"{min(calls)}-{max(calls)}"])
    print(table(["run", "job runs", "run_vm CPU ms", "outside steps ms", "job CPU ms", "horse CPU ms",
                 "API calls/deploy", "range"], cost_rows,
                title="Per job run: CPU of run_vm, the part outside the steps (lease, VMRun row), the whole job, "
                      "and the work horse's whole life (fork only: app start-up included)"))
    print()

    by_workers = {m.workers: m for m in series[1:]}
    calls_all = [sum(r["api_calls"] for r in rs) for m in series[1:] for rs in per_vm(m.runs).values()]
    result = [f"vms={args.vms}", f"worker_class={args.worker_class}", f"t1_s={fmt_s(T1)}"]
    for workers, m in sorted(by_workers.items()):
        result.append(f"w{workers}_s={fmt_s(m.makespan)}")
        result.append(f"w{workers}_x_t1=" + ("-" if not (m.makespan and T1) else f"{m.makespan / T1:.2f}"))
    if by_workers:
        result.append(f"serial_x_t1={args.vms}")
    result += [f"step_cpu_mean_ms={mean(every) * 1000:.2f}", f"step_cpu_api_ms={api_ms:.2f}",
               f"step_cpu_rest_ms={rest_ms:.2f}", f"step_cpu_p95_ms={percentile(every, 95) * 1000:.2f}",
               f"step_cpu_max_ms={(max(every) if every else float('nan')) * 1000:.2f}",
               f"api_calls_per_deploy={mean(calls_all):.1f}",
               f"worker_cpu_per_vm_s={mean([m.worker_cpu / m.ready for m in series[1:] if m.ready]):.2f}"]
    if len(forked) == 2:
        ft1, fm = forked
        result += [f"{fm.worker_class}_t1_s={fmt_s(ft1.makespan)}",
                   f"{fm.worker_class}_w{fm.workers}_{fm.vms}vms_s={fmt_s(fm.makespan)}",
                   f"{fm.worker_class}_w{fm.workers}_{fm.vms}vms_x_t1="
                   + ("-" if not (fm.makespan and ft1.makespan) else f"{fm.makespan / ft1.makespan:.2f}"),
                   f"{fm.worker_class}_worker_cpu_per_vm_s=" + (f"{fm.worker_cpu / fm.ready:.2f}" if fm.ready else "-"),
                   f"{fm.worker_class}_step_cpu_mean_ms={mean(fork_every) * 1000:.2f}"]
    complete = all(m.makespan for m in series + forked) and len(series) == len(args.worker_counts) + 1
    result += [f"complete={'yes' if complete else 'no'}", f"time_scale={args.time_scale:g}",
               f"bench_s={time.perf_counter() - wall0:.0f}"]
    print("  load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"Total bench time {time.perf_counter() - wall0:.0f} s")
    print("RESULT deploy_throughput " + " ".join(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
