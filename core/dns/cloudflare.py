"""Cloudflare API v4 over plain HTTP (``Authorization: Bearer``).

Plain ``requests`` rather than the official SDK: we use four endpoints of one resource, the envelope
``{success, errors, result}`` is the same on all of them, and a base URL per installation (tests point it
at a local fake) needs nothing special. Existing records are always looked up first, so nothing doubles.
"""
from __future__ import annotations

import requests

from .base import DEFAULT_TTL, DnsError, Outcome, RRSet, describe, each
from .names import normalize

DEFAULT_API = "https://api.cloudflare.com/client/v4"


class Cloudflare:
    def __init__(self, zone: str, zone_id: str, token: str, timeout: float, api_url: str = DEFAULT_API):
        self.zone = zone
        self.zone_url = api_url.rstrip("/") + f"/zones/{zone_id}"
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        self.timeout = timeout
        self.calls = 0

    def _call(self, method: str, path: str = "", **kwargs) -> dict:
        self.calls += 1
        try:
            answer = self.session.request(method, self.zone_url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise describe(exc, "Cloudflare") from None
        try:
            body = answer.json()
        except ValueError:
            raise DnsError(f"Cloudflare HTTP {answer.status_code} without JSON") from None
        if not body.get("success"):
            errors = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in body.get("errors") or []) or "error"
            raise DnsError(f"Cloudflare HTTP {answer.status_code}: {errors}")
        return body

    def check(self) -> None:
        name = normalize((self._call("GET").get("result") or {}).get("name", ""))
        if name != normalize(self.zone):
            raise DnsError(f"Cloudflare zone id belongs to {name or 'another zone'}, not {self.zone}")

    def _existing(self, rrset: RRSet) -> list[dict]:
        found, page = [], 1
        while True:
            body = self._call("GET", "/dns_records", params={"name": normalize(rrset.name), "type": rrset.rtype,
                                                             "page": page, "per_page": 100})
            found += body.get("result") or []
            info = body.get("result_info") or {}
            if page >= int(info.get("total_pages") or 1):
                return found
            page += 1

    def _replace_one(self, rrset: RRSet) -> None:
        existing = self._existing(rrset)
        have = {normalize(r.get("content", "")) if rrset.rtype == "PTR" else r.get("content"): r for r in existing}
        wanted = [normalize(c) if rrset.rtype == "PTR" else c for c in rrset.contents]
        for content, record in have.items():
            if content not in wanted:
                self._call("DELETE", f"/dns_records/{record['id']}")
        for content in wanted:
            if content not in have:
                self._call("POST", "/dns_records", json={"type": rrset.rtype, "name": normalize(rrset.name),
                                                         "content": content, "ttl": DEFAULT_TTL, "proxied": False}
                           if rrset.rtype in ("A", "AAAA") else {"type": rrset.rtype, "name": normalize(rrset.name),
                                                                 "content": content, "ttl": DEFAULT_TTL})

    def sync(self, replace: list[RRSet], delete: list[RRSet]) -> list[Outcome]:
        return self.replace(replace) + self.delete(delete)

    def replace(self, rrsets: list[RRSet]) -> list[Outcome]:
        return each(rrsets, self._replace_one)

    def delete(self, rrsets: list[RRSet]) -> list[Outcome]:
        def remove(rrset: RRSet) -> None:
            for record in self._existing(rrset):
                self._call("DELETE", f"/dns_records/{record['id']}")
        return each(rrsets, remove)
