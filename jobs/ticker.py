"""The in-process ticker for installations without Redis: the same tick, run by a background thread.

Every ``TICKER_SECONDS`` it runs a full tick. In between it sleeps until the next VM is due (a Proxmox task
to poll, a failed step's retry) or until work is queued (a CreateAccount wakes it), then runs only the VM
pass, several VMs at a time.
"""
from __future__ import annotations

import logging
import threading

from flask import Flask

from core import queue as work_queue

log = logging.getLogger("pkvm.ticker")


def pass_wait(app: Flask) -> float:
    """How long a VM's pass in this process may wait for a Proxmox task: two polls."""
    return max(float(app.config["TASK_POLL_SECONDS"]), 1.0) * 2


class Ticker(threading.Thread):
    def __init__(self, app: Flask, parallel: int = 4):
        super().__init__(name="pkvm-ticker", daemon=True)
        self.app = app
        self.parallel = parallel
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        work_queue.wakeup.set()

    def run(self) -> None:
        from .cron import next_vm_due, run_tick, vms_due
        from .pipeline import Output, SystemClock

        clock = SystemClock()
        period = float(self.app.config["TICKER_SECONDS"])
        max_wait = pass_wait(self.app)
        next_full = clock.monotonic()
        while not self.stopping.is_set():
            with self.app.app_context():
                try:
                    # processVirtualMachines at interval 0 is off: VMs wait for it (or for flask cron --task).
                    vm_task_on = work_queue.vm_task_on()
                    if clock.monotonic() >= next_full:
                        next_full = clock.monotonic() + period
                        run_tick(Output(log.info), inline=True, max_wait=max_wait, parallel=self.parallel)
                    elif vm_task_on and vms_due(clock):
                        run_tick(Output(log.info), only="processVirtualMachines", inline=True, max_wait=max_wait,
                                 parallel=self.parallel, use_lock=False)
                    due = next_vm_due(clock) if vm_task_on else None
                except Exception:  # noqa: BLE001 - the ticker must survive anything
                    log.exception("tick failed")
                    due = None
            timeout = max(0.0, next_full - clock.monotonic())
            if due is not None:
                timeout = min(timeout, max(0.0, due))
            work_queue.wakeup.wait(timeout)
            work_queue.wakeup.clear()


def tick_in_background(app: Flask) -> threading.Thread:
    """One full tick now, in a thread of this process (a WHMCS cron hook without Redis); the cron lock keeps
    it from running beside another tick."""
    from .cron import run_tick
    from .pipeline import Output

    def run() -> None:
        with app.app_context():
            try:
                run_tick(Output(log.info), inline=True, max_wait=pass_wait(app), parallel=4)
            except Exception:  # noqa: BLE001 - a thread's failure is logged, never raised into nowhere
                log.exception("tick failed")
    thread = threading.Thread(target=run, name="pkvm-hook-tick", daemon=True)
    thread.start()
    return thread
