"""The RQ job class bench/deploy_throughput.py gives its workers (``rq worker -j bench.rq_probe.ProbeJob``).

It changes nothing in what a job does: ``jobs.worker.process_vm_job`` runs as always. Around it, inside the
process that runs the job (RQ's work horse, or the worker itself with SimpleWorker), it records one JSON
line per pipeline run in the Redis list ``pkvm-bench:<queue>:runs``:

    service_id, result, api_calls          from the run's RunResult
    steps: [{label, from, to, result, seconds, cpu}]
                                           label/from/to/result/seconds as VMRun stores them, cpu from
                                           RunResult.step_cpu (process CPU time spent inside the step)
    run_cpu, run_wall                      process CPU and wall time of the whole run_vm (lease, steps,
                                           VMRun row)
    api_cpu                                process CPU of the run spent inside Proxmox API calls
                                           (core.proxmox.client.Pve._call: proxmoxer, requests, TLS)
    job_cpu, job_wall                      process CPU and wall time of the whole job (Job.perform)
    horse_cpu                              CPU of this process since it started (fork or spawn) up to the
                                           end of the job: for a forking worker, what the job really cost,
                                           app start-up included; for SimpleWorker, cumulative

Only our own process's CPU is counted (time.process_time), never the fake Proxmox's nor PostgreSQL's.
The hooks are set in the job's process the first time a job runs there, by replacing
``jobs.pipeline.run_vm``, ``jobs.pipeline._save_run`` and ``core.proxmox.client.Pve._call`` with thin
wrappers (process_vm_job imports run_vm when it runs, so it gets the wrapper). The imports they need are
ones the job makes anyway.
"""
from __future__ import annotations

import json
import time

from rq.job import Job

_state: dict = {"installed": False, "connection": None, "key": None, "steps": None, "api_cpu": 0.0}


def runs_key(queue_name: str) -> str:
    return f"pkvm-bench:{queue_name}:runs"


def _install() -> None:
    import jobs.pipeline as pipeline
    from core.proxmox import client

    real_run_vm, real_save_run, real_call = pipeline.run_vm, pipeline._save_run, client.Pve._call

    def call(self, method, path, params):
        cpu0 = time.process_time()
        try:
            return real_call(self, method, path, params)
        finally:
            _state["api_cpu"] += time.process_time() - cpu0

    def save_run(vm, pipe, source, result, error, steps, started, clock):
        _state["steps"] = [dict(step) for step in steps]
        return real_save_run(vm, pipe, source, result, error, steps, started, clock)

    def run_vm(service_id, out, clock=None, max_wait=None, owner=None):
        _state["steps"], _state["api_cpu"] = None, 0.0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = real_run_vm(service_id, out, clock, max_wait, owner)
        run_cpu, run_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        steps = _state["steps"] or []
        for step, cpu in zip(steps, result.step_cpu):
            step["cpu"] = cpu
        _state["run"] = {"service_id": service_id, "action": result.action, "result": result.result,
                         "message": result.message, "api_calls": result.api_calls, "steps": steps,
                         "step_cpu": list(result.step_cpu), "run_cpu": run_cpu, "run_wall": run_wall,
                         "api_cpu": _state["api_cpu"]}
        return result

    pipeline.run_vm, pipeline._save_run, client.Pve._call = run_vm, save_run, call
    _state["installed"] = True


class ProbeJob(Job):
    def perform(self):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if not _state["installed"]:
            _install()
        _state["run"] = None
        try:
            return super().perform()
        finally:
            record = dict(_state["run"] or {"service_id": (self.args or [None])[0], "result": "no-run"})
            record.update(job_id=self.id, job_cpu=time.process_time() - cpu0,
                          job_wall=time.perf_counter() - wall0, horse_cpu=time.process_time(),
                          ended=time.time())
            try:
                self.connection.rpush(runs_key(self.origin), json.dumps(record))
            except Exception:  # noqa: BLE001 - a probe must never fail the job
                pass


def warm_up(seen_key: str) -> None:
    """A no-op job for bench/deploy_throughput.py: builds the app in the process that runs it (as any first
    job does) and notes the worker's name."""
    from rq import get_current_job

    import jobs.worker
    jobs.worker._get_app()
    job = get_current_job()
    job.connection.sadd(seen_key, job.worker_name or "?")
    time.sleep(0.2)  # long enough for the other workers to take the other warm-up jobs
