"""The DNS test peers behave as their providers do: a real PowerDNS Authoritative server, and the
Cloudflare v4 and HestiaCP fakes, each checked against its contract with plain `requests` calls."""
from __future__ import annotations

import os
import socket

import pytest
import requests

from tests.dnspeers import (CLOUDFLARE_ZONES, HESTIA_DOMAINS, FakeCloudflare, FakeHestia, cloudflare,  # noqa: F401
                            hestia, powerdns, start_powerdns)

T = 10  # seconds: every request here is bounded


# ============================================================================ PowerDNS (real server)

def patch_rrsets(server, zone: str, *rrsets: dict) -> requests.Response:
    return requests.patch(server.zone_url(zone), headers=server.headers, json={"rrsets": list(rrsets)},
                          timeout=T)


def replace(name: str, rtype: str, *contents: str, ttl: int = 300) -> dict:
    return {"name": name, "type": rtype, "ttl": ttl, "changetype": "REPLACE",
            "records": [{"content": c, "disabled": False} for c in contents]}


def test_powerdns_starts_and_stops_clean():
    server = start_powerdns()
    directory, api_port, pid = server.dir, server.api_port, server.proc.pid
    try:
        assert server.running and directory.is_dir()
        info = requests.get(server.api_url, headers=server.headers, timeout=T).json()
        assert info["daemon_type"] == "authoritative" and info["version"].startswith("4.")
        print(f"pdns_server {info['version']} ready in {server.startup_seconds:.3f}s")
    finally:
        server.stop()
    assert not directory.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", api_port), timeout=1).close()


def test_powerdns_create_zone_writes_soa_and_ns(powerdns):
    zone = powerdns.create_zone("example.test", nameservers=["ns1.example.net", "ns2.example.net."])
    assert zone["name"] == "example.test." and zone["kind"] == "Native"
    types = {(r["name"], r["type"]): [x["content"] for x in r["records"]] for r in powerdns.rrsets("example.test")}
    assert sorted(types[("example.test.", "NS")]) == ["ns1.example.net.", "ns2.example.net."]
    assert ("example.test.", "SOA") in types
    assert powerdns.zones() == ["example.test."]
    assert sorted(powerdns.dig("example.test", "NS")) == ["ns1.example.net.", "ns2.example.net."]
    assert len(powerdns.dig("example.test", "SOA")) == 1


def test_powerdns_zone_that_exists_is_409_plain_text(powerdns):
    powerdns.create_zone("example.test")
    resp = requests.post(f"{powerdns.api_url}/zones", headers=powerdns.headers, timeout=T,
                         json={"name": "example.test.", "kind": "Native", "nameservers": []})
    assert resp.status_code == 409
    assert resp.text == "Conflict"
    assert resp.headers["Content-Type"].startswith("text/plain")


def test_powerdns_zone_name_without_dot_is_refused(powerdns):
    resp = requests.post(f"{powerdns.api_url}/zones", headers=powerdns.headers, timeout=T,
                         json={"name": "example.test", "kind": "Native", "nameservers": []})
    assert resp.status_code == 422
    assert resp.json() == {"error": "DNS Name 'example.test' is not canonical"}


def test_powerdns_replace_a_aaaa_ptr_read_back_through_api_and_dns(powerdns):
    powerdns.create_zone("example.test")
    powerdns.create_zone("2.0.192.in-addr.arpa")
    powerdns.create_zone("8.b.d.0.1.0.0.2.ip6.arpa")
    v6_ptr = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."

    resp = patch_rrsets(powerdns, "example.test",
                        replace("vm1.example.test.", "A", "192.0.2.1"),
                        replace("vm1.example.test.", "AAAA", "2001:db8::1"))
    assert resp.status_code == 204 and resp.content == b""
    assert patch_rrsets(powerdns, "2.0.192.in-addr.arpa.",
                        replace("1.2.0.192.in-addr.arpa.", "PTR", "vm1.example.test.")).status_code == 204
    assert patch_rrsets(powerdns, "8.b.d.0.1.0.0.2.ip6.arpa",
                        replace(v6_ptr, "PTR", "vm1.example.test.", ttl=60)).status_code == 204

    assert powerdns.records("example.test", "vm1.example.test", "A") == ["192.0.2.1"]
    assert powerdns.records("example.test", "vm1.example.test.", "AAAA") == ["2001:db8::1"]
    assert powerdns.records("2.0.192.in-addr.arpa", "1.2.0.192.in-addr.arpa", "PTR") == ["vm1.example.test."]
    ttl = next(r["ttl"] for r in powerdns.rrsets("8.b.d.0.1.0.0.2.ip6.arpa") if r["type"] == "PTR")
    assert ttl == 60

    assert powerdns.dig("vm1.example.test", "A") == ["192.0.2.1"]
    assert powerdns.dig("vm1.example.test", "AAAA") == ["2001:db8::1"]
    assert powerdns.dig("1.2.0.192.in-addr.arpa", "PTR") == ["vm1.example.test."]
    assert powerdns.dig(v6_ptr, "PTR") == ["vm1.example.test."]

    # REPLACE is a replace: the old content goes, and sending the same set again changes nothing
    for _ in range(2):
        assert patch_rrsets(powerdns, "example.test",
                            replace("vm1.example.test.", "A", "192.0.2.9")).status_code == 204
    assert powerdns.records("example.test", "vm1.example.test", "A") == ["192.0.2.9"]
    assert powerdns.dig("vm1.example.test", "A") == ["192.0.2.9"]


def test_powerdns_ptr_content_without_trailing_dot_is_422(powerdns):
    powerdns.create_zone("2.0.192.in-addr.arpa")
    resp = patch_rrsets(powerdns, "2.0.192.in-addr.arpa",
                        replace("1.2.0.192.in-addr.arpa.", "PTR", "vm1.example.test"))
    assert resp.status_code == 422
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == {"error": "Record 1.2.0.192.in-addr.arpa./PTR 'vm1.example.test': "
                                    "Not in expected format (parsed as 'vm1.example.test.')"}
    assert powerdns.records("2.0.192.in-addr.arpa", "1.2.0.192.in-addr.arpa", "PTR") is None


@pytest.mark.parametrize("rrset, error", [
    (replace("vm1.example.test", "A", "192.0.2.1"), "DNS Name 'vm1.example.test' is not canonical"),
    (replace("vm1.other.test.", "A", "192.0.2.1"), "RRset vm1.other.test. IN A: Name is out of zone"),
    (replace("vm1.example.test.", "A", "192.0.2.300"),
     "Record vm1.example.test./A '192.0.2.300': Parsing record content (try 'pdnsutil check-zone'): "
     "unable to parse IP address"),
    (replace("vm1.example.test.", "AAAA", "2001:db8::zz"), "Record vm1.example.test./AAAA '2001:db8::zz': "
                                                           "Invalid IPv6 address"),
    ({"name": "vm1.example.test.", "type": "A", "changetype": "UPSERT", "records": []},
     "Changetype not understood"),
])
def test_powerdns_refuses_malformed_rrsets_with_422_json(powerdns, rrset, error):
    powerdns.create_zone("example.test")
    resp = patch_rrsets(powerdns, "example.test", rrset)
    assert (resp.status_code, resp.json()) == (422, {"error": error})


def test_powerdns_delete_changetype(powerdns):
    powerdns.create_zone("example.test")
    patch_rrsets(powerdns, "example.test", replace("vm1.example.test.", "A", "192.0.2.1"),
                 replace("vm2.example.test.", "A", "192.0.2.2"))
    assert powerdns.dig("vm1.example.test", "A") == ["192.0.2.1"]
    delete = {"name": "vm1.example.test.", "type": "A", "changetype": "DELETE"}
    assert patch_rrsets(powerdns, "example.test", delete).status_code == 204
    assert powerdns.records("example.test", "vm1.example.test", "A") is None
    assert powerdns.records("example.test", "vm2.example.test", "A") == ["192.0.2.2"]
    assert powerdns.dig("vm1.example.test", "A") == []
    assert powerdns.dig_status("vm1.example.test", "A") == "NXDOMAIN"
    # deleting what is not there is not an error
    assert patch_rrsets(powerdns, "example.test", delete).status_code == 204


def test_powerdns_401_404_400_are_plain_text(powerdns):
    powerdns.create_zone("example.test")
    for headers in ({"X-API-Key": "wrong"}, {}):
        resp = requests.get(f"{powerdns.api_url}/zones", headers=headers, timeout=T)
        assert (resp.status_code, resp.text) == (401, "Unauthorized")
        assert resp.headers["Content-Type"].startswith("text/plain")
    resp = requests.patch(powerdns.zone_url("example.test"), headers={"X-API-Key": "x"}, timeout=T,
                          json={"rrsets": [replace("vm1.example.test.", "A", "192.0.2.1")]})
    assert (resp.status_code, resp.text) == (401, "Unauthorized")
    assert powerdns.records("example.test", "vm1.example.test", "A") is None
    for method in ("get", "patch"):
        resp = requests.request(method, powerdns.zone_url("nope.test"), headers=powerdns.headers,
                                json={"rrsets": []}, timeout=T)
        assert (resp.status_code, resp.text) == (404, "Not Found")
        assert resp.headers["Content-Type"].startswith("text/plain")
    resp = requests.patch(powerdns.zone_url("example.test"), headers=powerdns.headers, data="not json",
                          timeout=T)
    assert (resp.status_code, resp.text) == (400, "Bad Request")
    # the zone id in the URL works without its trailing dot too
    resp = requests.get(f"{powerdns.api_url}/zones/example.test", headers=powerdns.headers, timeout=T)
    assert resp.status_code == 200 and resp.json()["id"] == "example.test."


def test_powerdns_delete_zone(powerdns):
    powerdns.create_zone("example.test")
    resp = requests.delete(powerdns.zone_url("example.test"), headers=powerdns.headers, timeout=T)
    assert resp.status_code == 204
    assert powerdns.zones() == []
    assert powerdns.dig_status("example.test", "SOA") == "REFUSED"


# ============================================================================ Cloudflare (fake)

ZONE = "023e105f4ecef8ad9ca31a8372d0c353"        # example.com
REV4 = "9a7806061c88ada191ed06f989cc3dac"        # 2.0.192.in-addr.arpa
REV6 = "c0ffee00c0ffee00c0ffee00c0ffee00"        # 8.b.d.0.1.0.0.2.ip6.arpa


def cf_call(cf, method: str, path: str, **kwargs) -> requests.Response:
    kwargs.setdefault("headers", cf.headers)
    return requests.request(method, f"{cf.base_url}{path}", timeout=T, **kwargs)


def cf_create(cf, zone_id: str, **record) -> requests.Response:
    return cf_call(cf, "POST", f"/zones/{zone_id}/dns_records", json=record)


def assert_cf_error(resp, status: int, *codes: int) -> list[dict]:
    body = resp.json()
    assert resp.status_code == status, body
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    assert [e["code"] for e in body["errors"]] == list(codes)
    return body["errors"]


def test_cloudflare_auth_errors(cloudflare):
    path = f"/zones/{ZONE}/dns_records"
    errors = assert_cf_error(cf_call(cloudflare, "GET", path, headers={}), 401, 10000)
    assert errors[0]["message"] == "Authentication error"
    wrong = "A" * 40
    assert_cf_error(cf_call(cloudflare, "GET", path, headers={"Authorization": f"Bearer {wrong}"}), 403, 10000)
    errors = assert_cf_error(cf_call(cloudflare, "GET", path, headers={"Authorization": "Bearer short"}),
                             400, 6003)
    assert errors[0]["error_chain"] == [{"code": 6111, "message": "Invalid format for Authorization header"}]
    assert_cf_error(cf_call(cloudflare, "POST", path, headers={"Authorization": f"Token {cloudflare.token}"},
                            json={}), 400, 6003)
    assert cloudflare.records(ZONE) == []
    ok = cf_call(cloudflare, "GET", "/user/tokens/verify").json()
    assert ok["success"] and ok["result"]["status"] == "active"
    assert ok["messages"][0]["message"] == "This API Token is valid and active"


def test_cloudflare_zone_details_and_bad_zone_id(cloudflare):
    body = cf_call(cloudflare, "GET", f"/zones/{ZONE}").json()
    assert body["success"] is True and body["errors"] == []
    assert {k: body["result"][k] for k in ("id", "name", "status")} == \
        {"id": ZONE, "name": "example.com", "status": "active"}
    listed = cf_call(cloudflare, "GET", "/zones", params={"name": "2.0.192.in-addr.arpa"}).json()
    assert [z["id"] for z in listed["result"]] == [REV4]
    for bad in ("example.com", "ffffffffffffffffffffffffffffffff"):
        errors = assert_cf_error(cf_call(cloudflare, "GET", f"/zones/{bad}/dns_records"), 400, 7003, 7000)
        assert errors[0]["message"] == (f"Could not route to /client/v4/zones/{bad}/dns_records, "
                                        "perhaps your object identifier is invalid?")
        assert errors[1]["message"] == "No route for that URI"
        assert_cf_error(cf_create(cloudflare, bad, type="A", name="vm1", content="192.0.2.1"), 400, 7003, 7000)


def test_cloudflare_create_forward_and_reverse_records(cloudflare):
    a = cf_create(cloudflare, ZONE, type="A", name="vm1", content="192.0.2.1", ttl=300).json()
    assert a["success"] is True and a["errors"] == []
    rec = a["result"]
    assert {k: rec[k] for k in ("type", "name", "content", "ttl", "proxied", "zone_id", "zone_name")} == {
        "type": "A", "name": "vm1.example.com", "content": "192.0.2.1", "ttl": 300, "proxied": False,
        "zone_id": ZONE, "zone_name": "example.com"}
    assert len(rec["id"]) == 32
    aaaa = cf_create(cloudflare, ZONE, type="AAAA", name="vm1.example.com", content="2001:DB8:0:0::1",
                     proxied=True, ttl=300).json()["result"]
    assert (aaaa["name"], aaaa["content"], aaaa["proxied"], aaaa["ttl"]) == \
        ("vm1.example.com", "2001:db8::1", True, 1)
    apex = cf_create(cloudflare, ZONE, type="A", name="@", content="192.0.2.2").json()["result"]
    assert (apex["name"], apex["ttl"]) == ("example.com", 1)
    ptr = cf_create(cloudflare, REV4, type="PTR", name="1.2.0.192.in-addr.arpa.",
                    content="vm1.example.com.", ttl=3600).json()["result"]
    assert (ptr["name"], ptr["content"], ptr["proxiable"]) == ("1.2.0.192.in-addr.arpa", "vm1.example.com", False)
    ptr6 = cf_create(cloudflare, REV6, type="PTR", name="1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0",
                     content="vm1.example.com").json()["result"]
    assert ptr6["name"] == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
    assert [r["id"] for r in cloudflare.records(ZONE)] == [rec["id"], aaaa["id"], apex["id"]]
    assert cloudflare.records(REV4)[0]["content"] == "vm1.example.com"


def test_cloudflare_duplicate_is_81057(cloudflare):
    assert cf_create(cloudflare, ZONE, type="A", name="vm1", content="192.0.2.1").status_code == 200
    errors = assert_cf_error(cf_create(cloudflare, ZONE, type="A", name="VM1.example.com.", content="192.0.2.1"),
                             400, 81057)
    assert errors[0]["message"] == "Record already exists."
    # same name, other content: a second A record is fine (round robin)
    assert cf_create(cloudflare, ZONE, type="A", name="vm1", content="192.0.2.2").status_code == 200
    cloudflare.duplicate_error = (81058, "An identical record already exists.")
    assert_cf_error(cf_create(cloudflare, ZONE, type="A", name="vm1", content="192.0.2.2"), 400, 81058)
    assert len(cloudflare.records(ZONE)) == 2


@pytest.mark.parametrize("record, code, message", [
    ({"type": "A", "name": "vm1", "content": "192.0.2.300"}, 9005,
     "Content for A record must be a valid IPv4 address."),
    ({"type": "A", "name": "vm1", "content": "2001:db8::1"}, 9005,
     "Content for A record must be a valid IPv4 address."),
    ({"type": "AAAA", "name": "vm1", "content": "192.0.2.1"}, 9006,
     "Content for AAAA record must be a valid IPv6 address."),
    ({"type": "A", "name": "vm1", "content": "192.0.2.1", "ttl": 29}, 9021,
     "Invalid TTL. Must be between 30 and 86400 seconds, or 1 for automatic."),
    ({"type": "A", "name": "vm1", "content": "192.0.2.1", "ttl": 86401}, 9021,
     "Invalid TTL. Must be between 30 and 86400 seconds, or 1 for automatic."),
    ({"type": "A", "name": "vm1", "content": "192.0.2.1", "ttl": 0}, 9021,
     "Invalid TTL. Must be between 30 and 86400 seconds, or 1 for automatic."),
    ({"type": "PTR", "name": "1.2.0.192.in-addr.arpa", "content": "vm1.example.com", "proxied": True}, 9041,
     "Invalid proxied mode. Record cannot be proxied."),
    ({"type": "BOGUS", "name": "vm1", "content": "x"}, 1004, "DNS Validation Error"),
    ({"type": "A", "content": "192.0.2.1"}, 9000, "DNS name is invalid."),
])
def test_cloudflare_validation(cloudflare, record, code, message):
    zone = REV4 if record["type"] == "PTR" else ZONE
    errors = assert_cf_error(cf_create(cloudflare, zone, **record), 400, code)
    assert errors[0]["message"] == message
    assert cloudflare.records(zone) == []


@pytest.mark.parametrize("ttl", [1, 30, 86400])
def test_cloudflare_ttl_bounds_accepted(cloudflare, ttl):
    resp = cf_create(cloudflare, ZONE, type="A", name="vm1", content="192.0.2.1", ttl=ttl)
    assert resp.json()["result"]["ttl"] == ttl


def test_cloudflare_cname_conflict_is_81053(cloudflare):
    cf_create(cloudflare, ZONE, type="A", name="vm1", content="192.0.2.1")
    assert_cf_error(cf_create(cloudflare, ZONE, type="CNAME", name="vm1", content="other.example.net"),
                    400, 81053)
    cf_create(cloudflare, ZONE, type="CNAME", name="alias", content="vm1.example.com")
    assert_cf_error(cf_create(cloudflare, ZONE, type="AAAA", name="alias", content="2001:db8::1"), 400, 81053)


def test_cloudflare_list_filters(cloudflare):
    cf_create(cloudflare, ZONE, type="A", name="vm1", content="192.0.2.1")
    cf_create(cloudflare, ZONE, type="AAAA", name="vm1", content="2001:db8::1")
    cf_create(cloudflare, ZONE, type="A", name="vm2", content="192.0.2.2")
    cf_create(cloudflare, ZONE, type="TXT", name="vm2", content="hello")

    def names(**params):
        body = cf_call(cloudflare, "GET", f"/zones/{ZONE}/dns_records", params=params).json()
        assert body["success"] is True
        return sorted((r["type"], r["name"], r["content"]) for r in body["result"])

    assert names(name="vm1.example.com") == [("A", "vm1.example.com", "192.0.2.1"),
                                             ("AAAA", "vm1.example.com", "2001:db8::1")]
    assert names(name="VM1.example.com", type="AAAA") == [("AAAA", "vm1.example.com", "2001:db8::1")]
    assert names(type="A", content="192.0.2.2") == [("A", "vm2.example.com", "192.0.2.2")]
    assert names(**{"name.exact": "vm2.example.com", "type": "TXT"}) == [("TXT", "vm2.example.com", "hello")]
    assert names(name="vm1.example.com", content="hello", match="any") == [
        ("A", "vm1.example.com", "192.0.2.1"), ("AAAA", "vm1.example.com", "2001:db8::1"),
        ("TXT", "vm2.example.com", "hello")]
    assert names(name="nothing.example.com") == []
    assert len(names()) == 4


def test_cloudflare_pagination(cloudflare):
    for i in range(7):
        cf_create(cloudflare, ZONE, type="A", name=f"vm{i}", content=f"192.0.2.{i + 1}")
    seen = []
    for page, count in ((1, 3), (2, 3), (3, 1), (4, 0)):
        body = cf_call(cloudflare, "GET", f"/zones/{ZONE}/dns_records",
                       params={"page": page, "per_page": 3}).json()
        assert body["result_info"] == {"page": page, "per_page": 3, "count": count, "total_count": 7,
                                       "total_pages": 3}
        seen += [r["name"] for r in body["result"]]
    assert seen == [f"vm{i}.example.com" for i in range(7)]
    default = cf_call(cloudflare, "GET", f"/zones/{ZONE}/dns_records").json()["result_info"]
    assert (default["per_page"], default["total_pages"], default["count"]) == (100, 1, 7)


def test_cloudflare_update_and_delete(cloudflare):
    rec = cf_create(cloudflare, ZONE, type="A", name="vm1", content="192.0.2.1", ttl=300).json()["result"]
    other = cf_create(cloudflare, ZONE, type="A", name="vm2", content="192.0.2.2").json()["result"]
    path = f"/zones/{ZONE}/dns_records/{rec['id']}"

    patched = cf_call(cloudflare, "PATCH", path, json={"content": "192.0.2.10"}).json()["result"]
    assert (patched["id"], patched["name"], patched["content"], patched["ttl"]) == \
        (rec["id"], "vm1.example.com", "192.0.2.10", 300)
    assert_cf_error(cf_call(cloudflare, "PATCH", path, json={"content": "not-an-ip"}), 400, 9005)
    assert_cf_error(cf_call(cloudflare, "PATCH", path, json={"name": "vm2", "content": "192.0.2.2"}), 400, 81057)
    assert_cf_error(cf_call(cloudflare, "PUT", path, json={"content": "192.0.2.11"}), 400, 1004)  # PUT: whole record
    put = cf_call(cloudflare, "PUT", path, json={"type": "A", "name": "vm1", "content": "192.0.2.11"}).json()
    assert (put["result"]["content"], put["result"]["ttl"]) == ("192.0.2.11", 1)
    assert cf_call(cloudflare, "GET", path).json()["result"]["content"] == "192.0.2.11"

    deleted = cf_call(cloudflare, "DELETE", path).json()
    assert deleted == {"success": True, "errors": [], "messages": [], "result": {"id": rec["id"]}}
    errors = assert_cf_error(cf_call(cloudflare, "GET", path), 404, 81044)
    assert errors[0]["message"] == "Record does not exist."
    assert_cf_error(cf_call(cloudflare, "DELETE", path), 404, 81044)
    assert_cf_error(cf_call(cloudflare, "DELETE", f"/zones/{ZONE}/dns_records/12345"), 400, 7003, 7000)
    assert [r["id"] for r in cloudflare.records(ZONE)] == [other["id"]]


def test_cloudflare_request_log_failures_outage_and_latency(cloudflare):
    cf_call(cloudflare, "GET", f"/zones/{ZONE}/dns_records")
    cf_create(cloudflare, ZONE, type="A", name="vm1", content="192.0.2.1")
    assert cloudflare.requests == [("GET", f"/client/v4/zones/{ZONE}/dns_records"),
                                   ("POST", f"/client/v4/zones/{ZONE}/dns_records")]
    assert cloudflare.count("POST", "/dns_records") == 1

    cloudflare.fail_next(2, 503, 10001, "Service unavailable", headers={"Retry-After": "1"})
    for _ in range(2):
        resp = cf_create(cloudflare, ZONE, type="A", name="vm2", content="192.0.2.2")
        assert_cf_error(resp, 503, 10001)
        assert resp.headers["Retry-After"] == "1"
    assert len(cloudflare.records(ZONE)) == 1  # the failed calls changed nothing
    assert cf_create(cloudflare, ZONE, type="A", name="vm2", content="192.0.2.2").status_code == 200

    cloudflare.fail_next(1, 429, 971, "Please wait and consider throttling your request speed", method="DELETE")
    assert cf_call(cloudflare, "GET", f"/zones/{ZONE}").status_code == 200  # not a DELETE: unaffected
    rid = cloudflare.records(ZONE)[0]["id"]
    assert_cf_error(cf_call(cloudflare, "DELETE", f"/zones/{ZONE}/dns_records/{rid}"), 429, 971)
    assert cf_call(cloudflare, "DELETE", f"/zones/{ZONE}/dns_records/{rid}").status_code == 200

    port = cloudflare.port
    cloudflare.down = True
    with pytest.raises(requests.ConnectionError):
        cf_call(cloudflare, "GET", f"/zones/{ZONE}")
    cloudflare.down = False
    assert cloudflare.port == port
    assert cf_call(cloudflare, "GET", f"/zones/{ZONE}").status_code == 200

    cloudflare.latency = 0.5
    with pytest.raises(requests.Timeout):
        requests.get(f"{cloudflare.base_url}/zones/{ZONE}", headers=cloudflare.headers, timeout=0.1)
    cloudflare.latency = 0


def test_cloudflare_fakes_are_independent():
    with FakeCloudflare({"aa" * 16: "example.org"}, token="t" * 40) as one, FakeCloudflare() as two:
        assert one.port != two.port
        assert one.base_url.endswith("/client/v4")
        one.add_record("aa" * 16, "A", "www", "192.0.2.5")
        zid = two.add_zone("example.net")
        assert two.records(zid) == [] and len(one.records("aa" * 16)) == 1
        assert one.zone_id("example.org.") == "aa" * 16
        assert_cf_error(cf_call(two, "GET", f"/zones/{zid}", headers=one.headers), 403, 10000)


# ============================================================================ HestiaCP (fake)

def hst(fake, cmd: str, *args: str, auth: str = "keys", returncode: str | None = None, **extra):
    data = {**fake.auth(auth), "cmd": cmd, **{f"arg{i}": a for i, a in enumerate(args, 1)}, **extra}
    if returncode is not None:
        data["returncode"] = returncode
    return requests.post(fake.url, data=data, timeout=T)


def add(fake, *args: str, **kwargs):
    return hst(fake, "v-add-dns-record", "admin", *args, **kwargs)


def test_hestia_each_login_style(hestia):
    for style in ("keys", "hash", "password", "legacy_hash"):
        resp = hst(hestia, "v-list-dns-domains", "admin", "json", auth=style)
        assert resp.status_code == 200, (style, resp.text)
        assert sorted(resp.json()) == sorted(HESTIA_DOMAINS)
    # JSON bodies are accepted as well as forms
    resp = requests.post(hestia.url, json={**hestia.auth("keys"), "cmd": "v-list-dns-domains", "arg1": "admin",
                                           "arg2": "json"}, timeout=T)
    assert resp.status_code == 200 and "example.com" in resp.json()
    # keys answer 204 with nothing for a command that prints nothing; the legacy login answers "OK"
    resp = add(hestia, "example.com", "vm1", "A", "192.0.2.1")
    assert (resp.status_code, resp.text, resp.headers["Hestia-Exit-Code"]) == (204, "", "0")
    resp = add(hestia, "example.com", "vm2", "A", "192.0.2.2", auth="password")
    assert (resp.status_code, resp.text) == (200, "OK")
    assert [r["RECORD"] for r in hestia.find("admin", "example.com", rtype="A")] == ["@", "vm1", "vm2"]


def test_hestia_login_failures(hestia):
    cases = [
        ({"access_key": hestia.access_key, "secret_key": "x" * 40}, 401, "9",
         f"Error: Invalid secret key for key {hestia.access_key}"),
        ({"access_key": "A" * 20, "secret_key": hestia.secret_key}, 401, "9",
         f"Error: Access key {'A' * 20} doesn't exist"),
        ({"hash": f"{hestia.access_key}:{'y' * 40}"}, 401, "9",
         f"Error: Invalid secret key for key {hestia.access_key}"),
        ({"user": "admin", "password": "wrong"}, 401, "9", "Error: authentication failed"),
        ({"user": "bob", "password": hestia.password}, 401, "10", "Error: authentication failed"),
        ({"hash": "not-a-key"}, 401, "9", "Error: authentication failed"),
    ]
    for auth, status, code, text in cases:
        data = {**auth, "cmd": "v-list-dns-domains", "arg1": "admin", "arg2": "json"}
        resp = requests.post(hestia.url, data=data, timeout=T)
        assert (resp.status_code, resp.text, resp.headers["Hestia-Exit-Code"]) == (status, text, code), auth
        resp = requests.post(hestia.url, data={**data, "returncode": "yes"}, timeout=T)
        assert (resp.status_code, resp.text) == (status, code), auth
    resp = requests.post(hestia.url, data={"cmd": "v-list-dns-domains", "arg1": "admin"}, timeout=T)
    assert resp.status_code == 405
    assert resp.text == ("Error: data received is null or invalid, check "
                         "https://hestiacp.com/docs/server-administration/rest-api.html")
    # a key owned by another user may only name that user
    hestia.add_user("bob")
    access, secret = hestia.add_key("bob")
    resp = requests.post(hestia.url, data={"access_key": access, "secret_key": secret, "cmd": "v-list-dns-domains",
                                           "arg1": "admin", "arg2": "json"}, timeout=T)
    assert (resp.status_code, resp.headers["Hestia-Exit-Code"]) == (401, "10")
    resp = requests.post(hestia.url, data={"access_key": access, "secret_key": secret, "cmd": "v-list-dns-domains",
                                           "arg1": "bob", "arg2": "json"}, timeout=T)
    assert resp.status_code == 200 and resp.json() == {}
    assert len(hestia.records("admin", "example.com")) == 3  # none of the refused calls changed anything


def test_hestia_lists_are_json_keyed_by_name_and_id(hestia):
    domains = hst(hestia, "v-list-dns-domains", "admin", "json")
    assert domains.headers["Content-Type"].startswith("application/json")
    assert all(not d.endswith(".") for d in domains.json())
    assert domains.json()["example.com"]["RECORDS"] == "3"
    records = hst(hestia, "v-list-dns-records", "admin", "example.com", "json").json()
    assert list(records) == ["1", "2", "3"]
    assert records["3"] == {**records["3"], "ID": "3", "RECORD": "@", "TYPE": "A", "VALUE": "198.51.100.10",
                            "PRIORITY": "", "SUSPENDED": "no", "TTL": "14400"}
    assert [r["VALUE"] for r in records.values() if r["TYPE"] == "NS"] == ["ns1.example.net.", "ns2.example.net."]
    rev = hst(hestia, "v-list-dns-records", "admin", "2.0.192.in-addr.arpa", "json").json()
    assert [r["TYPE"] for r in rev.values()] == ["NS", "NS"]


def test_hestia_add_relative_names_and_trailing_dots(hestia):
    assert add(hestia, "example.com", "VM1", "a", "192.0.2.1", "", "", "", "300").status_code == 204
    assert add(hestia, "example.com", "vm1", "AAAA", "2001:db8::1").status_code == 204
    assert add(hestia, "example.com", "alias", "CNAME", "vm1.example.com").status_code == 204
    assert add(hestia, "2.0.192.in-addr.arpa", "1", "PTR", "vm1.example.com").status_code == 204
    assert add(hestia, "8.b.d.0.1.0.0.2.ip6.arpa", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0", "PTR",
               "vm1.example.com.").status_code == 204
    assert add(hestia, "example.com", "@", "TXT", "v=spf1 -all").status_code == 204
    assert add(hestia, "example.com", "@", "MX", "mail.example.com", "20").status_code == 204

    fwd = hestia.records("admin", "example.com")
    got = [(r["ID"], r["RECORD"], r["TYPE"], r["VALUE"], r["PRIORITY"], r["TTL"]) for r in fwd[3:]]
    assert got == [("4", "vm1", "A", "192.0.2.1", "", "300"),
                   ("5", "vm1", "AAAA", "2001:db8::1", "", "14400"),
                   ("6", "alias", "CNAME", "vm1.example.com.", "", "14400"),
                   ("7", "@", "TXT", '"v=spf1 -all"', "", "14400"),
                   ("8", "@", "MX", "mail.example.com.", "20", "14400")]
    assert hestia.find("admin", "2.0.192.in-addr.arpa", "1", "PTR")[0]["VALUE"] == "vm1.example.com."
    assert hestia.find("admin", "8.b.d.0.1.0.0.2.ip6.arpa", rtype="PTR")[0]["VALUE"] == "vm1.example.com."
    # Hestia does not refuse an identical record: it adds a second copy under a new ID
    assert add(hestia, "example.com", "vm1", "A", "192.0.2.1").status_code == 204
    assert [r["ID"] for r in hestia.find("admin", "example.com", "vm1", "A")] == ["4", "9"]
    # an explicit ID that is taken is E_EXISTS
    resp = add(hestia, "example.com", "vm3", "A", "192.0.2.3", "", "4")
    assert (resp.status_code, resp.text, resp.headers["Hestia-Exit-Code"]) == (400, "Error: ID=4 already exists", "4")


@pytest.mark.parametrize("args, status, code, text", [
    (("example.com", "vm1.example.com.", "A", "192.0.2.1"), 422, "2",
     "Error: invalid record format :: vm1.example.com."),
    (("example.com", "vm1", "A", "192.0.2.300"), 422, "2", "Error: invalid ip format :: 192.0.2.300"),
    (("example.com", "vm1", "BOGUS", "x"), 422, "2", "Error: invalid dns record type format :: BOGUS"),
    (("2.0.192.in-addr.arpa", "1", "PTR", "vm1"), 422, "2",
     "Error: PTR record vm1 should be a fully qualified domain name (FQDN)"),
    (("example.com", "vm1", "A", "192.0.2.1", "", "", "", "soon"), 422, "2", "Error: invalid ttl format :: soon"),
    (("nope.com", "vm1", "A", "192.0.2.1"), 400, "3", "Error: dns domain nope.com doesn't exist"),
    (("example.com", "vm1", "A"), 400, "1",
     "Usage: v-add-dns-record USER DOMAIN RECORD TYPE VALUE [PRIORITY] [ID] [RESTART] [TTL]"),
])
def test_hestia_add_errors(hestia, args, status, code, text):
    before = hestia.records("admin", "example.com")
    resp = add(hestia, *args)
    assert (resp.status_code, resp.text, resp.headers["Hestia-Exit-Code"]) == (status, text, code)
    resp = add(hestia, *args, returncode="yes")
    assert (resp.status_code, resp.text) == (200, code)
    resp = add(hestia, *args, auth="password")  # the legacy login prints the error with 200
    assert (resp.status_code, resp.text) == (200, text + "\n")
    assert hestia.records("admin", "example.com") == before


def test_hestia_unknown_user_and_domain_spelling(hestia):
    resp = hst(hestia, "v-list-dns-records", "bob", "example.com", "json")
    assert (resp.status_code, resp.text) == (400, "Error: user bob doesn't exist")
    # list scripts take the domain as given; add/delete tidy it (case, trailing dot, leading www.)
    resp = hst(hestia, "v-list-dns-records", "admin", "example.com.", "json")
    assert (resp.status_code, resp.text) == (400, "Error: dns domain example.com. doesn't exist")
    assert add(hestia, "Example.COM.", "vm1", "A", "192.0.2.1").status_code == 204
    assert add(hestia, "www.example.com", "vm2", "A", "192.0.2.2").status_code == 204
    assert [r["RECORD"] for r in hestia.find("admin", "example.com", rtype="A")] == ["@", "vm1", "vm2"]


def test_hestia_returncode_yes(hestia):
    resp = add(hestia, "example.com", "vm1", "A", "192.0.2.1", returncode="yes")
    assert (resp.status_code, resp.text) == (200, "0")
    resp = hst(hestia, "v-list-dns-records", "admin", "example.com", "json", returncode="yes")
    assert (resp.status_code, resp.text) == (200, "0")  # the code only: the listing is not sent
    resp = hst(hestia, "v-delete-dns-record", "admin", "example.com", "99", returncode="yes")
    assert (resp.status_code, resp.text) == (200, "3")
    resp = hst(hestia, "v-no-such-command", "admin", returncode="yes")
    assert (resp.status_code, resp.text) == (200, "1")
    resp = hst(hestia, "v-no-such-command", "admin")
    assert (resp.status_code, resp.text) == (400, "")


def test_hestia_delete_and_change(hestia):
    add(hestia, "example.com", "vm1", "A", "192.0.2.1")
    add(hestia, "2.0.192.in-addr.arpa", "1", "PTR", "vm1.example.com")
    vm1 = hestia.find("admin", "example.com", "vm1", "A")[0]["ID"]
    resp = hst(hestia, "v-change-dns-record", "admin", "example.com", vm1, "vm1", "A", "192.0.2.50")
    assert resp.status_code == 204
    assert hestia.find("admin", "example.com", "vm1", "A")[0]["VALUE"] == "192.0.2.50"

    assert hst(hestia, "v-delete-dns-record", "admin", "example.com", vm1).status_code == 204
    assert hestia.find("admin", "example.com", "vm1") == []
    resp = hst(hestia, "v-delete-dns-record", "admin", "example.com", vm1)
    assert (resp.status_code, resp.text) == (400, f"Error: example.com id {vm1} doesn't exist")
    ptr = hestia.find("admin", "2.0.192.in-addr.arpa", "1", "PTR")[0]["ID"]
    assert hst(hestia, "v-delete-dns-record", "admin", "2.0.192.in-addr.arpa", ptr).status_code == 204
    # the last A (or NS) record of a domain cannot go
    apex = hestia.find("admin", "example.com", "@", "A")[0]["ID"]
    resp = hst(hestia, "v-delete-dns-record", "admin", "example.com", apex)
    assert (resp.status_code, resp.text, resp.headers["Hestia-Exit-Code"]) == \
        (422, "Error: at least one A record should remain active", "2")
    assert hestia.find("admin", "example.com", "@", "A")


def test_hestia_request_log_failures_and_outage(hestia):
    hst(hestia, "v-list-dns-records", "admin", "example.com", "json")
    add(hestia, "example.com", "vm1", "A", "192.0.2.1")
    assert hestia.requests == [("v-list-dns-records", ("admin", "example.com", "json")),
                               ("v-add-dns-record", ("admin", "example.com", "vm1", "A", "192.0.2.1"))]
    assert hestia.count("v-add-dns-record") == 1

    hestia.fail_next(1, cmd="v-add-dns-record")
    assert hst(hestia, "v-list-dns-domains", "admin", "json").status_code == 200  # other commands pass
    resp = add(hestia, "example.com", "vm2", "A", "192.0.2.2")
    assert (resp.status_code, resp.text, resp.headers["Hestia-Exit-Code"]) == \
        (400, "Error: dns failed to restart", "20")
    assert hestia.find("admin", "example.com", "vm2") == []
    hestia.fail_next(1, 502, 15, "<html>502 Bad Gateway</html>")
    assert hst(hestia, "v-list-dns-domains", "admin", "json").status_code == 502
    assert add(hestia, "example.com", "vm2", "A", "192.0.2.2").status_code == 204

    hestia.down = True
    with pytest.raises(requests.ConnectionError):
        hst(hestia, "v-list-dns-domains", "admin", "json")
    hestia.down = False
    assert hst(hestia, "v-list-dns-domains", "admin", "json").status_code == 200


def test_hestia_seeded_records_and_url():
    with FakeHestia({"admin": {"example.org": [("@", "NS", "ns1.example.org"), ("@", "A", "192.0.2.9", 600)]}},
                    access_key="K" * 20, secret_key="S" * 40) as fake:
        assert fake.url.endswith("/api/") and fake.url.startswith("http://127.0.0.1:")
        assert fake.hash == f"{'K' * 20}:{'S' * 40}"
        assert [(r["TYPE"], r["VALUE"], r["TTL"]) for r in fake.records("admin", "example.org")] == \
            [("NS", "ns1.example.org.", "14400"), ("A", "192.0.2.9", "600")]
        resp = requests.post(fake.url.replace("/api/", "/other"), data=fake.auth(), timeout=T)
        assert resp.status_code == 404
