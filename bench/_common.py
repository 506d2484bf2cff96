"""Shared helpers of the benchmarks: throw-away PostgreSQL databases, the fake cluster and the product served
as separate processes, signed bridge calls, per-process CPU from /proc, percentiles and plain tables.

Only 127.0.0.1 is ever used. Everything started here is stopped by the caller through the returned handles
(``stop()``), normally in a ``finally`` or an ``ExitStack``.
"""
from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- numbers and tables

def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between the closest ranks."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> str:
    """A plain text table: the first column left-aligned, the others right-aligned."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells):
        return "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))
    out = [title] if title else []
    out += [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in rows]
    return "\n".join(out)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


# ----------------------------------------------------------------------------- PostgreSQL

class PgDatabase:
    """A fresh PostgreSQL database on 127.0.0.1, dropped (WITH FORCE) by stop()."""

    def __init__(self, prefix: str = "pkvm_bench"):
        from sqlalchemy import create_engine, text
        self.name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
        self._admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {self.name}"))
        self.url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + self.name
        # What DATABASE_URL would hold in production (create_app maps it to the psycopg driver).
        self.env_url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"

    def stop(self) -> None:
        from sqlalchemy import text
        try:
            with self._admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"))
        finally:
            self._admin.dispose()


# ----------------------------------------------------------------------------- processes

def proc_cpu(pid: int, children: bool = True) -> float:
    """CPU seconds (user + system) of a process, plus its reaped children when asked; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    # after the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def descendants(pid: int) -> list[int]:
    """The live descendants of a process (through /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                kids = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except FileNotFoundError:
                continue
            for kid in kids:
                out.append(int(kid))
                todo.append(int(kid))
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live descendants (with their reaped ones)."""
    return proc_cpu(pid) + sum(proc_cpu(kid) for kid in descendants(pid))


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after timeout seconds; the process group too when it has its own."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class FakeCluster:
    """``python -m demo.pve_cluster`` as a separate process; info holds url, host, port, token, ca_file."""

    def __init__(self, time_scale: float, clone_secs: float = 0, migrate_secs: float | None = None,
                 start_secs: float = 0, pki_dir: str | None = None):
        cmd = [sys.executable, "-m", "demo.pve_cluster", "--port", "0", "--time-scale", str(time_scale),
               "--clone-secs", str(clone_secs), "--start-secs", str(start_secs)]
        if migrate_secs is not None:
            cmd += ["--migrate-secs", str(migrate_secs)]
        if pki_dir:
            cmd += ["--pki-dir", pki_dir]
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError("the fake cluster (python -m demo.pve_cluster) did not start")
        self.info = json.loads(line)
        self.ca_pem = Path(self.info["ca_file"]).read_text()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)


class ProductServer:
    """The product (app.create_app) served in its own process(es); the environment carries the
    configuration, as for workers. ``werkzeug``: its threaded WSGI server, one process, as ``flask serve``
    runs it (``python bench/_wsgi.py``). ``gunicorn``: gunicorn's pre-forked sync workers (``workers`` of
    them), ``gunicorn -w N 'app:create_app()'``, the production setup with Redis. ``wsgi``: another app to
    serve the same way (bench/_floor.py's)."""

    def __init__(self, env: dict[str, str], server: str = "werkzeug", workers: int = 2,
                 wsgi: str = "app:create_app()"):
        if server == "gunicorn":
            import socket
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            self.proc = subprocess.Popen([venv_bin("gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{self.port}",
                                          "--log-level", "warning", wsgi], cwd=str(ROOT), env=env)
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        stop_process(self.proc)
                        raise RuntimeError("gunicorn did not start") from None
                    time.sleep(0.1)
            return
        spec = [] if wsgi == "app:create_app()" else [wsgi]
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_wsgi.py"), *spec], cwd=str(ROOT),
                                     env=env, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError("the product server (bench/_wsgi.py) did not start")
        self.port = json.loads(line)["port"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)


def product_env(instance_path: str, database_url: str, **pkvm: Any) -> dict[str, str]:
    """The environment of a product process: PKVM_INSTANCE_PATH, DATABASE_URL and PKVM_<NAME> settings
    (values JSON-encoded, as Flask's from_prefixed_env parses them). REDIS_URL only when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "PKVM_"))
           and k not in ("DATABASE_URL", "REDIS_URL")}
    env["PKVM_INSTANCE_PATH"] = instance_path
    env["DATABASE_URL"] = database_url
    env["PYTHONPATH"] = str(ROOT)
    redis_url = pkvm.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    for key, value in pkvm.items():
        env[f"PKVM_{key}"] = value if isinstance(value, str) and not _is_jsonish(value) else json.dumps(value)
    return env


def _is_jsonish(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- the product

def product_settings(**extra: Any) -> dict[str, Any]:
    """The benchmark product: the demo's VPS (template 9000 on pve1, two disks, IPv4 + IPv6, firewall,
    cloud-init), without emails (no WHMCS API here). Disks go to the shared nfs-vm storage, whose 2 TiB
    hold the N VMs of a run (local-lvm's 400 GiB hold 13 demo VMs)."""
    settings = {"template_vmid": 9000, "template_node": "pve1", "target_node": "", "clone_mode": "full",
                "cpu_cores": 2, "ram_mb": 2048, "system_disk_storage": "nfs-vm", "system_disk_gb": 20,
                "system_disk_mbps_rd": 200, "system_disk_mbps_wr": 100, "additional_disk_storage": "nfs-vm",
                "additional_disk_gb": 10, "ipv4_count": 1, "ipv6_count": 1, "main_domain": "demo.example",
                "email_welcome": "", "email_vm_ready": ""}
    settings.update(extra)
    return settings


def register_cluster(info: dict, ca_pem: str, server_id: int = 1, product_id: int = 1,
                     v4: tuple[str, str, str, int] = ("192.0.2.1", "192.0.2.10", "192.0.2.250", 24),
                     v6: tuple[str, str, str, int] | None = ("2001:db8::1", "2001:db8::10", "2001:db8::ffff", 64),
                     **product: Any) -> None:
    """Store the cluster as WHMCS server ``server_id`` with one IPv4 (and one IPv6) pool and the product,
    as the panel would (inside an app context)."""
    from core.accounts import ServerParams, upsert_server
    from core.extensions import db
    from core.models import IPPool, Product
    upsert_server(ServerParams(id=server_id, name="bench-cluster", hostname=info["host"], ip=info["host"],
                               port=info["port"], token_id=info["token_id"], token_secret=info["token_secret"],
                               verify_tls=True, ca_pem=ca_pem, assigned_ips=""))
    gateway, first, last, mask = v4
    db.session.add(IPPool(server_id=server_id, family=4, bridge="vmbr0", vlan=0, gateway=gateway, mask=mask,
                          dns1="192.0.2.53", dns2="", first=first, last=last))
    if v6:
        gateway, first, last, mask = v6
        db.session.add(IPPool(server_id=server_id, family=6, bridge="vmbr0", vlan=0, gateway=gateway, mask=mask,
                              dns1="2001:db8::53", dns2="", first=first, last=last))
    db.session.add(Product(id=product_id, name="VPS Bench", settings=product_settings(**product)))
    db.session.commit()


def account_params(info: dict, ca_pem: str, service_id: int, client_id: int = 7, server_id: int = 1,
                   product_id: int = 1) -> dict:
    """WHMCS's $params of a CreateAccount for the registered cluster and product."""
    return {"serviceid": service_id, "userid": client_id, "pid": product_id, "serverid": server_id,
            "productname": "VPS Bench", "domain": f"vps{service_id}.demo.example", "username": "root",
            "password": f"Pw-{service_id}-{secrets.token_hex(4)}", "status": "Active",
            "serverhostname": info["host"], "serverip": info["host"], "serverport": info["port"],
            "serverusername": info["token_id"], "serverpassword": info["token_secret"],
            "serveraccesshash": ca_pem,
            "clientsdetails": {"firstname": "Bench", "lastname": "Client", "email": "bench@example.com"},
            "customfields": {"SSH Key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA bench@host"}}


def signed_call(port: int, secret: str, function: str, params: dict, timeout: float = 60) -> tuple[int, dict, float]:
    """One signed bridge call over a fresh HTTP connection, as the PHP shim makes it:
    (HTTP status, JSON answer, seconds from connect to the last byte of the answer)."""
    from bridge.signing import signed_headers
    body = json.dumps(params).encode()
    path = f"/bridge/v1/module/{function}"
    headers = signed_headers(secret, "POST", path, body)
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
    finally:
        conn.close()
    elapsed = time.perf_counter() - began
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = {"raw": data[:500].decode(errors="replace")}
    return answer.status, parsed, elapsed


def base_service_id() -> int:
    """A random base for service ids, so RQ job ids (vm-<service id>, global in Redis) never meet those of
    another run or of the test suite."""
    return 10_000_000 + secrets.randbelow(1_000_000) * 1000
