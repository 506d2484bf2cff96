"""``flask cron``: the original's command line, its lock, and task intervals from the settings."""
from __future__ import annotations

from datetime import timedelta

from core import settings
from core.extensions import db
from core.models import CronLock, CronTask, utcnow
from jobs.cron import acquire_lock, release_lock, run_tick
from jobs.pipeline import Output


def test_help_lists_usage_and_tasks(runner):
    result = runner.invoke(args=["cron", "--help"])
    assert result.exit_code == 0
    # the original's help screen, line for line (with flask cron for php cron.php, and --inline)
    assert result.output.splitlines()[:4] == [
        "PUQ Proxmox KVM - Standalone Cron", "", "Usage:", "flask cron                Run all tasks (with interval checks)"]
    assert "flask cron --task=processVirtualMachines  Run single task (skip interval check)" in result.output
    assert "flask cron --help         Show this help" in result.output and "Options:" not in result.output
    assert "collectingStatistics - Collecting Statistics (default: 60m)" in result.output
    assert "scheduleBackup - Schedule Backup (default: 5m)" in result.output


def test_list_shows_interval_default_last_run_and_state(runner):
    settings.update({"interval_scheduleBackup": 0, "interval_collectingStatistics": 30})
    result = runner.invoke(args=["cron", "--list"])
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert rows["scheduleBackup"][1:3] == ["0m", "5m"] and rows["scheduleBackup"][-1] == "disabled"
    assert rows["collectingStatistics"][1:3] == ["30m", "60m"]
    assert rows["processVirtualMachines"][3] == "never"


def test_run_prints_the_tick_and_records_last_runs(runner):
    result = runner.invoke(args=["cron"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].endswith("PUQ Proxmox KVM Cron Start") and lines[-1].endswith("total)")
    assert sum("] Running (interval:" in line for line in lines) == 6
    assert db.session.get(CronTask, "processVirtualMachines").last_status == "success"
    # a second run a moment later: nothing is due
    again = runner.invoke(args=["cron"]).output.splitlines()
    assert len(again) == 2
    # --task runs one task regardless of its interval; --force runs all
    one = runner.invoke(args=["cron", "--task=collectingStatistics"]).output
    assert "[collectingStatistics] Running (interval: 60m, last: " in one and "[scheduleBackup]" not in one
    assert sum("] Running" in line for line in runner.invoke(args=["cron", "--force"]).output.splitlines()) == 6


def test_disabled_task_never_runs_unless_asked(runner):
    settings.update({"interval_removeOldSnapshots": 0})
    assert "[removeOldSnapshots]" not in runner.invoke(args=["cron"]).output
    assert "[removeOldSnapshots] Running" in runner.invoke(args=["cron", "--task=removeOldSnapshots"]).output


def test_unknown_task_is_refused(runner):
    result = runner.invoke(args=["cron", "--task=nope"])
    assert result.exit_code != 0 and "unknown task 'nope'" in result.output


def test_held_lock_skips_the_run_and_a_stale_one_is_taken_over(app, clock):
    assert acquire_lock("other-host:1", clock)
    lines: list[str] = []
    run_tick(Output(lines.append, clock))
    assert len(lines) == 3 and "already running (lock held by other-host:1" in lines[1]
    assert lines[2].endswith("PUQ Proxmox KVM Cron End (0s total)")
    assert db.session.get(CronTask, "processVirtualMachines") is None
    clock.advance(601)
    lines.clear()
    run_tick(Output(lines.append, clock))
    assert any("[processVirtualMachines] Running" in line for line in lines)
    assert db.session.get(CronLock, "cron") is None  # released at the end
    release_lock("other-host:1")


def test_no_lock_runs_beside_a_held_lock(runner, clock):
    db.session.add(CronLock(name="cron", holder="x", acquired_at=utcnow() - timedelta(seconds=5)))
    db.session.commit()
    assert "[processVirtualMachines] Running" in runner.invoke(args=["cron", "--no-lock"]).output
    assert "already running" in runner.invoke(args=["cron"]).output


def test_settings_are_validated_and_all_or_nothing(app):
    import pytest
    with pytest.raises(settings.SettingError) as err:
        settings.update({"api_timeout": 0, "api_heavy_timeout": 30, "cron_mode": "sometimes"})
    assert set(err.value.errors) == {"api_timeout", "cron_mode"}
    assert settings.get("api_heavy_timeout") == 60
    settings.update({"whmcs_api_secret": "s3cret"})
    settings.update({"whmcs_api_secret": ""})  # empty keeps the stored secret
    assert settings.get("whmcs_api_secret") == "s3cret"
    assert settings.public()["whmcs_api_secret"] == {"set": True}
    from core.models import Setting
    assert "s3cret" not in str(db.session.get(Setting, "whmcs_api_secret").value)
