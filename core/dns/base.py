"""What every provider client offers: check a zone, replace record sets, delete record sets.

A record set is every record of one name and type (all the A records of a VM's FQDN, the PTR of one
address). Names are absolute without the trailing dot; each client writes them the way its API wants.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import requests

DEFAULT_TTL = 3600


class DnsError(Exception):
    """A provider refused or could not be reached; the message is the provider's own, never a secret."""


@dataclass(frozen=True)
class RRSet:
    name: str
    rtype: str
    contents: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class Outcome:
    """What happened to one record set: ok, or the provider's error."""

    rrset: RRSet
    error: str | None = None


class ProviderClient(Protocol):
    zone: str

    def check(self) -> None: ...
    def sync(self, replace: list[RRSet], delete: list[RRSet]) -> list[Outcome]: ...
    def replace(self, rrsets: list[RRSet]) -> list[Outcome]: ...
    def delete(self, rrsets: list[RRSet]) -> list[Outcome]: ...
    @property
    def calls(self) -> int: ...


def each(rrsets: list[RRSet], action) -> list[Outcome]:
    """Apply an action to every record set, each in its own error boundary."""
    out = []
    for rrset in rrsets:
        try:
            action(rrset)
            out.append(Outcome(rrset))
        except DnsError as exc:
            out.append(Outcome(rrset, str(exc)))
    return out


def describe(exc: requests.RequestException, what: str) -> DnsError:
    """A connection problem in words, without the URL's query (which may carry credentials)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return DnsError(f"{what}: TLS verification failed")
    if isinstance(exc, requests.exceptions.Timeout):
        return DnsError(f"{what}: no answer in time")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return DnsError(f"{what}: cannot connect")
    return DnsError(f"{what}: {type(exc).__name__}")
