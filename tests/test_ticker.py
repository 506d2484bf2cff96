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
