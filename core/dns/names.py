"""DNS names: normalisation, reverse names from the standard library, and which zones a name falls in."""
from __future__ import annotations

import ipaddress
import re


def normalize(name: str) -> str:
    """Lower case, no trailing dot: ``Example.COM.`` and ``example.com`` are one zone."""
    return str(name or "").strip().rstrip(".").lower()


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def is_host_name(name: str) -> bool:
    """Whether a DNS server takes the name as a record's name or a PTR's target: dot-separated labels of
    letters, digits, '-' and '_', 63 characters each at most, 253 in all; a trailing dot is allowed."""
    bare = name[:-1] if name.endswith(".") else name
    return 0 < len(bare) <= 253 and all(_LABEL.match(label) for label in bare.split("."))


def absolute(name: str) -> str:
    """The name with its trailing dot, as PowerDNS and zone files want it."""
    return normalize(name) + "."


def reverse_name(address: str) -> str:
    """``10.2.0.192.in-addr.arpa`` or the 32-nibble ``...ip6.arpa`` name of an address."""
    return ipaddress.ip_address(address).reverse_pointer


_CLASSLESS = re.compile(r"^(\d{1,3})(?:-(\d{1,3})|/(\d{1,2}))\.(\d{1,3}\.\d{1,3}\.\d{1,3}\.in-addr\.arpa)$")


def classless_span(zone: str) -> tuple[str, int, int] | None:
    """An RFC 2317 zone for part of a /24 (``0-63.2.0.192.in-addr.arpa`` or ``0/26.2.0.192.in-addr.arpa``):
    (the /24's own reverse zone, the first and the last final octet it holds); None for any other name."""
    found = _CLASSLESS.match(normalize(zone))
    if not found:
        return None
    first = int(found.group(1))
    if found.group(2) is not None:
        last = int(found.group(2))
    else:
        bits = int(found.group(3))
        if not 24 < bits <= 32:
            return None
        last = first + 2 ** (32 - bits) - 1
    return (found.group(4), first, last) if first <= last <= 255 else None


def reverse_name_in(address: str, zone: str) -> str | None:
    """The name of the address's PTR record in this zone, or None when the zone does not hold it: the
    standard reverse name under a parent zone, ``<final octet>.<zone>`` in an RFC 2317 classless zone (the
    parent's CNAME for the address points there)."""
    name = reverse_name(address)
    span = classless_span(zone)
    if span is not None:
        parent, first, last = span
        octet, _, rest = name.partition(".")
        return f"{octet}.{normalize(zone)}" if rest == parent and first <= int(octet) <= last else None
    return name if in_zone(name, zone, proper=True) else None


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
