"""VM Management and /api/v1/vms with 10,000 VMs and 50,000 addresses: server time per page (p50/p95) and
the number of SQL queries per page, which must not grow with the rows shown.

    python bench/panel_pages.py [--vms 10000] [--ips 50000] [--backend sqlite|postgresql] [--rounds 30]

Target: p95 under 100 ms; queries per page constant (the same for 10 and 200 rows per page).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, event, insert, text  # noqa: E402

from app import create_app  # noqa: E402
from core import admins  # noqa: E402
from core.extensions import db  # noqa: E402
from core.models import VM, Client, IPAddress, IPPool, Product, Server, Service  # noqa: E402

STATUSES = ["ready"] * 8 + ["set_cloudinit", "clone", "error_terminate", "remove", "change_package"]


def database(backend: str, tmp: str) -> tuple[str, callable]:
    if backend == "sqlite":
        return f"sqlite:///{tmp}/bench.sqlite3", lambda: None
    name = f"pkvm_bench_{secrets.token_hex(4)}"
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def seed(vms: int, ips: int) -> None:
    db.session.add(Server(id=1, name="pve-waw1", hostname="10.0.0.1", token_id="root@pam!t"))
    db.session.add_all(Client(id=n, firstname=f"Client{n}", lastname=f"Name{n}") for n in range(1, 501))
    db.session.add_all(Product(id=n, name=f"VPS {n}", settings={}) for n in range(1, 6))
    db.session.add(IPPool(id=1, server_id=1, family=4, gateway="10.64.0.1", mask=10, first="10.64.0.2",
                          last="10.127.255.254"))
    db.session.commit()
    db.session.execute(insert(Service), [dict(id=s, client_id=1 + s % 500, product_id=1 + s % 5, server_id=1,
                                               status="Terminated" if s % 13 == 0 else "Active")
                                          for s in range(1, vms + 1)])
    db.session.execute(insert(VM), [dict(service_id=s, server_id=1, vmid=1000 + s, name=f"vps-{s}",
                                          status=STATUSES[s % len(STATUSES)], rev_dns={})
                                     for s in range(1, vms + 1)])
    hosts = ipaddress.ip_network("10.64.0.0/10").hosts()
    next(hosts)
    rows = []
    for n, addr in zip(range(ips), hosts):
        rows.append(dict(server_id=1, pool_id=1, family=4, address=str(addr), key=f"{int(addr):08x}",
                         service_id=1 + n % vms, position=n // vms))
    for start in range(0, len(rows), 5000):
        db.session.execute(insert(IPAddress), rows[start:start + 5000])
    db.session.commit()


def measure(client, url: str, headers: dict, rounds: int, counter: list) -> tuple[float, float, int]:
    times, queries = [], []
    client.get(url, headers=headers)  # warm: templates compiled, caches filled
    for _ in range(rounds):
        counter[0] = 0
        began = time.perf_counter()
        answer = client.get(url, headers=headers)
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200, (url, answer.status_code)
        queries.append(counter[0])
    times.sort()
    return statistics.median(times), times[max(0, round(len(times) * 0.95) - 1)], statistics.mode(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--ips", type=int, default=50000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="pkvm-bench-")
    url, drop = database(args.backend, tmp)
    try:
        app = create_app({"INSTANCE_PATH": os.path.join(tmp, "instance"), "SQLALCHEMY_DATABASE_URI": url,
                          "TICKER_SECONDS": 0, "WTF_CSRF_ENABLED": False})
        with app.app_context():
            db.create_all()
            began = time.perf_counter()
            seed(args.vms, args.ips)
            print(f"seeded {args.vms} VMs and {args.ips} addresses on {args.backend} in "
                  f"{time.perf_counter() - began:.1f}s")
            admins.create_admin("bench", "bench-password-long")
            token = admins.create_token("bench")
            counter = [0]
            event.listen(db.engine, "before_cursor_execute", lambda *a: counter.__setitem__(0, counter[0] + 1))
        client = app.test_client()
        with app.app_context():
            login = client.post("/login", data={"username": "bench", "password": "bench-password-long"})
            assert login.status_code == 302, login.status_code
        bearer = {"Authorization": f"Bearer {token}"}
        cases = [
            ("panel /vms page 1 (25 rows)", "/vms?per_page=25", {}),
            ("panel /vms page 200 (25 rows)", "/vms?page=200&per_page=25", {}),
            ("panel /vms 200 rows", "/vms?per_page=200", {}),
            ("panel /vms 10 rows (the default)", "/vms", {}),
            ("panel /vms filter ready", "/vms?vm_status=ready&service_status=Active", {}),
            ("panel /vms search name", "/vms?q=vps-777", {}),
            ("panel /vms search IP", "/vms?q=10.64.3.7", {}),
            ("panel /vms sort by client", "/vms?sort=client&dir=asc", {}),
            ("api /api/v1/vms (25)", "/api/v1/vms", bearer),
            ("api /api/v1/vms (200)", "/api/v1/vms?per_page=200", bearer),
            ("api /api/v1/vms search", "/api/v1/vms?q=Client42", bearer),
        ]
        print(f"{'page':<34} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8}")
        worst, counts = 0.0, {}
        for label, path, headers in cases:
            p50, p95, queries = measure(client, path, headers, args.rounds, counter)
            worst = max(worst, p95)
            counts[label] = queries
            print(f"{label:<34} {p50:8.1f} {p95:8.1f} {queries:8d}")
        constant = counts["panel /vms 10 rows (the default)"] == counts["panel /vms 200 rows"] and \
            counts["api /api/v1/vms (25)"] == counts["api /api/v1/vms (200)"]
        print(f"RESULT panel_pages backend={args.backend} vms={args.vms} ips={args.ips} worst_p95_ms={worst:.1f} "
              f"target_p95_ms=100 queries_constant={'yes' if constant else 'no'}")
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        drop()


if __name__ == "__main__":
    main()
