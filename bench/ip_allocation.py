"""IP allocation: the time of ``core.ipam.allocate`` for one address, by pool size and fill, on SQLite and
PostgreSQL.

    python bench/ip_allocation.py [--allocations 200] [--used 60000] [--backends sqlite,postgresql]

Per backend (SQLite: a file in a temporary folder, as the default install; PostgreSQL: a fresh database,
dropped afterwards), one server per pool so each allocation sees exactly one pool:

    IPv4 /16   10.0.0.0/16, gateway 10.0.0.1, addresses 10.0.0.2 .. 10.0.255.254
    IPv6 /64   2001:db8:0:1::/64, gateway ::1, addresses ::2 .. ::ffff:ffff:ffff:ffff
    IPv4 /29   192.0.2.0/29, gateway .1, addresses .2 .. .6 (the baseline: the smallest useful pool)
    IPv6 /64   2001:db8:0:2::/64, empty

--used (60,000) addresses of the /16 and of the first /64 are bulk-inserted (SQLAlchemy core, batches of
5,000, keys from core.ipam.address_key), one per service, from the first address up, as allocation leaves
them. Cases, each --allocations (200) times for a new service, every call timed on its own (wall and CPU):

    IPv4 /29 empty          the first address of an empty pool (the row is deleted and the cursor cleared
                            after each call, untimed)
    IPv6 /64 empty          the same in an empty /64
    IPv4 /16, cursor set    60,000 in use, the pool cursor just past them (as allocation leaves it)
    IPv4 /16, cursor unset  60,000 in use, the cursor cleared before each call (a pool filled by an import
                            or from before the cursor existed): the search starts at the first address
    IPv6 /64, cursor set / unset   the same in the /64
    IPv4 /16, handed back   60,000 in use; rounds of: 10 services release their address (untimed), then 10
                            new services allocate (timed): each takes a handed-back address

Every allocation is checked (a new, distinct address in the pool). Target: under 5 ms each. The ratio of
the IPv6 /64 time to the IPv4 /29 time shows whether the cost grows with the size of the pool.
Timing is measured and printed, never asserted.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PgDatabase, mean, percentile, table  # noqa: E402

POOLS = {
    # name: (server id, family, network, gateway, first, last)
    "v4_16": (1, 4, "10.0.0.0/16", "10.0.0.1", "10.0.0.2", "10.0.255.254"),
    "v6_64": (2, 6, "2001:db8:0:1::/64", "2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff:ffff:ffff:ffff"),
    "v4_29": (3, 4, "192.0.2.0/29", "192.0.2.1", "192.0.2.2", "192.0.2.6"),
    "v6_64_empty": (4, 6, "2001:db8:0:2::/64", "2001:db8:0:2::1", "2001:db8:0:2::2",
                    "2001:db8:0:2:ffff:ffff:ffff:ffff"),
}
BATCH = 5000


class Bench:
    def __init__(self, kind: str, args, stack: ExitStack):
        from app import create_app
        from core.extensions import db

        self.kind, self.args = kind, args
        tmp = Path(tempfile.mkdtemp(prefix=f"pkvm-bench-ipam-{kind}-"))
        stack.callback(shutil.rmtree, tmp, True)
        if kind == "postgresql":
            database = PgDatabase()
            stack.callback(database.stop)
            uri = database.url
        else:
            uri = f"sqlite:///{tmp / 'instance' / 'pkvm.sqlite3'}"
        self.app = create_app({"INSTANCE_PATH": str(tmp / "instance"), "SQLALCHEMY_DATABASE_URI": uri,
                               "TICKER_SECONDS": 0, "REDIS_URL": None})
        self.ctx = self.app.app_context()
        self.ctx.push()
        stack.callback(self._close)
        db.create_all()
        self.next_sid = 0
        self.pool_ids: dict[str, int] = {}
        self.fill_seconds = self._fill()

    def _close(self):
        from core.extensions import db
        db.session.remove()
        db.engine.dispose()
        self.ctx.pop()

    # ----------------------------------------------------------------- data

    def _services(self, count: int) -> list[int]:
        """Insert count services (client 1, product 1, server 1) and return their ids."""
        from sqlalchemy import insert

        from core.extensions import db
        from core.models import Service
        first = self.next_sid + 1
        self.next_sid += count
        ids = list(range(first, first + count))
        for start in range(0, count, BATCH):
            db.session.execute(insert(Service.__table__), [
                {"id": sid, "client_id": 1, "product_id": 1, "server_id": 1, "domain": "", "username": "root",
                 "status": "Active", "configoptions": {}, "customfields": {}}
                for sid in ids[start:start + BATCH]])
        db.session.commit()
        return ids

    def _fill(self) -> float:
        from sqlalchemy import insert

        from core.extensions import db
        from core.ipam import address_key
        from core.models import Client, IPAddress, IPPool, Product, Server, utcnow
        began = time.perf_counter()
        db.session.add(Client(id=1, firstname="Bench"))
        db.session.add(Product(id=1, name="Bench", settings={}))
        for name, (server_id, family, network, gateway, first, last) in POOLS.items():
            db.session.add(Server(id=server_id, name=f"server-{name}", hostname="127.0.0.1"))
            db.session.flush()
            pool = IPPool(server_id=server_id, family=family, gateway=gateway, mask=int(network.split("/")[1]),
                          first=first, last=last, dns1="", dns2="")
            db.session.add(pool)
            db.session.flush()
            self.pool_ids[name] = pool.id
        db.session.commit()
        used = self.args.used
        owners = self._services(used)
        self.owners = owners
        now = utcnow()
        for name in ("v4_16", "v6_64"):
            server_id, family, _network, _gateway, first, _last = POOLS[name]
            start = int(ipaddress.ip_address(first))
            make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
            for offset in range(0, used, BATCH):
                rows = []
                for n in range(offset, min(offset + BATCH, used)):
                    addr = make(start + n)
                    rows.append({"server_id": server_id, "pool_id": self.pool_ids[name], "family": family,
                                 "address": str(addr), "key": address_key(addr), "service_id": owners[n],
                                 "position": 0, "allocated_at": now})
                db.session.execute(insert(IPAddress.__table__), rows)
            db.session.commit()
        self.cursor_after_fill = {name: address_key(
            (ipaddress.IPv4Address if POOLS[name][1] == 4 else ipaddress.IPv6Address)(
                int(ipaddress.ip_address(POOLS[name][4])) + used)) for name in ("v4_16", "v6_64")}
        for name, cursor in self.cursor_after_fill.items():
            db.session.get(IPPool, self.pool_ids[name]).cursor = cursor
        db.session.commit()
        elapsed = time.perf_counter() - began
        if self.kind == "postgresql":
            # What autovacuum does soon after a bulk load in production: statistics and a clean heap. SQLite
            # keeps no statistics unless ANALYZE runs, and the product never runs it: left as it is.
            from sqlalchemy import text
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
                conn.execute(text("CHECKPOINT"))
        return elapsed

    # ----------------------------------------------------------------- cases

    def _set_cursor(self, name: str, value: str | None) -> None:
        from sqlalchemy import update

        from core.extensions import db
        from core.models import IPPool
        db.session.execute(update(IPPool).where(IPPool.id == self.pool_ids[name]).values(cursor=value))
        db.session.commit()

    def _allocate(self, name: str, sid: int) -> tuple[float, float, str]:
        from core import ipam
        from core.extensions import db
        from core.models import Server
        server_id, family = POOLS[name][0], POOLS[name][1]
        db.session.expire_all()
        server = db.session.get(Server, server_id)
        db.session.commit()  # the Server row is read before the clock starts, as a pipeline step has it
        cpu0, wall0 = time.process_time(), time.perf_counter()
        rows = ipam.allocate(server, family, sid, 1)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        return wall, cpu, rows[0].address

    def _check(self, name: str, addresses: list[str], distinct: bool = True) -> str:
        _server, family, network, gateway, first, last = POOLS[name]
        lo, hi = int(ipaddress.ip_address(first)), int(ipaddress.ip_address(last))
        bad = [a for a in addresses if not lo <= int(ipaddress.ip_address(a)) <= hi or a == gateway]
        if bad:
            return f"outside the pool: {bad[:3]}"
        if distinct and len(set(addresses)) != len(addresses):
            return "an address was handed out twice"
        return ""

    def empty_pool(self, name: str) -> dict:
        """The first address of an empty pool, again and again."""
        from sqlalchemy import delete

        from core.extensions import db
        from core.models import IPAddress
        sids = self._services(self.args.allocations)
        walls, cpus, addresses = [], [], []
        for sid in sids:
            wall, cpu, address = self._allocate(name, sid)
            walls.append(wall)
            cpus.append(cpu)
            addresses.append(address)
            db.session.execute(delete(IPAddress).where(IPAddress.pool_id == self.pool_ids[name]))
            db.session.commit()
            self._set_cursor(name, None)
        problem = "" if set(addresses) == {POOLS[name][4]} else f"expected {POOLS[name][4]} each time"
        return {"walls": walls, "cpus": cpus, "problem": problem}

    def filled_pool(self, name: str, cursor: bool, count: int) -> dict:
        sids = self._services(count)
        walls, cpus, addresses = [], [], []
        for sid in sids:
            if not cursor:
                self._set_cursor(name, None)
            wall, cpu, address = self._allocate(name, sid)
            walls.append(wall)
            cpus.append(cpu)
            addresses.append(address)
        problem = self._check(name, addresses)
        start = int(ipaddress.ip_address(POOLS[name][4])) + self.args.used
        taken = sorted(int(ipaddress.ip_address(a)) for a in addresses)
        if not problem and taken[0] < start:
            problem = "an address in use was handed out"
        return {"walls": walls, "cpus": cpus, "problem": problem}

    def handed_back(self, name: str) -> dict:
        from core import ipam
        rng = random.Random(7)
        per_round = 10
        rounds = max(1, self.args.allocations // per_round)
        walls, cpus, released_total, problems = [], [], 0, []
        holders = list(self.owners)
        rng.shuffle(holders)
        release_walls = []
        for r in range(rounds):
            leaving = holders[r * per_round:(r + 1) * per_round]
            freed = set()
            for sid in leaving:
                for row in ipam.assigned(sid):
                    if row.family == 4:
                        freed.add(row.address)
                began = time.perf_counter()
                released_total += ipam.release(sid, family=4)
                release_walls.append(time.perf_counter() - began)
            got = []
            for sid in self._services(per_round):
                wall, cpu, address = self._allocate(name, sid)
                walls.append(wall)
                cpus.append(cpu)
                got.append(address)
            if set(got) != freed:
                problems.append(f"round {r}: took {sorted(got)[:2]}... not the {len(freed)} handed back")
        return {"walls": walls, "cpus": cpus, "problem": "; ".join(problems[:2]),
                "release": release_walls}


def run_backend(kind: str, args) -> dict:
    with ExitStack() as stack:
        bench = Bench(kind, args, stack)
        out = {"fill": bench.fill_seconds, "cases": {}}
        cases = out["cases"]
        unset = args.unset_allocations
        if args.warmup:  # untimed: connections, statement caches
            saved, args.allocations = args.allocations, args.warmup
            bench.empty_pool("v4_29")
            args.allocations = saved
        cases["IPv4 /29, empty"] = bench.empty_pool("v4_29")
        cases["IPv6 /64, empty"] = bench.empty_pool("v6_64_empty")
        cases[f"IPv4 /16, {args.used:,} used, cursor set"] = bench.filled_pool("v4_16", True, args.allocations)
        cases[f"IPv4 /16, {args.used:,} used, cursor unset"] = bench.filled_pool("v4_16", False, unset)
        cases[f"IPv6 /64, {args.used:,} used, cursor set"] = bench.filled_pool("v6_64", True, args.allocations)
        cases[f"IPv6 /64, {args.used:,} used, cursor unset"] = bench.filled_pool("v6_64", False, unset)
        cases[f"IPv4 /16, {args.used:,} used, handed back"] = bench.handed_back("v4_16")
        return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql", help="sqlite,postgresql (default both)")
    parser.add_argument("--allocations", type=int, default=200, help="allocations per case (default 200)")
    parser.add_argument("--unset-allocations", type=int, default=50,
                        help="allocations for the cursor-unset cases, the slow ones (default 50)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed allocations first (default 20)")
    parser.add_argument("--used", type=int, default=60000, help="addresses in use in the /16 and the /64 "
                                                                  "(default 60000, at most 65000)")
    args = parser.parse_args(argv)
    if not 0 < args.used <= 65000:
        parser.error("--used must be between 1 and 65000")
    wall0 = time.perf_counter()
    print("IP allocation: core.ipam.allocate of one address for a new service, each call timed on its own")
    print(f"  {args.allocations} allocations per case ({args.unset_allocations} with the cursor unset) after "
          f"{args.warmup} untimed; {args.used:,} addresses in use in the IPv4 /16 and the IPv6 /64; target < 5 ms")
    print("  load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results = {}
    for kind in backends:
        results[kind] = run_backend(kind, args)
        print(f"  {kind}: {args.used:,} services and {2 * args.used:,} addresses inserted in "
              f"{results[kind]['fill']:.1f} s", flush=True)
    print()
    rows = []
    for kind, result in results.items():
        for case, data in result["cases"].items():
            walls, cpus = data["walls"], data["cpus"]
            rows.append([f"{kind}: {case}", len(walls), f"{mean(walls) * 1000:.2f}", f"{percentile(walls, 50) * 1000:.2f}",
                         f"{percentile(walls, 99) * 1000:.2f}", f"{max(walls) * 1000:.2f}", f"{mean(cpus) * 1000:.2f}",
                         sum(w > 0.005 for w in walls), data["problem"] or "ok"])
    print(table(["case", "allocations", "mean ms", "p50 ms", "p99 ms", "max ms", "CPU mean ms", "> 5 ms", "check"],
                rows, title="One allocation (wall time of ipam.allocate; CPU of this process)"))
    print()
    ratio_rows, fields = [], [f"used={args.used}", f"allocations={args.allocations}"]
    for kind, result in results.items():
        cases = result["cases"]
        k = "sqlite" if kind == "sqlite" else "pg"
        base = mean(cases["IPv4 /29, empty"]["walls"])
        empty6 = mean(cases["IPv6 /64, empty"]["walls"])
        full6 = mean(cases[f"IPv6 /64, {args.used:,} used, cursor set"]["walls"])
        full4 = mean(cases[f"IPv4 /16, {args.used:,} used, cursor set"]["walls"])
        unset4 = mean(cases[f"IPv4 /16, {args.used:,} used, cursor unset"]["walls"])
        unset6 = mean(cases[f"IPv6 /64, {args.used:,} used, cursor unset"]["walls"])
        back = cases[f"IPv4 /16, {args.used:,} used, handed back"]
        ratio_rows.append([kind, f"{base * 1000:.2f}", f"{empty6 / base:.2f}", f"{full6 / base:.2f}",
                           f"{full4 / base:.2f}", f"{unset4 / base:.1f}", f"{unset6 / base:.1f}",
                           f"{mean(back['walls']) / base:.2f}", f"{mean(back['release']) * 1000:.2f}"])
        fields += [f"{k}_v4_29_ms={base * 1000:.2f}", f"{k}_v6_64_empty_ms={empty6 * 1000:.2f}",
                   f"{k}_v6_64_used_ms={full6 * 1000:.2f}", f"{k}_v4_16_used_ms={full4 * 1000:.2f}",
                   f"{k}_v4_16_unset_ms={unset4 * 1000:.2f}", f"{k}_v6_64_unset_ms={unset6 * 1000:.2f}",
                   f"{k}_handed_back_ms={mean(back['walls']) * 1000:.2f}",
                   f"{k}_p99_max_ms={max(percentile(c['walls'], 99) for c in cases.values()) * 1000:.2f}",
                   f"{k}_v6_64_over_v4_29={empty6 / base:.2f}", f"{k}_v6_64_used_over_v4_29={full6 / base:.2f}"]
    print(table(["backend", "IPv4 /29 ms", "v6 /64 empty", "v6 /64 used", "v4 /16 used", "v4 /16 unset",
                 "v6 /64 unset", "handed back", "release ms"], ratio_rows,
                title="Ratios to the IPv4 /29 (empty) time: 1.0 = no dearer than the smallest pool"))
    problems = [f"{kind}: {case}: {d['problem']}" for kind, r in results.items() for case, d in r["cases"].items()
                if d["problem"]]
    if problems:
        print("  CHECK FAILED: " + "; ".join(problems))
    print("  load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"Total bench time {time.perf_counter() - wall0:.0f} s")
    fields += ["target_ms=5", f"checks={'failed' if problems else 'ok'}"]
    print("RESULT ip_allocation " + " ".join(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
