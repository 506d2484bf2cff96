"""Fixtures: the app on a fresh database (SQLite always; PostgreSQL and MariaDB where asked), a signed
bridge client, an injected clock, a fake WHMCS API, and no network but loopback."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import socket
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from app import create_app
from bridge.signing import signed_headers
from core.extensions import db as _db

PG_ADMIN_URL = os.environ.get("PKVM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN_URL = os.environ.get("PKVM_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/")


# ----------------------------------------------------------------------------- network guard

_real_connect = socket.socket.connect


def _loopback_only(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        host = address[0]
        try:
            allowed = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            allowed = host == "localhost"
        if not allowed:
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {host}")
    return _real_connect(self, address)


@pytest.fixture(scope="session", autouse=True)
def compiled_catalogs():
    """The .mo files the panel reads (compiled at install and here, never committed)."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "babel.messages.frontend", "compile", "-d", "translations"],
                   cwd=root, check=False, capture_output=True)


_real_getaddrinfo = socket.getaddrinfo


def _resolve_loopback_only(host, *args, **kwargs):
    """No name lookups leave the machine: only literal addresses and localhost resolve."""
    name = host.decode() if isinstance(host, bytes) else str(host or "")
    if name not in ("localhost", ""):
        try:
            ipaddress.ip_address(name.split("%")[0])
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, f"tests resolve no names ({name})") from None
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)
    monkeypatch.setattr(socket, "getaddrinfo", _resolve_loopback_only)


# ----------------------------------------------------------------------------- clock

class FakeClock:
    """Time that moves only when told to (or when the code under test sleeps)."""

    def __init__(self, start: datetime | None = None):
        self._now = start or datetime(2026, 4, 10, 3, 49, 18)
        self._mono = 1000.0
        self.slept = 0.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        self.slept += seconds

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


@pytest.fixture
def clock():
    return FakeClock()


# ----------------------------------------------------------------------------- databases

def _server_database(admin_url: str, kind: str) -> str | None:
    """A fresh database on a local server, or None when the server does not answer."""
    name = f"pkvm_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()
    except Exception:  # noqa: BLE001 - the server is not there
        return None
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}" + ("?charset=utf8mb4" if kind == "mysql" else "")


def _drop(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?")[0]
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if admin_url.startswith("postgresql"):
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        else:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
    engine.dispose()


def database_url(kind: str, tmp_path) -> tuple[str, callable]:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite3'}", lambda: None
    admin = PG_ADMIN_URL if kind == "postgresql" else MYSQL_ADMIN_URL
    url = _server_database(admin, kind)
    if url is None:
        if os.environ.get("CI"):
            pytest.fail(f"{kind} is not reachable on its standard local port (CI must provide it)")
        pytest.skip(f"{kind} is not reachable on its standard local port")
    return url, lambda: _drop(admin, url)


def make_app(tmp_path, db_url: str, **extra):
    config = {"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"), "SQLALCHEMY_DATABASE_URI": db_url,
              "TICKER_SECONDS": 0, "TASK_POLL_SECONDS": 1.0, "REDIS_URL": None, "WTF_CSRF_ENABLED": True}
    config.update(extra)
    app = create_app(config)
    with app.app_context():
        _db.create_all()
    return app


@pytest.fixture
def app(tmp_path):
    app = make_app(tmp_path, f"sqlite:///{tmp_path / 'test.sqlite3'}")
    with app.app_context():
        yield app
        _db.session.remove()
        _db.engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def any_db_app(request, tmp_path):
    """The app on each of the three backends in turn."""
    url, drop = database_url(request.param, tmp_path)
    app = make_app(tmp_path, url)
    try:
        with app.app_context():
            yield app
            _db.session.remove()
            _db.engine.dispose()
    finally:
        drop()


class FreshContextClient(FlaskClient):
    """Each request sees what a real one does: the tests keep an app context open for database access,
    which Flask reuses for requests, so per-request state kept in ``g`` (the logged-in admin) is cleared."""

    def open(self, *args, **kwargs):
        from flask import g
        from flask_babel import refresh
        g.pop("_login_user", None)
        g.pop("csrf_token", None)  # Flask-WTF's token of the previous request's session
        refresh()  # the locale chosen for the previous request
        return super().open(*args, **kwargs)


@pytest.fixture
def client(app):
    app.test_client_class = FreshContextClient
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


# ----------------------------------------------------------------------------- bridge

class Bridge:
    """Signs calls exactly as the PHP shim does."""

    def __init__(self, app, client):
        self.app, self.client = app, client

    def call(self, function: str, params, *, secret: str | None = None, headers: dict | None = None,
             raw: bytes | None = None, now: float | None = None):
        body = raw if raw is not None else json.dumps(params).encode()
        path = f"/bridge/v1/module/{function}"
        signed = signed_headers(secret or self.app.config["BRIDGE_SECRET"], "POST", path, body, now=now)
        if headers is not None:
            signed = headers
        return self.client.post(path, data=body, headers=signed)


@pytest.fixture
def bridge(app, client):
    return Bridge(app, client)


# ----------------------------------------------------------------------------- WHMCS API

class FakeWhmcs:
    """includes/api.php as its documentation describes it: identifier/secret, action, responsetype=json."""

    def __init__(self, identifier="api-id", secret="api-secret"):
        self.identifier, self.secret = identifier, secret
        self.calls: list[dict] = []
        self.fail_with: str | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if form.get("identifier") != fake.identifier or form.get("secret") != fake.secret:
                    body = {"result": "error", "message": "Authentication Failed"}
                elif fake.fail_with:
                    body = {"result": "error", "message": fake.fail_with}
                else:
                    fake.calls.append(form)
                    body = {"result": "success"}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/includes/api.php"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def emails(self) -> list[str]:
        return [c["messagename"] for c in self.calls if c.get("action") == "SendEmail"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def whmcs_api(app):
    from core import settings
    fake = FakeWhmcs()
    settings.update({"whmcs_api_url": fake.url, "whmcs_api_identifier": fake.identifier,
                     "whmcs_api_secret": fake.secret})
    yield fake
    fake.close()


# ----------------------------------------------------------------------------- Proxmox (fakepve)

class ServedCluster:
    """A demo cluster (fakepve extended like real PVE) served over HTTPS on 127.0.0.1."""

    def __init__(self, pve, info: dict, cafile: str):
        self.pve, self.info, self.cafile = pve, info, cafile

    @property
    def port(self) -> int:
        return self.pve.port

    def bodies(self) -> list[str]:
        return [body.decode(errors="replace") if isinstance(body, bytes) else str(body)
                for _method, _path, body in self.pve.requests]


@pytest.fixture(scope="session")
def _pki(tmp_path_factory):
    from fakepve.certs import make_cert
    return make_cert(str(tmp_path_factory.mktemp("pki")), hosts=("127.0.0.1",))[:2]


@pytest.fixture
def cluster(request, _pki):
    """A fresh two-node cluster with the demo templates; tasks finish at once unless marked
    ``@pytest.mark.time_scale(x)``."""
    from fakepve.pytest_plugin import _Serving

    from demo.pve_cluster import Cluster, build_demo
    marker = request.node.get_closest_marker("time_scale")
    pve = Cluster(user="root@pam", password="secret", host="127.0.0.1", port=0)
    pve.time_scale = marker.args[0] if marker else 0
    info = build_demo(pve, token_id="root@pam!pkvm", token_secret="pkvm-token-secret")
    serving = _Serving(pve, *_pki)
    try:
        yield ServedCluster(pve, info, _pki[0])
    finally:
        serving.stop()


def hold_tasks(pve, task_type: str) -> threading.Event:
    """Make every task of ``task_type`` (qmdestroy, ...) on ``pve`` keep running, before it does anything,
    until the returned event is set, so a test can see it in progress whatever the machine's speed (the
    cluster needs a non-zero time_scale, which runs tasks in the background)."""
    released = threading.Event()
    start_task = pve.task

    async def task(node, ttype, tid, user, body, **kwargs):
        if ttype == task_type:
            work = body

            async def body():
                while not released.is_set():
                    await asyncio.sleep(0.01)
                return await work()
        return await start_task(node, ttype, tid, user, body, **kwargs)

    pve.task = task
    return released


def hold_migrations(pve) -> threading.Event:
    """Like hold_tasks(pve, "qmigrate"), but the hold is inside the migration, where Proxmox has locked the
    VM ("migrate") and moves its disks."""
    released = threading.Event()
    scaled_pause = pve.pause

    async def pause(secs):
        if secs == pve.migrate_secs:
            while not released.is_set():
                await asyncio.sleep(0.01)
        else:
            await scaled_pause(secs)

    pve.pause = pause
    return released


def finish_migrations(pve, released: threading.Event, timeout: float = 10) -> None:
    """Let the held migrations end, and wait until Proxmox reports them stopped."""
    import time
    released.set()
    deadline = time.monotonic() + timeout
    while any(t["type"] == "qmigrate" and t["status"] == "running" for t in list(pve.tasks.values())):
        assert time.monotonic() < deadline, "a migration did not finish"
        time.sleep(0.01)


def one_vm(status: str = "ready", service_id: int = 7) -> None:
    """The smallest consistent fleet: one server, client, product and service, and its VM row."""
    from core.models import VM, Client, Product, Server, Service
    _db.session.add_all([Server(id=1, name="s", hostname="h", token_id="a@pam!t", token_secret="x"),
                         Client(id=1), Product(id=1, name="p", settings={})])
    _db.session.flush()
    _db.session.add(Service(id=service_id, client_id=1, product_id=1, server_id=1, status="Active"))
    _db.session.flush()
    _db.session.add(VM(service_id=service_id, server_id=1, name="vm", status=status))
    _db.session.commit()


def register_cluster(cluster: ServedCluster, server_id: int = 1, pools: bool = True, **product) -> None:
    """Store the served cluster as a server with IPv4/IPv6 pools and product 1, as the panel would."""
    from pathlib import Path

    from core.accounts import ServerParams, upsert_server
    from core.models import IPPool, Product
    upsert_server(ServerParams(id=server_id, name="cluster", hostname="127.0.0.1", ip="127.0.0.1",
                               port=cluster.port, token_id=cluster.info["token_id"],
                               token_secret=cluster.info["token_secret"], verify_tls=True,
                               ca_pem=Path(cluster.cafile).read_text(), assigned_ips=""))
    if pools:
        _db.session.add_all([
            IPPool(server_id=server_id, family=4, bridge="vmbr1", vlan=30, gateway="192.0.2.1", mask=24,
                   dns1="192.0.2.53", dns2="", first="192.0.2.10", last="192.0.2.250"),
            IPPool(server_id=server_id, family=6, bridge="vmbr1", vlan=30, gateway="2001:db8::1", mask=64,
                   dns1="", dns2="2001:db8::53", first="2001:db8::10", last="2001:db8::ffff"),
        ])
    settings = {"template_vmid": 9000, "template_node": "pve1", "email_welcome": "", "email_vm_ready": ""}
    settings.update(product)
    _db.session.add(Product(id=1, name="VPS Start", settings=settings))
    _db.session.commit()


def account_params(cluster: ServedCluster, service_id: int, server_id: int = 1, **extra) -> dict:
    from pathlib import Path
    base = {"serviceid": service_id, "userid": 7, "pid": 1, "serverid": server_id, "productname": "VPS Start",
            "domain": "", "username": "root", "password": f"Pw-{service_id}-secret", "status": "Active",
            "serverhostname": "127.0.0.1", "serverport": cluster.port,
            "serverusername": cluster.info["token_id"], "serverpassword": cluster.info["token_secret"],
            "serveraccesshash": Path(cluster.cafile).read_text(),
            "clientsdetails": {"firstname": "Ada", "lastname": "Client", "email": "ada@example.com"},
            "customfields": {"SSH Key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA ada@laptop"}}
    base.update(extra)
    return base


def paused_deploy(bridge, cluster, clock, method: str, path: str, message: str, service_id: int = 5546):
    """A CreateAccount whose deploy fails once at ``method path`` and waits at that step (its VM row)."""
    from core.models import VM
    from jobs.cron import run_tick
    from jobs.pipeline import Output
    bridge.call("CreateAccount", account_params(cluster, service_id))
    cluster.pve.fail(method, path, 500, message, times=1)
    run_tick(Output([].append, clock))
    vm = _db.session.get(VM, service_id)
    _db.session.refresh(vm)
    return vm
