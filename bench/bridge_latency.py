"""Bridge latency: signed CreateAccount calls over real HTTP, 50 at a time, on SQLite and on PostgreSQL.

    python bench/bridge_latency.py [--concurrency 50] [--rounds 10] [--backends sqlite,postgresql]
                                   [--server werkzeug|gunicorn] [--server-workers 2] [--redis] [--floor]

For each backend a fresh product instance is served by werkzeug's threaded WSGI server in its own process
(bench/_wsgi.py: ``make_server(..., threaded=True)``, one thread per request, as ``flask serve`` does) or,
with ``--server gunicorn``, by gunicorn's pre-forked sync workers (the README's production setup), with
TICKER_SECONDS=0 and no REDIS_URL: a CreateAccount then records the client, product, server, service and
VM rows, writes the module log and only wakes the (not running) in-process ticker. With ``--redis`` it
queues the deploy as an RQ job too, as in production (no worker runs them). SQLite is the default
install (instance/pkvm.sqlite3, no DATABASE_URL); PostgreSQL gets a fresh database, dropped afterwards.

The server, IP pool and product are registered first (the product has its template, so CreateAccount
succeeds). The Proxmox address in the calls points at a TCP listener of the bench that counts connections:
it must stay at 0 (CreateAccount never talks to Proxmox).

Measured, per backend, after --warmup sequential calls:

* sequential: --sequential calls one after another (no queueing: the service time of one call);
* burst: --rounds rounds of --concurrency calls released together (all connections opened at once from
  one thread with non-blocking sockets, requests signed and built beforehand), every call for a new
  service (new client too); latency is from connect to the last byte of the answer, over a fresh
  connection per call, as the PHP shim makes them;
  throughput is calls / time from the release to the last answer of a round (mean over rounds).

With ``--floor`` the same calls go also to two apps that answer without doing anything (bench/_floor.py: a
bare WSGI callable, a bare Flask route) on the same server: what is left of the target for the product's
own work.

Also printed: the CPU per call of the server's processes (from /proc) and of this load generator, which
shares the machine's cores with them and the database. A burst's p99 is close to its makespan, which
cannot be shorter than (server + database + load generator CPU per call) x concurrency / cores.
Target: p99 under 50 ms.
Timing is measured and printed, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (REDIS_URL, PgDatabase, ProductServer, account_params, mean, percentile,  # noqa: E402
                     product_env, register_cluster, table, tree_cpu)


class CountingListener:
    """A TCP listener on 127.0.0.1 that accepts, counts and closes connections (a Proxmox that must never
    be called)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            conn.close()

    def stop(self):
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def prepare(port: int, secret: str, params: dict) -> bytes:
    """The whole HTTP request of one signed CreateAccount, as the shim's curl sends it (its headers and the
    JSON body), built before the clock starts."""
    from bridge.signing import signed_headers
    body = json.dumps(params).encode()
    path = "/bridge/v1/module/CreateAccount"
    headers = {"Host": f"127.0.0.1:{port}", "User-Agent": "puqProxmoxKVM-whmcs-shim/1.0",
               "Accept": "application/json", "Content-Length": str(len(body)),
               **signed_headers(secret, "POST", path, body)}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return head.encode() + b"\r\n" + body


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole response: its head and as many body bytes as its Content-Length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _colon, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False  # no length: the server closes the connection at the end


def _answer(data: bytes) -> tuple[int, dict]:
    head, _sep, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"raw": body[:300].decode(errors="replace")}


def send(port: int, request: bytes) -> tuple[int, dict, float, float]:
    """(status, answer, latency seconds, end time) over a fresh connection: connect, send, read the whole
    answer, close (as curl does when its handle goes away)."""
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(request)
        chunks = [b""]
        while not _complete(b"".join(chunks)) and (chunk := sock.recv(65536)):
            chunks.append(chunk)
    end = time.perf_counter()
    return (*_answer(b"".join(chunks)), end - began, end)


def burst(port: int, requests: list[bytes], timeout: float = 120) -> list[tuple[int, dict, float, float]]:
    """Send every request at once, each over its own connection, and wait for all the answers: one thread
    and non-blocking sockets, so that the load generator, which shares the machine's cores with the
    server, spends about what the shims' curl would on a call rather than a Python thread's switching.
    Latency runs from a call's connect to the last byte of its answer."""
    selector = selectors.DefaultSelector()
    results: list[tuple] = [None] * len(requests)
    for i, request in enumerate(requests):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        began = time.perf_counter()
        sock.connect_ex(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_WRITE, {"i": i, "out": memoryview(request), "in": [],
                                                         "began": began})
    deadline = time.monotonic() + timeout
    while selector.get_map() and time.monotonic() < deadline:
        for key, _events in selector.select(timeout=1):
            sock, call = key.fileobj, key.data
            try:
                if call["out"]:
                    call["out"] = call["out"][sock.send(call["out"]):]
                    if not call["out"]:
                        selector.modify(sock, selectors.EVENT_READ, call)
                    continue
                chunk = sock.recv(65536)
            except OSError as exc:
                results[call["i"]] = (0, {"error": repr(exc)}, float("nan"), time.perf_counter())
            else:
                call["in"].append(chunk)
                data = b"".join(call["in"])
                if chunk and not _complete(data):
                    continue
                end = time.perf_counter()
                results[call["i"]] = (*_answer(data), end - call["began"], end)
            selector.unregister(sock)
            sock.close()
    for key in list(selector.get_map().values()):
        results[key.data["i"]] = (0, {"error": "no answer in time"}, float("nan"), time.perf_counter())
        selector.unregister(key.fileobj)
        key.fileobj.close()
    selector.close()
    return results


class Backend:
    def __init__(self, kind: str, args, stack: ExitStack, listener: CountingListener, pki: tuple[str, str]):
        from app import create_app
        from core.extensions import db

        self.kind = kind
        self.tmp = Path(tempfile.mkdtemp(prefix=f"pkvm-bench-bridge-{kind}-"))
        stack.callback(shutil.rmtree, self.tmp, True)
        instance = self.tmp / "instance"
        if kind == "postgresql":
            database = PgDatabase()
            stack.callback(database.stop)
            uri, env_url = database.url, database.env_url
        else:
            uri, env_url = f"sqlite:///{instance / 'pkvm.sqlite3'}", None  # the default install's file
        app = create_app({"INSTANCE_PATH": str(instance), "SQLALCHEMY_DATABASE_URI": uri, "TICKER_SECONDS": 0,
                          "REDIS_URL": None})
        self.ca_pem = Path(pki[0]).read_text()
        self.info = {"host": "127.0.0.1", "port": listener.port, "token_id": "root@pam!pkvm",
                     "token_secret": "11111111-2222-3333-4444-555555555555"}
        with app.app_context():
            db.create_all()
            register_cluster(self.info, self.ca_pem)
            db.session.remove()
            db.engine.dispose()
        self.secret = app.config["BRIDGE_SECRET"]
        extra = {}
        if args.pool_size:
            # SQLAlchemy's QueuePool: the product's default is 5 connections + 10 overflow per process.
            extra["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True, "pool_size": args.pool_size,
                                                  "max_overflow": 0}
            if kind == "sqlite":
                extra["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"] = {"timeout": 60, "check_same_thread": False}
        if args.redis:
            # The production setup: each CreateAccount also queues its deploy as an RQ job (no worker runs
            # them here; the bench's queue is deleted with its jobs at the end).
            from redis import Redis
            from rq import Queue
            queue_name = f"pkvm-bench-bridge-{secrets.token_hex(4)}"
            extra.update(REDIS_URL=REDIS_URL, RQ_QUEUE=queue_name)
            stack.callback(lambda: Queue(queue_name, connection=Redis.from_url(REDIS_URL)).delete(delete_jobs=True))
        env = product_env(str(instance), env_url or "", TICKER_SECONDS=0, **extra)
        if env_url is None:
            env.pop("DATABASE_URL")
        self.server = ProductServer(env, args.server, args.server_workers)
        stack.callback(self.server.stop)
        self.app, self.uri = app, uri
        self.next_sid = 1000

    def params(self) -> dict:
        self.next_sid += 1
        sid = self.next_sid
        return account_params(self.info, self.ca_pem, sid, client_id=sid)

    def vm_rows(self) -> dict[str, int]:
        from sqlalchemy import create_engine, text
        engine = create_engine(self.uri)
        try:
            with engine.connect() as conn:
                return dict(conn.execute(text("SELECT status, count(*) FROM vm_info GROUP BY status")).all())
        finally:
            engine.dispose()


def measure(kind: str, args, port: int, server_pid: int, request: Callable[[], bytes]) -> dict:
    """Warm-up, sequential calls, then the bursts, against the server on ``port``; ``request()`` builds one
    whole signed call (a new service each time)."""
    errors: list[str] = []

    def check(status, answer):
        if status != 200 or answer.get("result") != "success" or answer.get("status") != "creation":
            errors.append(f"HTTP {status} {answer}")

    for _ in range(args.warmup):
        status, answer, _lat, _end = send(port, request())
        check(status, answer)
    sequential = []
    for _ in range(args.sequential):
        status, answer, latency, _end = send(port, request())
        check(status, answer)
        sequential.append(latency)

    latencies: list[float] = []
    throughputs: list[float] = []
    cpu0 = tree_cpu(server_pid)
    client0 = time.process_time()
    calls = 0
    for _round in range(args.rounds):
        prepared = [request() for _ in range(args.concurrency)]
        released = time.perf_counter()
        results = burst(port, prepared)
        for status, answer, latency, _end in results:
            check(status, answer)
            latencies.append(latency)
        throughputs.append(args.concurrency / (max(r[3] for r in results) - released))
        calls += args.concurrency
        time.sleep(0.2)
    return {"kind": kind, "sequential": sequential, "latencies": latencies, "throughputs": throughputs,
            "cpu_per_call": (tree_cpu(server_pid) - cpu0) / calls,
            "client_cpu_per_call": (time.process_time() - client0) / calls, "errors": errors}


def run_backend(kind: str, args, listener, pki) -> dict:
    with ExitStack() as stack:
        backend = Backend(kind, args, stack, listener, pki)
        port, secret = backend.server.port, backend.secret
        result = measure(kind, args, port, backend.server.pid, lambda: prepare(port, secret, backend.params()))
        result["vm_rows"] = backend.vm_rows()
        result["expected"] = args.warmup + args.sequential + args.rounds * args.concurrency
        return result


def run_floor(app: str, args) -> dict:
    """The same calls against bench/_floor.py's ``app`` (``bare`` or ``flask``), which answers without doing
    anything: what the server, the load generator and (for ``flask``) the framework cost by themselves."""
    server = ProductServer(product_env(tempfile.gettempdir(), ""), args.server, args.server_workers,
                           wsgi=f"bench._floor:{app}")
    try:
        params = account_params({"host": "127.0.0.1", "port": 8006, "token_id": "root@pam!pkvm",
                                 "token_secret": "floor"}, "", 1)
        return measure(f"floor: {app}", args, server.port, server.pid,
                       lambda: prepare(server.port, "floor", params))
    finally:
        server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql", help="sqlite,postgresql (default both)")
    parser.add_argument("--concurrency", type=int, default=50, help="calls released together (default 50)")
    parser.add_argument("--rounds", type=int, default=10, help="bursts per backend (default 10)")
    parser.add_argument("--sequential", type=int, default=50, help="sequential calls (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="sequential warm-up calls (default 10)")
    parser.add_argument("--server", choices=("werkzeug", "gunicorn"), default="werkzeug",
                        help="werkzeug: flask serve's threaded server (default); gunicorn: pre-forked workers")
    parser.add_argument("--server-workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--redis", action="store_true",
                        help="give the server REDIS_URL, as in production: every CreateAccount queues an RQ job")
    parser.add_argument("--floor", action="store_true",
                        help="also measure the same calls against apps that answer without doing anything "
                             "(bench/_floor.py: a bare WSGI callable and a bare Flask route) on the same server")
    parser.add_argument("--pool-size", type=int, default=0,
                        help="database connections per server process (default: the product's, 5 + 10 overflow)")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    wall0 = time.perf_counter()
    server = "werkzeug's threaded WSGI server" if args.server == "werkzeug" else \
        f"gunicorn ({args.server_workers} sync workers)"
    print(f"Bridge latency: signed CreateAccount over HTTP to {server}, "
          + ("Redis (jobs queued, no worker)" if args.redis else "no Redis") + ", no ticker")
    print(f"  per backend: {args.warmup} warm-up + {args.sequential} sequential calls, then {args.rounds} rounds of "
          f"{args.concurrency} concurrent calls (a new service and client each); target p99 < 50 ms")
    print("  load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    from fakepve.certs import make_cert
    pki_dir = tempfile.mkdtemp(prefix="pkvm-bench-bridge-pki-")
    listener = CountingListener()
    results = []
    try:
        pki = make_cert(pki_dir, name="pve", hosts=("127.0.0.1",))[:2]
        for kind in backends:
            results.append(run_backend(kind, args, listener, pki))
            r = results[-1]
            print(f"  {kind}: p99 {percentile(r['latencies'], 99) * 1000:.1f} ms", flush=True)
        for app in ("bare", "flask") if args.floor else ():
            results.append(run_floor(app, args))
            print(f"  {results[-1]['kind']}: p99 {percentile(results[-1]['latencies'], 99) * 1000:.1f} ms", flush=True)
    finally:
        listener.stop()
        shutil.rmtree(pki_dir, ignore_errors=True)
    print()
    rows = []
    for r in results:
        lat, seq = r["latencies"], r["sequential"]
        rows.append([r["kind"], len(lat), f"{percentile(lat, 50) * 1000:.1f}", f"{percentile(lat, 95) * 1000:.1f}",
                     f"{percentile(lat, 99) * 1000:.1f}", f"{max(lat) * 1000:.1f}", f"{mean(r['throughputs']):.0f}",
                     f"{percentile(seq, 50) * 1000:.1f}", f"{percentile(seq, 99) * 1000:.1f}",
                     f"{r['cpu_per_call'] * 1000:.1f}", f"{1 / r['cpu_per_call']:.0f}" if r["cpu_per_call"] else "-",
                     f"{r['client_cpu_per_call'] * 1000:.1f}",
                     len(r["errors"])])
    print(table(["backend", "calls", "p50 ms", "p95 ms", "p99 ms", "max ms", "calls/s", "seq p50 ms", "seq p99 ms",
                 "server CPU/call ms", "1/CPU calls/s", "client CPU/call ms", "errors"], rows,
                title=f"CreateAccount, {args.concurrency} concurrent (burst) and sequential (seq); target p99 < 50 ms"))
    print()
    for r in results:
        if "vm_rows" not in r:
            continue
        ok = sum(r["vm_rows"].values()) == r["expected"] and set(r["vm_rows"]) == {"creation"}
        print(f"  {r['kind']}: vm_info {r['vm_rows']} (expected {r['expected']} in creation: "
              f"{'yes' if ok else 'NO'})" + (f"; first errors: {r['errors'][:2]}" if r["errors"] else ""))
    print(f"  connections to the Proxmox address during all calls: {listener.connections}")
    print("  load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"Total bench time {time.perf_counter() - wall0:.0f} s")
    fields = [f"concurrency={args.concurrency}", f"calls_per_backend={args.rounds * args.concurrency}"]
    for r in results:
        k = {"sqlite": "sqlite", "postgresql": "pg"}.get(r["kind"]) or r["kind"].replace("floor: ", "floor_")
        lat = r["latencies"]
        fields += [f"{k}_p50_ms={percentile(lat, 50) * 1000:.1f}", f"{k}_p95_ms={percentile(lat, 95) * 1000:.1f}",
                   f"{k}_p99_ms={percentile(lat, 99) * 1000:.1f}", f"{k}_max_ms={max(lat) * 1000:.1f}",
                   f"{k}_calls_per_s={mean(r['throughputs']):.0f}",
                   f"{k}_seq_p50_ms={percentile(r['sequential'], 50) * 1000:.1f}",
                   f"{k}_cpu_per_call_ms={r['cpu_per_call'] * 1000:.1f}",
                   f"{k}_client_cpu_per_call_ms={r['client_cpu_per_call'] * 1000:.1f}",
                   f"{k}_errors={len(r['errors'])}"]
    fields += ["target_p99_ms=50", f"proxmox_connections={listener.connections}"]
    print("RESULT bridge_latency " + " ".join(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
