"""The README's first command: ``flask demo`` deploys VMs on a fake cluster started as its own process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def test_flask_demo_deploys_to_ready(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, PKVM_INSTANCE_PATH=str(tmp_path / "instance"))
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    flask = Path(sys.executable).with_name("flask")
    result = subprocess.run([str(flask), "demo", "--exit-when-ready", "--vms", "2", "--port", str(port)],
                            cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "All demo VMs are ready: 1001=ready, 1002=ready" in out
    assert "--- Deploy complete: service=1001 status=ready ---" in out
    assert '"queued":true' in out and "[+] 4. Migrate to target node" in out
    # its own database, afresh at every run, with a panel login printed (found in review: no way to log in,
    # and a second run found its VMs "ready" in the old database, on a fake cluster that no longer had them)
    assert (tmp_path / "instance" / "demo.sqlite3").exists() and not (tmp_path / "instance" / "pkvm.sqlite3").exists()
    import re
    password = re.search(r"log in as demo / (\S+)\)", out).group(1)
    again = subprocess.run([str(flask), "demo", "--exit-when-ready", "--vms", "1", "--port", str(port)],
                           cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
                           timeout=180)
    assert again.returncode == 0 and '"queued":true' in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    assert "--- Deploy complete: service=1001 status=ready ---" in again.stdout
    assert password not in again.stdout  # a fresh password each run
    assert "INFO  [alembic" not in again.stdout + again.stderr
