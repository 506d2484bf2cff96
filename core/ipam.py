"""IP address management: pools, race-free allocation, release for reuse, and the rDNS zone of a prefix.

Every address ever handed out has a row in ``ip_addresses``, unique per server. Allocation is therefore
safe under any number of concurrent workers on any backend: two claims of one address cannot both insert
(unique constraint) nor both take a handed-back row (conditional UPDATE ... WHERE service_id IS NULL).

Its cost does not depend on the size of the pool. A handed-back address is found by one indexed query;
a never-used one is searched from the pool's cursor (just past the last fresh allocation), so an IPv6 /64
allocates as fast as an IPv4 /29.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from .extensions import db
from .models import IPAddress, IPPool, Server, utcnow

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class NoFreeAddress(Exception):
    """The server's pools and legacy list have no free address of that family."""


def address_key(ip: str | IPAddr) -> str:
    """Fixed-width hex of an address: sorts like the number (8 digits for IPv4, 32 for IPv6)."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    return f"{int(addr):0{8 if addr.version == 4 else 32}x}"


def _from_int(family: int, value: int) -> IPAddr:
    return ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)


def _key_of_int(family: int, value: int) -> str:
    return f"{value:0{8 if family == 4 else 32}x}"


def pool_bounds(pool: IPPool) -> tuple[int, int, int | None]:
    """(first, last, gateway) of a pool as integers."""
    gateway = int(ipaddress.ip_address(pool.gateway)) if pool.gateway else None
    return int(ipaddress.ip_address(pool.first)), int(ipaddress.ip_address(pool.last)), gateway


def pool_size(pool: IPPool) -> int:
    first, last, gateway = pool_bounds(pool)
    return last - first + 1 - (1 if gateway is not None and first <= gateway <= last else 0)


def pool_used(pool_id: int) -> int:
    return db.session.scalar(select(func.count()).select_from(IPAddress)
                             .where(IPAddress.pool_id == pool_id, IPAddress.service_id.is_not(None))) or 0


def rdns_zone(family: int, gateway_or_first: str, mask: int) -> str | None:
    """The reverse zone an admin must delegate for this prefix, or None when it is not on a zone boundary
    (IPv4 /8, /16, /24; IPv6 any multiple of 4)."""
    network = ipaddress.ip_network(f"{gateway_or_first}/{mask}", strict=False)
    if family == 4:
        if mask not in (8, 16, 24):
            return None
        octets = str(network.network_address).split(".")[: mask // 8]
        return ".".join(reversed(octets)) + ".in-addr.arpa"
    if mask % 4 or mask == 0:
        return None
    nibbles = network.network_address.exploded.replace(":", "")[: mask // 4]
    return ".".join(reversed(nibbles)) + ".ip6.arpa"


@dataclass
class Allocation:
    address: str
    family: int
    pool: IPPool | None


def _claim_handed_back(server_id: int, family: int, service_id: int, position: int,
                       pool: IPPool | None) -> IPAddress | None:
    """Take the lowest handed-back address of a pool (or of the legacy list when pool is None)."""
    if pool is not None:
        # Only the pool's columns: the (pool_id, service_id, key) index then answers it on every backend
        # (with server_id too, SQLite's planner picks the unique (server_id, key) index and scans).
        first, last, gateway = pool_bounds(pool)
        query = select(IPAddress.id).where(IPAddress.pool_id == pool.id, IPAddress.service_id.is_(None),
                                           IPAddress.key >= _key_of_int(family, first),
                                           IPAddress.key <= _key_of_int(family, last))
        if gateway is not None:
            query = query.where(IPAddress.key != _key_of_int(family, gateway))
    else:
        query = select(IPAddress.id).where(IPAddress.pool_id.is_(None), IPAddress.service_id.is_(None),
                                           IPAddress.server_id == server_id, IPAddress.family == family)
    for _ in range(20):
        row_id = db.session.scalar(query.order_by(IPAddress.key).limit(1))
        if row_id is None:
            return None
        taken = db.session.execute(
            update(IPAddress).where(IPAddress.id == row_id, IPAddress.service_id.is_(None))
            .values(service_id=service_id, position=position, allocated_at=utcnow()))
        db.session.commit()
        if taken.rowcount == 1:
            return db.session.get(IPAddress, row_id)
    return None


def _insert(server_id: int, family: int, value: int, service_id: int, position: int,
            pool: IPPool | None) -> IPAddress | None:
    """Insert the address (and move the pool's cursor past it) in one transaction; None if taken."""
    row = IPAddress(server_id=server_id, pool_id=pool.id if pool else None, family=family,
                    address=str(_from_int(family, value)), key=_key_of_int(family, value),
                    service_id=service_id, position=position, allocated_at=utcnow())
    db.session.add(row)
    try:
        if pool is not None:  # (flushes the insert first: a taken address fails right here)
            db.session.execute(update(IPPool).where(IPPool.id == pool.id)
                               .values(cursor=_key_of_int(family, value + 1)))
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return None
    return row


def _claim_fresh(pool: IPPool, service_id: int, position: int) -> IPAddress | None:
    """Insert the first never-used address of the pool at or after its cursor (wrapping once)."""
    family = pool.family
    first, last, gateway = pool_bounds(pool)
    if pool.cursor:
        start = max(first, int(pool.cursor, 16))
    else:  # no cursor yet (an imported or edited pool): start past the highest address in use
        highest = db.session.scalar(select(func.max(IPAddress.key)).where(
            IPAddress.server_id == pool.server_id, IPAddress.family == family,
            IPAddress.key >= _key_of_int(family, first), IPAddress.key <= _key_of_int(family, last)))
        start = max(first, int(highest, 16) + 1) if highest else first
    for begin in ((start, first) if start > first else (first,)):
        candidate, batch = begin, 64
        while candidate <= last:
            if candidate == gateway:
                candidate += 1
                continue
            taken = db.session.scalars(
                select(IPAddress.key).where(IPAddress.server_id == pool.server_id, IPAddress.family == family,
                                            IPAddress.key >= _key_of_int(family, candidate),
                                            IPAddress.key <= _key_of_int(family, last))
                .order_by(IPAddress.key).limit(batch)).all()
            gap = False
            for key in taken:
                value = int(key, 16)
                if candidate == gateway:
                    candidate += 1
                if value > candidate:
                    gap = True
                    break
                if value == candidate:
                    candidate += 1
            if not gap and len(taken) == batch:
                batch = min(batch * 4, 4096)  # all taken so far: look further, in larger steps
                continue
            if candidate == gateway:
                candidate += 1
            if candidate > last:
                break
            row = _insert(pool.server_id, family, candidate, service_id, position, pool)
            if row is not None:
                return row
            candidate += 1  # someone else took it a moment ago
    return None


def _legacy_addresses(server: Server, family: int) -> list[IPAddr]:
    out = []
    for item in (server.assigned_ips or "").replace(",", "\n").split("\n"):
        item = item.strip()
        if not item:
            continue
        try:
            addr = ipaddress.ip_address(item.split("|")[0].split("/")[0].strip())
        except ValueError:
            continue
        if addr.version == family:
            out.append(addr)
    return out


def _claim_legacy(server: Server, family: int, service_id: int, position: int) -> IPAddress | None:
    row = _claim_handed_back(server.id, family, service_id, position, None)
    if row is not None:
        return row
    listed = _legacy_addresses(server, family)
    if not listed:
        return None
    known = set(db.session.scalars(select(IPAddress.key).where(
        IPAddress.server_id == server.id, IPAddress.key.in_([address_key(a) for a in listed]))))
    for addr in listed:
        if address_key(addr) in known:
            continue
        row = _insert(server.id, family, int(addr), service_id, position, None)
        if row is not None:
            return row
    return None


def pools_of(server_id: int, family: int) -> list[IPPool]:
    return list(db.session.scalars(select(IPPool).where(IPPool.server_id == server_id, IPPool.family == family)
                                   .order_by(IPPool.id)))


def assigned(service_id: int) -> list[IPAddress]:
    """The service's addresses, IPv4 first, each family in the order they were given."""
    return list(db.session.scalars(select(IPAddress).where(IPAddress.service_id == service_id)
                                   .order_by(IPAddress.family, IPAddress.position, IPAddress.key)))


def allocate(server: Server, family: int, service_id: int, count: int) -> list[IPAddress]:
    """Make sure the service holds ``count`` addresses of the family; returns them all.

    Tops up what the service already holds (so a retried step never takes more), pools first (the pool of
    the service's main address first, so its addresses share a gateway), then the server's legacy list.
    Raises NoFreeAddress when not enough are free; what was taken stays with the service for the retry."""
    held = [a for a in assigned(service_id) if a.family == family]
    if len(held) >= count:
        return held[:count]
    pools = pools_of(server.id, family)
    if held and held[0].pool_id is not None:
        pools.sort(key=lambda p: p.id != held[0].pool_id)
    while len(held) < count:
        position = len(held)
        row = None
        for pool in pools:
            row = _claim_handed_back(server.id, family, service_id, position, pool) \
                or _claim_fresh(pool, service_id, position)
            if row is not None:
                break
        if row is None:
            row = _claim_legacy(server, family, service_id, position)
        if row is None:
            raise NoFreeAddress(f"No free IPv{family} address in the pools or the assigned IP list of "
                                f"server {server.name or server.id}")
        held.append(row)
    return held


def release(service_id: int, family: int | None = None, keep: int = 0) -> int:
    """Hand the service's addresses back for reuse (all, or those of a family past the first ``keep``)."""
    rows = [a for a in assigned(service_id) if family is None or a.family == family][keep:]
    for row in rows:
        row.service_id = None
        row.allocated_at = None
    db.session.commit()
    return len(rows)
