"""The in-process ticker (no Redis): a CreateAccount wakes it and the VM deploys without any cron call."""
from __future__ import annotations

import time

from core.extensions import db
from core.models import VM
from jobs.cron import next_vm_due
from jobs.ticker import Ticker
from tests.conftest import account_params, register_cluster


def test_ticker_deploys_after_create_account(app, bridge, cluster, clock):
    register_cluster(cluster)
    app.config.update(TICKER_SECONDS=3600, TASK_POLL_SECONDS=0.2)
    ticker = Ticker(app, parallel=2)
    ticker.start()
    try:
        time.sleep(0.3)  # the first full tick finds nothing to do
        assert bridge.call("CreateAccount", account_params(cluster, 601)).get_json()["result"] == "success"
        assert bridge.call("CreateAccount", account_params(cluster, 602)).get_json()["result"] == "success"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            db.session.expire_all()
            if all(db.session.get(VM, sid).status == "ready" for sid in (601, 602)):
                break
            time.sleep(0.1)
        assert [db.session.get(VM, sid).status for sid in (601, 602)] == ["ready", "ready"]
        assert next_vm_due(clock) is None
    finally:
        ticker.stop()
        ticker.join(10)
    assert not ticker.is_alive()


def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_vm_leased_elsewhere_does_not_make_the_ticker_spin(app, bridge, cluster, monkeypatch):
    """Found in review: a due VM whose lease another runner holds (a killed flask cron's, a hook tick's) was
    "due now" for the ticker's wait but never taken: the loop ran without sleeping, a core at 100%."""
    from datetime import timedelta

    import jobs.cron
    from jobs.pipeline import SystemClock
    register_cluster(cluster)
    app.config.update(TICKER_SECONDS=3600, TASK_POLL_SECONDS=0.2)
    bridge.call("CreateAccount", account_params(cluster, 611))
    vm = db.session.get(VM, 611)
    vm.lease_owner, vm.lease_until = "someone-else", SystemClock().now() + timedelta(minutes=3)
    db.session.commit()
    assert 170 < next_vm_due(SystemClock()) <= 180  # due when the lease ends, not now
    calls = _count_calls(monkeypatch, jobs.cron, "next_vm_due")
    ticker = Ticker(app, parallel=2)
    ticker.start()
    try:
        time.sleep(1.5)
    finally:
        ticker.stop()
        ticker.join(10)
    assert len(calls) < 10, len(calls)
    db.session.expire_all()
    assert db.session.get(VM, 611).status == "creation"


def test_the_vm_task_at_interval_zero_is_off_for_the_ticker_too(app, bridge, cluster, monkeypatch):
    """Found in review: interval 0 (off, seed 002) stopped the full ticks' VM pass, but a CreateAccount's
    wake-up still ran it, and a failed step was retried every 5 s."""
    from core import settings
    from jobs.pipeline import retry_delay
    register_cluster(cluster)
    settings.update({"interval_processVirtualMachines": 0})
    assert retry_delay() >= 50
    app.config.update(TICKER_SECONDS=3600, TASK_POLL_SECONDS=0.2)
    ticker = Ticker(app, parallel=2)
    ticker.start()
    try:
        time.sleep(0.3)
        assert bridge.call("CreateAccount", account_params(cluster, 612)).get_json()["result"] == "success"
        time.sleep(1.5)
    finally:
        ticker.stop()
        ticker.join(10)
    db.session.expire_all()
    assert db.session.get(VM, 612).status == "creation"


def test_flask_serve_prints_the_cron_output_once_in_the_originals_format(tmp_path):
    """Found in review: the ticker of `flask serve` ran silently (the schema upgrade's logging set-up
    disabled the product's loggers, and nothing printed them anyway); then, once printed, every line came
    twice (again through the root handler)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "PKVM_")) and k != "REDIS_URL"}
    env.update(PKVM_INSTANCE_PATH=str(tmp_path / "instance"), PKVM_TICKER_SECONDS="1",
               DATABASE_URL=f"sqlite:///{tmp_path / 'serve.sqlite3'}")
    flask = Path(sys.executable).with_name("flask")
    proc = subprocess.Popen([str(flask), "serve", "--port", str(port)], cwd=Path(__file__).resolve().parent.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import queue
    import threading
    read: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [read.put(line) for line in proc.stdout], daemon=True).start()
    lines = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                line = read.get(timeout=0.5)
            except queue.Empty:
                continue
            lines.append(line.rstrip("\n"))
            if "PUQ Proxmox KVM Cron End" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    starts = [line for line in lines if "PUQ Proxmox KVM Cron Start" in line]
    assert len(starts) == 1, lines[-20:]
    assert starts[0][:4].isdigit() and "[pkvm" not in starts[0]  # "YYYY-MM-DD HH:MM:SS PUQ ...", as the original
    assert any("[processVirtualMachines] Done" in line for line in lines)
