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
