"""DNS names: normalisation, reverse names from the standard library, and which zones a name falls in."""
from __future__ import annotations

import ipaddress


def normalize(name: str) -> str:
    """Lower case, no trailing dot: ``Example.COM.`` and ``example.com`` are one zone."""
    return str(name or "").strip().rstrip(".").lower()


def absolute(name: str) -> str:
    """The name with its trailing dot, as PowerDNS and zone files want it."""
    return normalize(name) + "."


def reverse_name(address: str) -> str:
    """``10.2.0.192.in-addr.arpa`` or the 32-nibble ``...ip6.arpa`` name of an address."""
    return ipaddress.ip_address(address).reverse_pointer


def in_zone(name: str, zone: str, proper: bool = False) -> bool:
    """True when the zone is the name itself or one of its parents (a proper parent only, if asked)."""
    name, zone = normalize(name), normalize(zone)
    if not zone:
        return False
    if name == zone:
        return not proper
    return name.endswith("." + zone)


def relative(name: str, zone: str) -> str:
    """The name relative to its zone (``@`` for the apex), as HestiaCP wants records."""
    name, zone = normalize(name), normalize(zone)
    return "@" if name == zone else name[: -len(zone) - 1]


def record_type(address: str) -> str:
    return "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
