"""HestiaCP's command API (``POST <server>/api/`` with ``cmd`` and ``argN``).

Record names are relative to the domain (``@`` for the apex); Hestia adds the trailing dot to PTR, CNAME
and NS values itself. Errors come back as ``Error: <text>`` with an exit code.
"""
from __future__ import annotations

import json

import requests

from .base import DEFAULT_TTL, DnsError, Outcome, RRSet, describe, each
from .names import normalize, relative


class HestiaCp:
    def __init__(self, zone: str, server_url: str, admin_user: str, admin_password: str, owner: str,
                 timeout: float):
        self.zone = normalize(zone)
        self.url = server_url if server_url.endswith("/") else server_url + "/"
        self.auth = {"user": admin_user, "password": admin_password}
        self.owner = owner
        self.timeout = timeout
        self.calls = 0
        self._records: dict | None = None

    def _cmd(self, cmd: str, *args: str) -> str:
        self.calls += 1
        data = {**self.auth, "returncode": "no", "cmd": cmd}
        data.update({f"arg{n}": str(a) for n, a in enumerate(args, start=1)})
        try:
            answer = requests.post(self.url + "api/", data=data, timeout=self.timeout)
        except requests.RequestException as exc:
            raise describe(exc, "HestiaCP") from None
        text = answer.text.strip()
        if text.startswith("Error:"):  # HestiaCP's own message
            raise DnsError(f"HestiaCP {cmd}: {text.splitlines()[0][:300]}")
        if answer.status_code >= 400:  # whatever else answers at a URL an admin typed is not shown back
            raise DnsError(f"HestiaCP {cmd}: HTTP {answer.status_code}")
        return text

    def _list(self) -> dict:
        if self._records is None:
            text = self._cmd("v-list-dns-records", self.owner, self.zone, "json")
            try:
                self._records = json.loads(text) if text else {}
            except ValueError:
                raise DnsError("HestiaCP v-list-dns-records: the answer is not JSON") from None
        return self._records

    def check(self) -> None:
        text = self._cmd("v-list-dns-domains", self.owner, "json")
        try:
            domains = {normalize(d) for d in (json.loads(text) if text else {})}
        except ValueError:
            raise DnsError("HestiaCP v-list-dns-domains: the answer is not JSON") from None
        if self.zone not in domains:
            raise DnsError(f"HestiaCP user {self.owner} has no DNS domain {self.zone}")

    def _matching(self, rrset: RRSet) -> dict[str, dict]:
        name = relative(rrset.name, self.zone)
        return {rid: r for rid, r in self._list().items()
                if r.get("RECORD") == name and r.get("TYPE") == rrset.rtype}

    @staticmethod
    def _value(rrset: RRSet, value: str) -> str:
        return normalize(value) if rrset.rtype in ("PTR", "CNAME", "NS") else value

    def _replace_one(self, rrset: RRSet) -> None:
        present = self._matching(rrset)
        wanted = [self._value(rrset, c) for c in rrset.contents]
        for rid, record in present.items():
            if self._value(rrset, record.get("VALUE", "")) not in wanted:
                self._cmd("v-delete-dns-record", self.owner, self.zone, rid)
        have = {self._value(rrset, r.get("VALUE", "")) for r in present.values()}
        for value in wanted:
            if value not in have:
                self._cmd("v-add-dns-record", self.owner, self.zone, relative(rrset.name, self.zone),
                          rrset.rtype, value, "", "", "yes", DEFAULT_TTL)
        self._records = None

    def sync(self, replace: list[RRSet], delete: list[RRSet]) -> list[Outcome]:
        return self.replace(replace) + self.delete(delete)

    def replace(self, rrsets: list[RRSet]) -> list[Outcome]:
        return each(rrsets, self._replace_one)

    def delete(self, rrsets: list[RRSet]) -> list[Outcome]:
        def remove(rrset: RRSet) -> None:
            for rid in self._matching(rrset):
                self._cmd("v-delete-dns-record", self.owner, self.zone, rid)
            self._records = None
        return each(rrsets, remove)
