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

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload

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


# Built once: composing these statements cost more CPU than the database spent running them.
_A, _P = IPAddress.__table__, IPPool.__table__
_LOWEST_HANDED_BACK = (
    # Only the pool's columns: the (pool_id, service_id, key) index answers it on every backend (with
    # server_id too, SQLite's planner picks the unique (server_id, key) index and scans). Keys are never
    # empty, so a pool without a gateway passes "".
    select(_A.c.id).where(_A.c.pool_id == _P.c.id, _A.c.service_id.is_(None), _A.c.key >= bindparam("lo"),
                          _A.c.key <= bindparam("hi"), _A.c.key != bindparam("gateway"))
    .order_by(_A.c.key).limit(1).scalar_subquery())
_POOL_STATE = select(_P.c.cursor, _LOWEST_HANDED_BACK).where(_P.c.id == bindparam("pool"))
_POOL_STATE_LOCKED = _POOL_STATE.with_for_update()
# (An UPDATE's parameters whose names are columns become SET values: these use other names.)
_TOUCH_POOL = update(_P).where(_P.c.id == bindparam("pool")).values(cursor=_P.c.cursor)
_KEYS_FROM = (select(_A.c.key).where(_A.c.server_id == bindparam("server"), _A.c.family == bindparam("family"),
                                     _A.c.key >= bindparam("lo"), _A.c.key <= bindparam("hi"))
              .order_by(_A.c.key).limit(bindparam("batch")))
_HIGHEST_KEY = select(func.max(_A.c.key)).where(_A.c.server_id == bindparam("server"),
                                                _A.c.family == bindparam("family"),
                                                _A.c.key >= bindparam("lo"), _A.c.key <= bindparam("hi"))
_TAKE = (update(_A).where(_A.c.id == bindparam("row"), _A.c.service_id.is_(None))
         .values(service_id=bindparam("to_service"), position=bindparam("at_position"),
                 allocated_at=bindparam("at_time")))
_MOVE_CURSOR = update(_P).where(_P.c.id == bindparam("pool")).values(cursor=bindparam("new_cursor"))
_INSERT = _A.insert()
_HELD = (select(_A.c.family, _A.c.pool_id).where(_A.c.service_id == bindparam("service"))
         .order_by(_A.c.family, _A.c.position, _A.c.key))
_POOLS = (select(_P.c.id, _P.c.server_id, _P.c.family, _P.c.first, _P.c.last, _P.c.gateway)
          .where(_P.c.server_id == bindparam("server")).order_by(_P.c.id))
_LEGACY_HANDED_BACK = (select(_A.c.id).where(_A.c.pool_id.is_(None), _A.c.service_id.is_(None),
                                             _A.c.server_id == bindparam("server"), _A.c.family == bindparam("family"))
                       .order_by(_A.c.key).limit(1))


def lock_pool(pool_id: int) -> None:
    """Take a pool's lock for this transaction (allocations from it wait until the transaction ends)."""
    if db.session.get_bind().dialect.name == "sqlite":
        db.session.execute(_TOUCH_POOL, {"pool": pool_id})
    else:
        db.session.execute(select(_P.c.id).where(_P.c.id == pool_id).with_for_update())


def _lock_pool(pool, lo: str, hi: str, gateway: str) -> tuple[str | None, int | None]:
    """Take the pool's lock for this transaction, so that allocations from one pool queue up instead of
    racing for the same address; (its cursor, its lowest handed-back address) as seen under the lock."""
    values = {"pool": pool.id, "lo": lo, "hi": hi, "gateway": gateway}
    if db.session.get_bind().dialect.name == "sqlite":
        db.session.execute(_TOUCH_POOL, {"pool": pool.id})  # the database's write lock (no row locks)
        return tuple(db.session.execute(_POOL_STATE, values).one())
    return tuple(db.session.execute(_POOL_STATE_LOCKED, values).one())


def _take(row_id: int, service_id: int, position: int) -> bool:
    return db.session.execute(_TAKE, {"row": row_id, "to_service": service_id, "at_position": position,
                                      "at_time": utcnow()}).rowcount == 1


def _insert(server_id: int, family: int, value: int, service_id: int, position: int, pool_id: int | None) -> None:
    db.session.execute(_INSERT, {
        "server_id": server_id, "pool_id": pool_id, "family": family, "address": str(_from_int(family, value)),
        "key": _key_of_int(family, value), "service_id": service_id, "position": position,
        "allocated_at": utcnow()})


def _first_unused(server_id: int, family: int, start: int, first: int, last: int, gateway: int | None) -> int | None:
    """The lowest address in [start, last] (then, wrapping once, from first) that has no row."""
    for begin in ((start, first) if start > first else (first,)):
        candidate, batch = begin, 64
        while candidate <= last:
            if candidate == gateway:
                candidate += 1
                continue
            taken = db.session.scalars(_KEYS_FROM, {
                "server": server_id, "family": family, "lo": _key_of_int(family, candidate),
                "hi": _key_of_int(family, last), "batch": batch}).all()
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
            if candidate <= last:
                return candidate
    return None


def _claim_from_pool(pool, service_id: int, position: int) -> bool:
    """Give the service one address of the pool (a row with its id, server_id, family, first, last and
    gateway), in one transaction under the pool's lock: the lowest handed-back address, else the first
    never-used one at or after the cursor (wrapping once)."""
    family = pool.family
    first, last, gateway = pool_bounds(pool)
    lo, hi = _key_of_int(family, first), _key_of_int(family, last)
    for _ in range(5):
        try:
            cursor, handed_back = _lock_pool(pool, lo, hi, _key_of_int(family, gateway) if gateway else "")
            if handed_back is not None:
                if _take(handed_back, service_id, position):
                    db.session.commit()
                    return True
                # Taken meanwhile: this transaction saw an older snapshot (MariaDB's repeatable read keeps
                # the one of its first read). A fresh transaction looks again.
                db.session.rollback()
                continue
            if cursor:
                start = max(first, int(cursor, 16))
            else:  # no cursor yet (an imported or edited pool): start past the highest address in use
                highest = db.session.scalar(_HIGHEST_KEY, {"server": pool.server_id, "family": family,
                                                           "lo": lo, "hi": hi})
                start = max(first, int(highest, 16) + 1) if highest else first
            value = _first_unused(pool.server_id, family, start, first, last, gateway)
            if value is None:
                db.session.rollback()
                return False
            _insert(pool.server_id, family, value, service_id, position, pool.id)
            db.session.execute(_MOVE_CURSOR, {"pool": pool.id, "new_cursor": _key_of_int(family, value + 1)})
            db.session.commit()
            return True
        except IntegrityError:  # the address was taken outside this pool's lock (an overlapping list)
            db.session.rollback()
    return False


@dataclass(frozen=True)
class LegacyEntry:
    """One line of a server's legacy Assigned IP Addresses list: ``address[/prefix][|field...]``, where the
    other pipe-delimited fields, in any order, may give the prefix (a number or a dotted netmask), then the
    gateway and up to two DNS servers (addresses, in that order)."""
    address: IPAddr
    prefix: int | None
    gateway: str
    dns: tuple[str, ...]


def _parse_legacy(item: str) -> LegacyEntry | None:
    fields = [f.strip() for f in item.split("|")]
    head, _, prefix_text = fields[0].partition("/")
    try:
        address = ipaddress.ip_address(head.strip())
    except ValueError:
        return None
    prefix, others = None, []
    for text in [prefix_text] + fields[1:]:
        if not text:
            continue
        if text.isdigit():
            prefix = int(text) if 0 < int(text) <= address.max_prefixlen else prefix
            continue
        try:
            value = ipaddress.ip_address(text)
        except ValueError:
            continue
        if value.version != address.version:
            continue
        if value.version == 4 and text.startswith("255."):
            try:  # a dotted netmask
                prefix = ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
                continue
            except ValueError:
                pass
        others.append(str(value))
    return LegacyEntry(address, prefix, others[0] if others else "", tuple(others[1:3]))


def legacy_entries(server: Server, family: int | None = None) -> list[LegacyEntry]:
    out = []
    for item in (server.assigned_ips or "").replace(",", "\n").split("\n"):
        entry = _parse_legacy(item.strip()) if item.strip() else None
        if entry is not None and (family is None or entry.address.version == family):
            out.append(entry)
    return out


def legacy_entry(server: Server, address: str) -> LegacyEntry | None:
    """The legacy list's line for an address handed out from it (its prefix, gateway and DNS)."""
    wanted = ipaddress.ip_address(address)
    return next((e for e in legacy_entries(server) if e.address == wanted), None)


def _legacy_addresses(server: Server, family: int) -> list[IPAddr]:
    return [entry.address for entry in legacy_entries(server, family)]


def _claim_legacy(server: Server, family: int, service_id: int, position: int) -> bool:
    """An address of the server's legacy list: a handed-back one first, then one never used."""
    for _ in range(20):
        row_id = db.session.scalar(_LEGACY_HANDED_BACK, {"server": server.id, "family": family})
        if row_id is None:
            break
        taken = _take(row_id, service_id, position)
        db.session.commit()
        if taken:
            return True
    listed = _legacy_addresses(server, family)
    if not listed:
        return False
    known = set(db.session.scalars(select(IPAddress.key).where(
        IPAddress.server_id == server.id, IPAddress.key.in_([address_key(a) for a in listed]))))
    for addr in listed:
        if address_key(addr) in known:
            continue
        try:
            _insert(server.id, family, int(addr), service_id, position, None)
            db.session.commit()
            return True
        except IntegrityError:  # someone else took it a moment ago
            db.session.rollback()
    return False


def assigned(service_id: int) -> list[IPAddress]:
    """The service's addresses, IPv4 first, each family in the order they were given; with their pools
    (the steps read the main address's gateway, mask and DNS servers)."""
    return list(db.session.scalars(select(IPAddress).where(IPAddress.service_id == service_id)
                                   .options(joinedload(IPAddress.pool))
                                   .order_by(IPAddress.family, IPAddress.position, IPAddress.key)))


def allocate(server: Server, family: int, service_id: int, count: int) -> list[IPAddress]:
    """Make sure the service holds ``count`` addresses of the family; returns them all.

    Tops up what the service already holds (so a retried step never takes more), pools first (the pool of
    the service's main address first, so its addresses share a gateway), then the server's legacy list.
    Raises NoFreeAddress when not enough are free; what was taken stays with the service for the retry."""
    return [a for a in allocate_all(server, service_id, {family: count}) if a.family == family]


def allocate_all(server: Server, service_id: int, wanted: dict[int, int]) -> list[IPAddress]:
    """allocate() for several families at once ({4: 1, 6: 1}); returns all of the service's addresses of
    those families, each family's first ``count``, IPv4 first."""
    held: dict[int, list] = {family: [] for family in wanted}
    for family, pool_id in db.session.execute(_HELD, {"service": service_id}):  # pool ids, main address first
        if family in held:
            held[family].append(pool_id)
    short = [family for family, count in wanted.items() if len(held[family]) < count]
    if short:
        pools: dict[int, list] = {family: [] for family in short}
        for pool in db.session.execute(_POOLS, {"server": server.id}):
            if pool.family in pools:
                pools[pool.family].append(pool)
        for family in short:
            main_pool = held[family][0] if held[family] else None
            if main_pool is not None:
                pools[family].sort(key=lambda p: p.id != main_pool)
            _top_up(server, family, service_id, len(held[family]), wanted[family], pools[family])
    out, counts = [], dict.fromkeys(wanted, 0)
    for address in assigned(service_id):
        if address.family in counts and counts[address.family] < wanted[address.family]:
            counts[address.family] += 1
            out.append(address)
    return out


def _top_up(server: Server, family: int, service_id: int, held: int, count: int, pools: list) -> None:
    for position in range(held, count):
        if not any(_claim_from_pool(pool, service_id, position) for pool in pools) and \
                not _claim_legacy(server, family, service_id, position):
            raise NoFreeAddress(f"No free IPv{family} address in the pools or the assigned IP list of "
                                f"server {server.name or server.id}")


def release(service_id: int, family: int | None = None, keep: int = 0, commit: bool = True) -> int:
    """Hand the service's addresses back for reuse (all, or those of a family past the first ``keep``);
    ``commit=False`` leaves them in the caller's transaction."""
    rows = [a for a in assigned(service_id) if family is None or a.family == family][keep:]
    for row in rows:
        row.service_id = None
        row.allocated_at = None
    if commit:
        db.session.commit()
    return len(rows)
