"""The systemd units in deploy/systemd: valid for systemd, and their commands, run as the units would run
them (with this checkout in place of /opt/pkvm), make a working installation together: the web process
answers /healthz "ok" once a worker is registered and the cron tick has run through it."""
from __future__ import annotations

import http.client
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
REDIS_URL = "redis://127.0.0.1:6379/0"


def unit_settings(name: str) -> dict[str, str]:
    """The [Service] and [Unit] settings of a unit file (the last value of a key wins, as systemd reads
    these single-valued ones)."""
    settings = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _eq, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def installed_here(text: str) -> str:
    return text.replace("/opt/pkvm", str(ROOT))


def test_the_units_are_valid_for_systemd_and_always_restart(tmp_path):
    """systemd-analyze verify reads them (with the product where this checkout is) without a complaint:
    a misspelt setting is only a warning to systemd, so any output fails."""
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing (Debian's systemd package; .ci/run installs it)")
    names = sorted(p.name for p in UNITS.glob("*.service"))
    assert names == ["pkvm-cron.service", "pkvm-web.service", "pkvm-worker@.service"]
    for name in names:
        (tmp_path / name).write_text(installed_here((UNITS / name).read_text()))
        settings = unit_settings(name)
        # RQ's cron and workers exit on a Redis error: the units bring them back, however often.
        assert (settings["Restart"], settings["StartLimitIntervalSec"]) == ("always", "0"), name
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *[str(tmp_path / n) for n in names]],
                          capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done


def _command(name: str, key: str = "ExecStart", **replace: str) -> list[str]:
    command = installed_here(unit_settings(name)[key])
    for old, new in replace.items():
        command = command.replace(old, new)
    return shlex.split(command)


def test_the_units_commands_run_a_working_installation(tmp_path):
    port = _free_port()
    queue = f"pkvm-test-{secrets.token_hex(4)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "PKVM_"))
           and k not in ("DATABASE_URL", "REDIS_URL")}
    # /etc/pkvm/pkvm.env as deploy/pkvm.env.example has it (read as a shell reads it, which is how the README
    # runs flask commands by hand), with this test's own database, instance folder and queue.
    example = subprocess.run(["sh", "-c", 'set -a && . "$0" && env -0', str(ROOT / "deploy" / "pkvm.env.example")],
                             env={"PATH": env["PATH"]}, capture_output=True, text=True, check=True).stdout
    given = dict(item.split("=", 1) for item in example.split("\0") if "=" in item)
    assert {"DATABASE_URL", "REDIS_URL", "PKVM_INSTANCE_PATH"} <= set(given), given
    env.update({k: v for k, v in given.items() if k in ("DATABASE_URL", "REDIS_URL") or k.startswith("PKVM_")})
    env.update(PKVM_INSTANCE_PATH=str(tmp_path / "instance"), DATABASE_URL=f"sqlite:///{tmp_path / 'pkvm.sqlite3'}",
               REDIS_URL=REDIS_URL, PKVM_RQ_QUEUE=queue, PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    workdir = installed_here(unit_settings("pkvm-web.service")["WorkingDirectory"])
    assert workdir == str(ROOT)
    # The web unit brings the schema up to date before it starts (its ExecStartPre).
    subprocess.run(_command("pkvm-web.service", key="ExecStartPre"), cwd=workdir, env=env, check=True,
                   capture_output=True)
    commands = {
        "web": _command("pkvm-web.service", **{"127.0.0.1:5000": f"127.0.0.1:{port}"}),
        # The worker's unit names the queue (pkvm): this test's own, as the unit's comment says to do.
        "worker": _command("pkvm-worker@.service", **{"rq worker pkvm ": f"rq worker {queue} ",
                                                      "${REDIS_URL}": REDIS_URL}),
        "cron": _command("pkvm-cron.service", **{"${REDIS_URL}": REDIS_URL}),
    }
    assert commands["worker"][1:3] == ["worker", queue] and "${" not in " ".join(sum(commands.values(), []))
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in commands}
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            processes[name] = subprocess.Popen(command, cwd=workdir, env=env, stdout=logs[name],
                                               stderr=subprocess.STDOUT, start_new_session=True)
        deadline, report = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            for name, process in processes.items():
                assert process.poll() is None, f"{name} exited:\n{(tmp_path / f'{name}.log').read_text()}"
            report = _healthz(port)
            if report and report["status"] == "ok":
                break
            time.sleep(0.5)
        assert report and report["status"] == "ok" and report["workers"] == 1 and report["last_tick"], report
    finally:
        stopped = {}
        for name, process in processes.items():  # as systemd stops a unit: SIGTERM to its whole group
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for name, process in processes.items():
            try:
                stopped[name] = process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        for log in logs.values():
            log.close()
        _drop_queue(queue)
    assert set(stopped) == set(processes), "not every process stopped within 30 s of SIGTERM"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthz(port: int) -> dict | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()
    except (OSError, ValueError):
        return None  # not listening yet


def _drop_queue(name: str) -> None:
    from redis import Redis
    from rq import Queue

    from tests.test_rq import drop_queue
    drop_queue(Queue(name, connection=Redis.from_url(REDIS_URL)))
