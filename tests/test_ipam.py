"""IP allocation: pools and the legacy list, gateway never handed out, reuse, and no double allocation
under concurrency on every backend."""
from __future__ import annotations

import ipaddress
import threading

import pytest
from sqlalchemy import func, select

from core import ipam
from core.extensions import db
from core.models import IPAddress, IPPool, Product, Server, Service, Client


def seed(server_id=1, services=(), assigned_ips=""):
    db.session.add(Server(id=server_id, name="pve", hostname="127.0.0.1", token_id="root@pam!t",
                          assigned_ips=assigned_ips))
    db.session.add(Client(id=1))
    db.session.add(Product(id=1, name="p", settings={}))
    for sid in services:
        db.session.add(Service(id=sid, client_id=1, product_id=1, server_id=server_id))
    db.session.commit()


def pool(server_id=1, family=4, first="192.0.2.1", last="192.0.2.6", gateway="192.0.2.1", mask=29, **kw):
    row = IPPool(server_id=server_id, family=family, first=first, last=last, gateway=gateway, mask=mask, **kw)
    db.session.add(row)
    db.session.commit()
    return row


def test_allocates_in_order_and_skips_the_gateway(app):
    seed(services=[1, 2, 3])
    pool(first="192.0.2.1", last="192.0.2.4", gateway="192.0.2.2")
    server = db.session.get(Server, 1)
    got = [ipam.allocate(server, 4, sid, 1)[0].address for sid in (1, 2, 3)]
    assert got == ["192.0.2.1", "192.0.2.3", "192.0.2.4"]


def test_exhausted_pool_says_so_and_keeps_what_it_took(app):
    seed(services=[1])
    pool(first="192.0.2.2", last="192.0.2.3", gateway="192.0.2.1")
    with pytest.raises(ipam.NoFreeAddress, match="No free IPv4"):
        ipam.allocate(db.session.get(Server, 1), 4, 1, 3)
    assert [a.address for a in ipam.assigned(1)] == ["192.0.2.2", "192.0.2.3"]


def test_allocate_is_idempotent_and_tops_up(app):
    seed(services=[1])
    pool(first="192.0.2.2", last="192.0.2.6", gateway="192.0.2.1")
    server = db.session.get(Server, 1)
    first = [a.address for a in ipam.allocate(server, 4, 1, 1)]
    again = [a.address for a in ipam.allocate(server, 4, 1, 1)]
    more = [a.address for a in ipam.allocate(server, 4, 1, 3)]
    assert first == again == ["192.0.2.2"]
    assert more == ["192.0.2.2", "192.0.2.3", "192.0.2.4"]


def test_released_addresses_are_reused_first(app):
    seed(services=[1, 2, 3])
    pool(first="192.0.2.2", last="192.0.2.20", gateway="192.0.2.1")
    server = db.session.get(Server, 1)
    ipam.allocate(server, 4, 1, 2)
    ipam.allocate(server, 4, 2, 1)
    assert ipam.release(1) == 2
    assert [a.address for a in ipam.allocate(server, 4, 3, 2)] == ["192.0.2.2", "192.0.2.3"]


def test_an_address_taken_meanwhile_does_not_hide_the_next_handed_back_one(any_db_app):
    """Found in review, on MariaDB: a transaction that began before another took the lowest handed-back
    address saw it free in its repeatable-read snapshot, lost it, and answered "no free IPv4" although the
    next handed-back address was free."""
    from sqlalchemy import create_engine, update
    seed(services=[1, 2, 3, 4])
    pool(first="192.0.2.2", last="192.0.2.4", gateway="192.0.2.1")
    server = db.session.get(Server, 1)
    for sid in (1, 2, 3):
        ipam.allocate(server, 4, sid, 1)
    ipam.release(1)
    ipam.release(2)  # .2 and .3 are handed back; nothing was never used
    db.session.scalars(select(IPAddress)).all()  # this transaction's snapshot begins here
    other = create_engine(db.engine.url)
    with other.begin() as conn:  # another worker takes .2 meanwhile
        conn.execute(update(IPAddress.__table__).where(IPAddress.__table__.c.address == "192.0.2.2")
                     .values(service_id=3))
    other.dispose()
    assert [a.address for a in ipam.allocate(server, 4, 4, 1)] == ["192.0.2.3"]


def test_legacy_assigned_list_is_the_fallback(app):
    seed(services=[1, 2, 3], assigned_ips="198.51.100.7\n198.51.100.8\n2001:db8::9")
    pool(first="192.0.2.2", last="192.0.2.2", gateway="192.0.2.1")
    server = db.session.get(Server, 1)
    assert ipam.allocate(server, 4, 1, 1)[0].address == "192.0.2.2"
    assert ipam.allocate(server, 4, 2, 1)[0].address == "198.51.100.7"
    assert ipam.allocate(server, 6, 3, 1)[0].address == "2001:db8::9"
    ipam.release(2)
    assert ipam.allocate(server, 4, 3, 1)[0].address == "198.51.100.7"


def test_ipv6_pool_allocates_from_a_64(app):
    seed(services=[1, 2])
    pool(family=6, first="2001:db8::2", last="2001:db8::ffff:ffff:ffff:ffff", gateway="2001:db8::1", mask=64)
    server = db.session.get(Server, 1)
    assert [a.address for a in ipam.allocate(server, 6, 1, 2)] == ["2001:db8::2", "2001:db8::3"]
    assert ipam.allocate(server, 6, 2, 1)[0].address == "2001:db8::4"


def test_search_walks_past_addresses_taken_outside_the_cursor(app):
    """Rows that exist without the pool's cursor knowing (an edited range, imported data) are skipped."""
    seed(services=list(range(1, 3)))
    row = pool(first="10.0.0.1", last="10.0.255.254", gateway="10.0.0.1", mask=16)
    hosts = ipaddress.ip_network("10.0.0.0/16").hosts()
    db.session.add_all(IPAddress(server_id=1, pool_id=row.id, family=4, address=str(ip), key=ipam.address_key(ip))
                       for _, ip in zip(range(5000), hosts))
    db.session.commit()
    # those 5000 rows are handed-back addresses: reused first, lowest first
    assert ipam.allocate(db.session.get(Server, 1), 4, 1, 1)[0].address == "10.0.0.2"
    db.session.execute(IPAddress.__table__.update().values(service_id=2))
    db.session.commit()
    got = [a.address for a in ipam.allocate(db.session.get(Server, 1), 4, 1, 2)]
    assert got == ["10.0.19.137", "10.0.19.138"]


@pytest.mark.parametrize(("family", "addr", "mask", "zone"), [
    (4, "192.168.130.1", 24, "130.168.192.in-addr.arpa"),
    (4, "10.1.0.1", 16, "1.10.in-addr.arpa"),
    (4, "10.0.0.1", 8, "10.in-addr.arpa"),
    (4, "192.168.130.1", 25, None),
    (6, "2001:db8::2", 120, "0." * 22 + "8.b.d.0.1.0.0.2.ip6.arpa"),
    (6, "2001:db8::1", 64, "0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"),
    (6, "2001:db8::1", 62, None),
])
def test_rdns_zone_hint(family, addr, mask, zone):
    assert ipam.rdns_zone(family, addr, mask) == zone


def test_concurrent_allocation_never_doubles(any_db_app):
    """50 services allocating at once from one pool get 50 different addresses, on every backend."""
    app = any_db_app
    seed(services=range(1, 51))
    pool(first="192.0.2.2", last="192.0.2.254", gateway="192.0.2.1", mask=24)
    results, errors = {}, []
    barrier = threading.Barrier(10)

    def worker(ids):
        with app.app_context():
            try:
                barrier.wait()
                server = db.session.get(Server, 1)
                for sid in ids:
                    results[sid] = ipam.allocate(server, 4, sid, 1)[0].address
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=worker, args=(range(n, 51, 10),)) for n in range(1, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 50 and len(set(results.values())) == 50
    assert "192.0.2.1" not in results.values()
    assert db.session.scalar(select(func.count()).select_from(IPAddress)) == 50


def test_moving_a_pool_to_another_server_or_family_never_gives_an_address_twice(app):
    """Found in review: an edited pool kept the rows of addresses it had been handed back, still naming the
    old server (or family); allocations then gave one address to two VMs, or an IPv4 address from a pool
    made IPv6."""
    from core import pools
    seed(services=[1, 2, 3, 4])
    db.session.add(Server(id=2, name="pve2", hostname="127.0.0.2", token_id="root@pam!t"))
    db.session.commit()
    row = pool(first="192.0.2.2", last="192.0.2.6", gateway="192.0.2.1")
    ipam.allocate(db.session.get(Server, 1), 4, 1, 1)
    assert ipam.release(1) == 1  # 192.0.2.2 handed back: a row with service_id NULL, server 1

    pools.update(row, {"server_id": 2})
    for sid in (2, 3):
        db.session.add(Service(id=sid + 10, client_id=1, product_id=1, server_id=2))
    db.session.commit()
    server2 = db.session.get(Server, 2)
    got = [ipam.allocate(server2, 4, sid, 1)[0] for sid in (12, 13)]
    assert [a.address for a in got] == ["192.0.2.2", "192.0.2.3"] and {a.server_id for a in got} == {2}
    assert db.session.scalar(select(func.count()).select_from(IPAddress).where(IPAddress.server_id == 1)) == 0

    assert ipam.release(12) == 1 and ipam.release(13) == 1
    pools.update(row, {"family": 6, "gateway": "2001:db8::1", "mask": 64, "first": "2001:db8::10",
                       "last": "2001:db8::20"})
    db.session.add(Service(id=14, client_id=1, product_id=1, server_id=2))
    db.session.commit()
    [v6] = ipam.allocate(server2, 6, 14, 1)
    assert (v6.address, v6.family) == ("2001:db8::10", 6)
    assert db.session.scalar(select(func.count()).select_from(IPAddress).where(IPAddress.family == 4)) == 0
