"""Set DNS records for one VM with 64 addresses (32 IPv4, 32 IPv6) across three zones (forward, IPv4
reverse, IPv6 reverse) on a real PowerDNS: provider API calls and wall time.

    python bench/dns_sync.py [--addresses 64] [--rounds 5]

Target: one write call per zone (PowerDNS gets every record set of a zone in one PATCH).
"""
from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import create_app  # noqa: E402
from core import dns  # noqa: E402
from core.dns.names import reverse_name  # noqa: E402
from core.extensions import db  # noqa: E402
from tests.dnspeers.powerdns import PowerDns  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = PowerDns.start()
    tmp = tempfile.mkdtemp(prefix="pkvm-dns-bench-")
    try:
        app = create_app({"INSTANCE_PATH": f"{tmp}/instance", "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp}/b.db",
                          "TICKER_SECONDS": 0})
        with app.app_context():
            db.create_all()
            for zone in ("example.com", "2.0.192.in-addr.arpa", "8.b.d.0.1.0.0.2.ip6.arpa"):
                server.create_zone(zone)
                dns.create_zone({"name": zone, "provider": "powerdns", "server_url": server.url,
                                 "api_key": server.api_key})
            half = args.addresses // 2
            addresses = [str(ipaddress.ip_address("192.0.2.10") + n) for n in range(half)]
            addresses += [str(ipaddress.ip_address("2001:db8::10") + n) for n in range(args.addresses - half)]
            target = dns.Target(1, "vps-1-1.example.com", addresses, {})
            set_times, resync_times, set_calls, resync_calls = [], [], set(), set()
            for _ in range(args.rounds):
                began = time.perf_counter()
                made = dns.set_records(target)
                set_times.append(time.perf_counter() - began)
                set_calls.add(made.calls)
                began = time.perf_counter()
                again = dns.resync(target)
                resync_times.append(time.perf_counter() - began)
                resync_calls.add(again.calls)
                assert made.errors == again.errors == 0, (made.messages, again.messages)
            assert server.records("2.0.192.in-addr.arpa", reverse_name(addresses[0]), "PTR") == \
                ["vps-1-1.example.com."]
            assert len(server.records("example.com", "vps-1-1.example.com", "A")) == half
            zones = made.zones
            print(f"{args.addresses} addresses ({half} IPv4, {args.addresses - half} IPv6), {zones} zones, "
                  f"{made.forward_ok} forward and {made.reverse_ok} reverse record sets")
            print(f"{'operation':<28} {'API calls':>9} {'calls/zone':>10} {'median ms':>10}")
            print(f"{'set records':<28} {max(set_calls):>9} {max(set_calls) / zones:>10.1f} "
                  f"{statistics.median(set_times) * 1000:>10.1f}")
            print(f"{'delete + set (resync)':<28} {max(resync_calls):>9} {max(resync_calls) / zones:>10.1f} "
                  f"{statistics.median(resync_times) * 1000:>10.1f}")
            print(f"RESULT dns_sync provider=powerdns addresses={args.addresses} zones={zones} "
                  f"set_calls={max(set_calls)} set_writes_per_zone={max(set_calls) / zones:.1f} "
                  f"set_ms={statistics.median(set_times) * 1000:.1f} resync_calls={max(resync_calls)} "
                  f"resync_ms={statistics.median(resync_times) * 1000:.1f} target_writes_per_zone=1")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
