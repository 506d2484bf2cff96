"""Test peers for the DNS providers the product publishes A/AAAA/PTR records to.

- `PowerDns` (tests/dnspeers/powerdns.py): a real PowerDNS Authoritative 4.7 server (Debian's
  pdns-server + pdns-backend-sqlite3) in a temp dir, with its HTTP API and its DNS port on 127.0.0.1.
- `FakeCloudflare` (tests/dnspeers/cloudflare.py): Cloudflare API v4 DNS endpoints, stateful, real HTTP.
- `FakeHestia` (tests/dnspeers/hestia.py): HestiaCP's `POST /api/` with the DNS v-* commands.

Fixtures: a test module imports them by name (pytest finds fixtures in the module's namespace;
`pytest_plugins` is only allowed in the root conftest):

    from tests.dnspeers import cloudflare, hestia, powerdns  # noqa: F401 - pytest fixtures

    def test_publish(powerdns, cloudflare, hestia):
        powerdns.create_zone("example.com")
        ...

Those three names are the fixtures, not the submodules: for the classes use
`from tests.dnspeers import PowerDns, FakeCloudflare, FakeHestia` (or `from tests.dnspeers.powerdns
import PowerDns`; avoid `import tests.dnspeers.powerdns as m`, which resolves to the fixture).

- `powerdns`: a fresh server per test (start-up measured at ~0.1 s, so no sharing or clean-up
  between tests is needed); stopped and its directory removed afterwards. No zones yet: call
  `powerdns.create_zone(...)`. When pdns_server is not installed the test is skipped, except under
  CI=true, where it fails.
- `cloudflare`: a FakeCloudflare holding the zones in `CLOUDFLARE_ZONES` (ids fixed below), no records.
- `hestia`: a FakeHestia whose user `admin` owns the domains in `HESTIA_DOMAINS`, each as Hestia's
  default template leaves it (two NS records; the forward zone also an apex A record).
"""
from __future__ import annotations

import os

import pytest

from .cloudflare import FakeCloudflare
from .hestia import FakeHestia
from .powerdns import PowerDns, PowerDnsUnavailable

__all__ = ["PowerDns", "PowerDnsUnavailable", "FakeCloudflare", "FakeHestia", "start_powerdns",
           "powerdns", "cloudflare", "hestia", "CLOUDFLARE_ZONES", "HESTIA_DOMAINS"]

# Zone ids have the shape Cloudflare uses (32 hex digits).
CLOUDFLARE_ZONES = {
    "023e105f4ecef8ad9ca31a8372d0c353": "example.com",
    "9a7806061c88ada191ed06f989cc3dac": "2.0.192.in-addr.arpa",
    "c0ffee00c0ffee00c0ffee00c0ffee00": "8.b.d.0.1.0.0.2.ip6.arpa",
}
HESTIA_DOMAINS = ["example.com", "2.0.192.in-addr.arpa", "8.b.d.0.1.0.0.2.ip6.arpa"]


def start_powerdns(**kwargs) -> PowerDns:
    """Start a PowerDNS server, or skip the test when it is not installed (fail under CI=true)."""
    try:
        return PowerDns.start(**kwargs)
    except PowerDnsUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{exc}; CI must install pdns-server, pdns-backend-sqlite3 and dnsutils")
        pytest.skip(str(exc))


@pytest.fixture
def powerdns():
    server = start_powerdns()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cloudflare():
    fake = FakeCloudflare(dict(CLOUDFLARE_ZONES))
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def hestia():
    fake = FakeHestia({"admin": list(HESTIA_DOMAINS)})
    try:
        yield fake
    finally:
        fake.close()
