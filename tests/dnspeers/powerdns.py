"""A real PowerDNS Authoritative server (Debian's pdns-server + pdns-backend-sqlite3) for tests.

    server = PowerDns.start()        # fresh temp dir, SQLite DB, free ports, random API key
    server.create_zone("example.test")            # Native zone, SOA + NS, via the HTTP API
    requests.patch(server.zone_url("example.test"), headers=server.headers, json={...})
    server.rrsets("example.test")                 # what the API says now
    server.dig("www.example.test", "A")           # what the DNS port answers (dig +short)
    server.stop()

Facts observed with PowerDNS 4.7.3 (see tests/test_dnspeers.py, which asserts each of them):
- names (and PTR/CNAME/NS content) must end with a dot; a missing dot on a name gives
  422 `{"error": "DNS Name 'www.example.test' is not canonical"}` and on PTR content
  422 `{"error": "Record 1.2.0.192.in-addr.arpa./PTR 'host.example.test': Not in expected format
  (parsed as 'host.example.test.')"}` -- 422 errors are JSON;
- a wrong/missing X-API-Key gives 401 `Unauthorized`, an unknown zone 404 `Not Found`, creating a zone
  that exists 409 `Conflict`, a body that is not JSON 400 `Bad Request`: all text/plain, not JSON;
- PATCH answers 204 with an empty body; DELETE of an rrset that does not exist is also 204;
- the zone id in URLs may be given with or without the trailing dot.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import secrets
from pathlib import Path

import requests

SCHEMA = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")
DEFAULT_NAMESERVERS = ("ns1.example.net.", "ns2.example.net.")


class PowerDnsUnavailable(RuntimeError):
    """pdns_server (or its SQLite backend) is not installed here."""


def pdns_binary() -> str | None:
    return shutil.which("pdns_server") or (
        "/usr/sbin/pdns_server" if os.access("/usr/sbin/pdns_server", os.X_OK) else None)


def canonical(name: str) -> str:
    """`example.test` -> `example.test.` (PowerDNS wants absolute names)."""
    return name if name.endswith(".") else name + "."


def _free_port(udp_too: bool = False) -> int:
    """A port free on 127.0.0.1 for TCP (and UDP when asked), as the kernel hands it out."""
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            if udp_too:
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                finally:
                    udp.close()
            return port
        finally:
            tcp.close()
    raise RuntimeError("no free port on 127.0.0.1")


class PowerDns:
    """One pdns_server process with its own config dir, SQLite DB, DNS port and API port."""

    def __init__(self, *, api_key: str | None = None, drop_privileges: bool | None = None,
                 extra_config: dict[str, str] | None = None):
        binary = pdns_binary()
        if binary is None:
            raise PowerDnsUnavailable("pdns_server is not installed "
                                      "(apt-get install -y pdns-server pdns-backend-sqlite3)")
        if not SCHEMA.exists():
            raise PowerDnsUnavailable(f"{SCHEMA} is missing (apt-get install -y pdns-backend-sqlite3)")
        self.binary = binary
        self.api_key = api_key or secrets.token_hex(16)
        self.extra_config = dict(extra_config or {})
        if drop_privileges is None:
            drop_privileges = os.geteuid() == 0 and _has_user("pdns")
        self.drop_privileges = drop_privileges
        self.dir: Path | None = None
        self.dns_port = 0
        self.api_port = 0
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log = None

    # ------------------------------------------------------------------ life cycle

    @classmethod
    def start(cls, **kwargs) -> "PowerDns":
        server = cls(**kwargs)
        server._start()
        return server

    def _start(self, timeout: float = 15.0) -> None:
        began = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="pdns-"))
        db = self.dir / "pdns.sqlite3"
        with sqlite3.connect(db) as conn:
            conn.executescript(SCHEMA.read_text())
        last_error = ""
        for attempt in range(3):  # a port taken between our probe and pdns' bind: try new ones
            self.dns_port = _free_port(udp_too=True)
            self.api_port = _free_port()
            while self.api_port == self.dns_port:
                self.api_port = _free_port()
            self._write_config(db)
            log_path = self.dir / "pdns.log"
            self._log = open(log_path, "ab")
            self.proc = subprocess.Popen([self.binary, f"--config-dir={self.dir}"],
                                         stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            if self._wait_ready(deadline=time.monotonic() + timeout):
                self.startup_seconds = time.monotonic() - began
                return
            last_error = log_path.read_text(errors="replace")[-2000:]
            self._kill()
            if self.drop_privileges and attempt == 0 and "setuid" in last_error.lower():
                self.drop_privileges = False  # this pdns cannot switch users here: run as we are
        self.stop()
        raise RuntimeError(f"pdns_server did not become ready:\n{last_error}")

    def _write_config(self, db: Path) -> None:
        assert self.dir is not None
        conf = {
            "launch": "gsqlite3",
            "gsqlite3-database": str(db),
            "local-address": "127.0.0.1",
            "local-port": str(self.dns_port),
            "api": "yes",
            "api-key": self.api_key,
            "webserver": "yes",
            "webserver-address": "127.0.0.1",
            "webserver-port": str(self.api_port),
            "webserver-allow-from": "127.0.0.0/8",
            "socket-dir": str(self.dir),
            "guardian": "no",
            "daemon": "no",
            "disable-syslog": "yes",
            "security-poll-suffix": "",
            "loglevel": "4",
            # No caches: API changes purge them anyway, but a change made behind the API's back (e.g.
            # straight into the SQLite file) would otherwise linger in dig's answers for a minute.
            "cache-ttl": "0",
            "negquery-cache-ttl": "0",
            "query-cache-ttl": "0",
        }
        if self.drop_privileges:
            conf["setuid"] = "pdns"
            conf["setgid"] = "pdns"
        conf.update(self.extra_config)
        (self.dir / "pdns.conf").write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
        if self.drop_privileges:
            entry = pwd.getpwnam("pdns")
            for path in [self.dir, *self.dir.iterdir()]:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _wait_ready(self, deadline: float) -> bool:
        url = f"{self.url}/api/v1/servers/localhost"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                if requests.get(url, headers=self.headers, timeout=1).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.01)
        return False

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Terminate the server, wait for it, and remove its directory."""
        self._kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """What pdns_server printed so far (for failure messages)."""
        if self.dir is None or not (self.dir / "pdns.log").exists():
            return ""
        return (self.dir / "pdns.log").read_text(errors="replace")

    def __enter__(self) -> "PowerDns":
        if self.proc is None:
            self._start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ API helpers

    @property
    def url(self) -> str:
        """Base URL of the webserver, e.g. http://127.0.0.1:PORT (the API is under /api/v1)."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v1/servers/localhost"

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def zone_url(self, zone: str) -> str:
        return f"{self.api_url}/zones/{canonical(zone)}"

    def create_zone(self, name: str, *, kind: str = "Native",
                    nameservers: tuple[str, ...] | list[str] = DEFAULT_NAMESERVERS,
                    soa_edit_api: str = "DEFAULT") -> dict:
        """Create a zone through the API (PowerDNS writes the SOA and the NS rrset); returns its JSON."""
        body = {"name": canonical(name), "kind": kind,
                "nameservers": [canonical(ns) for ns in nameservers], "soa_edit_api": soa_edit_api}
        resp = requests.post(f"{self.api_url}/zones", headers=self.headers, json=body, timeout=10)
        if resp.status_code != 201:
            raise RuntimeError(f"create_zone {name}: {resp.status_code} {resp.text}")
        return resp.json()

    def patch(self, zone: str, *rrsets: dict) -> requests.Response:
        """PATCH the zone with these rrsets (each with its own changetype); the raw response."""
        return requests.patch(self.zone_url(zone), headers=self.headers, json={"rrsets": list(rrsets)},
                              timeout=10)

    def delete_zone(self, name: str) -> None:
        resp = requests.delete(self.zone_url(name), headers=self.headers, timeout=10)
        if resp.status_code not in (204, 404):
            raise RuntimeError(f"delete_zone {name}: {resp.status_code} {resp.text}")

    def zones(self) -> list[str]:
        resp = requests.get(f"{self.api_url}/zones", headers=self.headers, timeout=10)
        resp.raise_for_status()
        return [z["name"] for z in resp.json()]

    def rrsets(self, zone: str) -> list[dict]:
        """The zone's rrsets as the API returns them (name, type, ttl, records[{content, disabled}])."""
        resp = requests.get(self.zone_url(zone), headers=self.headers, timeout=10)
        resp.raise_for_status()
        return resp.json()["rrsets"]

    def records(self, zone: str, name: str, rtype: str) -> list[str] | None:
        """Contents of one rrset (None when it does not exist)."""
        for rrset in self.rrsets(zone):
            if rrset["name"] == canonical(name) and rrset["type"] == rtype.upper():
                return [r["content"] for r in rrset["records"]]
        return None

    def dig(self, name: str, rtype: str = "A") -> list[str]:
        """Answer lines of `dig @127.0.0.1 -p PORT +short NAME TYPE` (skips the test when dig is missing)."""
        dig = shutil.which("dig")
        if dig is None:
            import pytest
            pytest.skip("dig is not installed (apt-get install -y dnsutils)")
        out = subprocess.run([dig, "@127.0.0.1", "-p", str(self.dns_port), "+short", "+tries=2",
                              "+time=2", name, rtype.upper()],
                             capture_output=True, text=True, timeout=15)
        if out.returncode != 0:
            raise RuntimeError(f"dig failed ({out.returncode}): {out.stdout}{out.stderr}")
        return [line for line in out.stdout.splitlines() if line.strip()]

    def dig_status(self, name: str, rtype: str = "A") -> str:
        """The response code dig reports (NOERROR, NXDOMAIN, REFUSED...)."""
        dig = shutil.which("dig")
        if dig is None:
            import pytest
            pytest.skip("dig is not installed (apt-get install -y dnsutils)")
        out = subprocess.run([dig, "@127.0.0.1", "-p", str(self.dns_port), "+tries=2", "+time=2",
                              name, rtype.upper()], capture_output=True, text=True, timeout=15)
        for line in out.stdout.splitlines():
            if "status:" in line:
                return line.split("status:")[1].split(",")[0].strip()
        raise RuntimeError(f"no status in dig output: {out.stdout}{out.stderr}")

    def reset(self) -> None:
        """Delete every zone (for a server shared between tests)."""
        for zone in self.zones():
            self.delete_zone(zone)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
