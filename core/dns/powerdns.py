"""PowerDNS Authoritative over its REST API (``X-API-Key``): every record set of a zone in one PATCH.

Names and PTR/CNAME/NS contents carry a trailing dot, as PowerDNS's strict mode requires. Auth failures,
404 and 409 come back as plain text, other errors as ``{"error": ...}`` JSON.
"""
from __future__ import annotations

from urllib.parse import quote

import requests

from .base import DEFAULT_TTL, DnsError, Outcome, RRSet, describe
from .names import absolute

DOTTED = ("PTR", "CNAME", "NS", "MX", "SRV")


class PowerDns:
    def __init__(self, zone: str, server_url: str, api_key: str, timeout: float, server_id: str = "localhost"):
        self.zone = zone
        self.base = server_url.rstrip("/") + f"/api/v1/servers/{server_id}/zones/{quote(absolute(zone))}"
        self.session = requests.Session()
        self.session.headers.update({"X-API-Key": api_key, "Accept": "application/json"})
        self.timeout = timeout
        self.calls = 0

    def _send(self, method: str, **kwargs) -> requests.Response:
        self.calls += 1
        try:
            answer = self.session.request(method, self.base, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise describe(exc, "PowerDNS") from None
        if answer.status_code >= 400:
            # PowerDNS's own message only: whatever else answers at a URL an admin typed is not shown back.
            try:
                text = str(answer.json().get("error") or "")
            except (ValueError, AttributeError):
                text = ""
            raise DnsError(f"PowerDNS HTTP {answer.status_code}" + (f": {text.strip()[:300]}" if text else ""))
        return answer

    def check(self) -> None:
        kind = (self._send("GET", params={"rrsets": "false"}).json() or {}).get("kind")
        if not kind:
            raise DnsError(f"PowerDNS answered without the zone {self.zone}")

    @staticmethod
    def _content(rtype: str, value: str) -> str:
        return absolute(value) if rtype in DOTTED else value

    def _change(self, rrset: RRSet, changetype: str) -> dict:
        change = {"name": absolute(rrset.name), "type": rrset.rtype, "changetype": changetype}
        if changetype == "REPLACE":
            change.update(ttl=DEFAULT_TTL, records=[{"content": self._content(rrset.rtype, c), "disabled": False}
                                                    for c in rrset.contents])
        return change

    def sync(self, replace: list[RRSet], delete: list[RRSet]) -> list[Outcome]:
        """Replace some record sets and delete others, all in one PATCH (PowerDNS applies it atomically); a
        PATCH refused as a whole for one bad record set (422) is sent again one record set at a time."""
        everything = replace + delete
        if not everything:
            return []
        changes = [(r, self._change(r, "REPLACE")) for r in replace] + [(r, self._change(r, "DELETE")) for r in delete]
        try:
            self._send("PATCH", json={"rrsets": [change for _r, change in changes]})
        except DnsError as exc:
            if len(changes) == 1 or "HTTP 422" not in str(exc):
                return [Outcome(r, str(exc)) for r in everything]
            # PowerDNS refused one of them (422) and so applied none: each alone, so only that one fails.
            outcomes = []
            for rrset, change in changes:
                try:
                    self._send("PATCH", json={"rrsets": [change]})
                    outcomes.append(Outcome(rrset))
                except DnsError as one:
                    outcomes.append(Outcome(rrset, str(one)))
            return outcomes
        return [Outcome(r) for r in everything]

    def replace(self, rrsets: list[RRSet]) -> list[Outcome]:
        return self.sync(rrsets, [])

    def delete(self, rrsets: list[RRSet]) -> list[Outcome]:
        return self.sync([], rrsets)
