"""/api/v1: bearer tokens, the same validation as the panel, and an OpenAPI document that matches what the
API does (schemathesis finds no 500 and no answer outside the schema)."""
from __future__ import annotations

import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance
from hypothesis import HealthCheck, given, settings
from sqlalchemy import func, select

from core import admins
from core.extensions import db
from core.models import VM, IPPool
from tests.test_panel import seed_fleet


@pytest.fixture
def token(app):
    return admins.create_token("automation")


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def test_tokens_are_required_and_revocable(app, client, token, runner):
    assert client.get("/api/v1/pools").status_code == 401
    assert client.get("/api/v1/pools", headers=auth("pkvm_wrong")).status_code == 401
    assert client.get("/api/v1/pools", headers=auth(token)).status_code == 200
    assert runner.invoke(args=["admin", "token", "revoke", "--name", "automation"]).exit_code == 0
    answer = client.get("/api/v1/pools", headers=auth(token))
    assert answer.status_code == 401 and answer.get_json() == {"error": "unknown or revoked token"}


def test_token_cli_prints_a_token_once_and_stores_only_its_digest(app, runner, client):
    result = runner.invoke(args=["admin", "token", "create", "--name", "ci"])
    token = result.output.strip()
    assert result.exit_code == 0 and token.startswith("pkvm_")
    from core.models import ApiToken
    row = db.session.scalar(db.select(ApiToken))
    assert row.token_hash != token and token not in (row.token_hash + row.prefix)
    assert client.get("/api/v1/settings", headers=auth(token)).status_code == 200


def test_pools_crud_with_field_errors(client, token):
    seed_fleet(2)
    bad = client.post("/api/v1/pools", headers=auth(token), json={
        "server_id": 99, "family": 4, "bridge": "x y", "gateway": "192.0.2.1", "mask": 24,
        "first": "192.0.2.9", "last": "192.0.2.2"})
    assert bad.status_code == 400
    assert set(bad.get_json()["errors"]) == {"server_id", "bridge", "last"}
    created = client.post("/api/v1/pools", headers=auth(token), json={
        "server_id": 1, "family": 6, "bridge": "vmbr0", "vlan": 0, "gateway": "2001:db8::1", "mask": 64,
        "first": "2001:db8::2", "last": "2001:db8::ff"})
    assert created.status_code == 201
    pool = created.get_json()
    assert pool["size"] == 254 and pool["used"] == 0 and pool["rdns_zone"] == "0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
    listed = client.get("/api/v1/pools", headers=auth(token)).get_json()["items"]
    assert [p["used"] for p in listed] == [2, 0]
    changed = client.put(f"/api/v1/pools/{pool['id']}", headers=auth(token), json={"vlan": 30})
    assert changed.get_json()["vlan"] == 30
    refused = client.delete(f"/api/v1/pools/{listed[0]['id']}", headers=auth(token))
    assert refused.status_code == 409 and "allocated" in refused.get_json()["errors"]["pool"]
    assert client.delete(f"/api/v1/pools/{pool['id']}", headers=auth(token)).status_code == 204
    assert db.session.get(IPPool, pool["id"]) is None


def test_pools_that_would_hand_out_wrong_addresses_are_refused(client, token):
    """Found in review: overlapping pools of one server, a network or broadcast address in the range, a pool
    of nothing but its gateway, and an edit that moved a pool (or its family) from under its allocations
    were all taken."""
    seed_fleet(2)  # pool 1: 192.168.130.2 - .254 on server 1, .2 and .3 allocated
    base = {"server_id": 1, "family": 4, "bridge": "vmbr0", "vlan": 0, "mask": 24}

    def post(**fields):
        answer = client.post("/api/v1/pools", headers=auth(token), json={**base, **fields})
        assert answer.status_code == 400, answer.get_json()
        return answer.get_json()["errors"]
    assert "Overlaps pool 1 (192.168.130.2 – 192.168.130.254)" in post(
        gateway="192.168.130.1", first="192.168.130.100", last="192.168.130.120")["first"]
    errors = post(gateway="10.9.0.0", first="10.9.0.0", last="10.9.0.255")
    assert set(errors) == {"gateway", "first", "last"}
    assert "network's own address or its broadcast address" in errors["last"]
    assert "holds no address" in post(gateway="10.9.1.1", first="10.9.1.1", last="10.9.1.1", mask=32)["last"]
    moved = client.put("/api/v1/pools/1", headers=auth(token), json={"first": "192.168.130.10",
                                                                    "last": "192.168.130.20"})
    assert moved.status_code == 400
    assert "192.168.130.2, 192.168.130.3" in moved.get_json()["errors"]["first"]
    refamily = client.put("/api/v1/pools/1", headers=auth(token), json={
        "family": 6, "gateway": "2001:db8::1", "mask": 64, "first": "2001:db8::2", "last": "2001:db8::ff"})
    assert refamily.status_code == 400 and "family" in refamily.get_json()["errors"]
    assert client.put("/api/v1/pools/1", headers=auth(token), json={"last": "192.168.130.200"}).status_code == 200
    # and every field has its schema's JSON type (found in review: 24.7, true and "1" were taken as numbers)
    for field, value in (("mask", 24.7), ("mask", True), ("server_id", "1"), ("family", "IPv4")):
        typed = client.put("/api/v1/pools/1", headers=auth(token), json={field: value})
        assert typed.status_code == 400 and field in typed.get_json()["errors"], (field, value)


def test_vms_list_filters_log_reset_redeploy_delete(client, token):
    seed_fleet(3)
    page = client.get("/api/v1/vms?vm_status=ready&sort=id&dir=asc", headers=auth(token)).get_json()
    assert page["total"] == 2 and [v["service_id"] for v in page["items"]] == [5547, 5548]
    assert page["items"][0]["addresses"] == [{"address": "192.168.130.3", "rdns": "5547-1776530141.puqcloud.com"}]
    assert client.get("/api/v1/vms?per_page=0", headers=auth(token)).status_code == 400
    assert client.get("/api/v1/vms/5546/log", headers=auth(token)).get_json()["runs"] == []
    bad = client.post("/api/v1/vms/5546/reset", headers=auth(token), json={"status": "nope"})
    assert bad.status_code == 400 and "status" in bad.get_json()["errors"]
    assert client.post("/api/v1/vms/5546/reset", headers=auth(token), json={"status": "creation"}).status_code == 200
    assert db.session.get(VM, 5546).status == "creation"
    for status in ("set_dns_records", "change_package"):  # both end at ready: not for a VM not cloned yet
        refused = client.post("/api/v1/vms/5546/reset", headers=auth(token), json={"status": status})
        assert refused.status_code == 400 and "not deployed" in refused.get_json()["errors"]["status"]
        assert db.session.get(VM, 5546).status == "creation"
    assert client.post("/api/v1/vms/5547/redeploy", headers=auth(token)).status_code == 409
    assert client.post("/api/v1/vms/5546/redeploy", headers=auth(token)).status_code == 202
    assert client.delete("/api/v1/vms/5546", headers=auth(token)).status_code == 409
    client.post("/api/v1/vms/5546/reset", headers=auth(token), json={"status": "remove"})
    assert client.delete("/api/v1/vms/5546", headers=auth(token)).status_code == 204
    assert client.get("/api/v1/vms/5546", headers=auth(token)).status_code == 404


def test_settings_and_products_validate_all_or_nothing(client, token):
    seed_fleet(1)
    bad = client.put("/api/v1/settings", headers=auth(token), json={"api_timeout": 500, "api_heavy_timeout": 30})
    assert bad.status_code == 400 and list(bad.get_json()["errors"]) == ["api_timeout"]
    assert client.get("/api/v1/settings", headers=auth(token)).get_json()["api_heavy_timeout"] == 60
    secret = client.put("/api/v1/settings", headers=auth(token), json={"whmcs_api_secret": "hunter2-secret"})
    assert secret.get_json()["whmcs_api_secret"] == {"set": True}
    assert "hunter2" not in client.get("/api/v1/settings", headers=auth(token)).get_data(as_text=True)
    bad = client.put("/api/v1/products/1", headers=auth(token), json={"cpu_cores": 0, "ram_mb": 2048})
    assert bad.status_code == 400 and list(bad.get_json()["errors"]) == ["cpu_cores"]
    ok = client.put("/api/v1/products/1", headers=auth(token), json={"cpu_cores": 4})
    assert ok.get_json()["settings"]["cpu_cores"] == 4 and ok.get_json()["settings"]["ram_mb"] == 1024


def test_read_only_token_group(client, app):
    group = admins.create_group("monitoring", ["vms", "dashboard"], can_change=False)
    token = admins.create_token("monitor", group)
    seed_fleet(1)
    assert client.get("/api/v1/vms", headers=auth(token)).status_code == 200
    assert client.get("/api/v1/pools", headers=auth(token)).status_code == 403
    assert client.post("/api/v1/vms/5546/reset", headers=auth(token), json={"status": "ready"}).status_code == 403


def test_no_secret_in_any_answer(client, token):
    seed_fleet(2)
    from core.models import Server
    server = db.session.get(Server, 1)
    from core.vault import seal
    server.token_secret = seal("proxmox-token-secret-value")
    db.session.commit()
    for url in ("/api/v1/servers", "/api/v1/pools", "/api/v1/vms", "/api/v1/settings", "/api/v1/products"):
        text = client.get(url, headers=auth(token)).get_data(as_text=True)
        assert "proxmox-token-secret-value" not in text and "enc:v1" not in text


@pytest.fixture
def api_schema(app, token):
    seed_fleet(3)
    response = app.test_client().get("/api/v1/openapi.json", headers=auth(token))
    assert response.status_code == 200 and response.get_json()["openapi"] == "3.1.0"
    schema = schemathesis.openapi.from_dict(response.get_json())

    @schema.auth()
    class Bearer:
        """Our token on every generated call, applied as part of the case (so that a negative case whose
        only flaw was a missing Authorization header is known to have been completed, not accepted)."""

        def get(self, case, ctx):
            return token

        def set(self, case, data, ctx):
            case.headers = {**(case.headers or {}), **auth(data)}
    return schema


def test_schemathesis_finds_no_500_and_no_answer_outside_the_schema(app, token, api_schema):
    """Property-based: for every operation, generated requests (valid and invalid) never give a 500, and
    every answer matches the documented status codes and schemas."""
    failures = []
    for result, mode in ((r, m) for r in api_schema.get_all_operations()
                         for m in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
        operation = result.ok()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call(app=app)
            # Authentication is tested above (this check would resend our valid token and call it ignored), and
            # rules no schema can state (the server exists, the range lies in the prefix) reject some
            # schema-valid bodies with a 400 and field errors: that is the validation working.
            case.validate_response(response, excluded_checks=[ignored_auth, positive_data_acceptance])

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure
            failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)


def test_searches_that_look_like_numbers_but_are_not_ids(client, token):
    """Found by schemathesis: "¹" is a digit to Python but no number, and an id beyond 32 bits names nothing;
    both are searched as text, never a 500. An empty page size is no number either."""
    seed_fleet(3)
    for term in ("¹", "99999999999999999999999", "#٣"):
        answer = client.get("/api/v1/vms", query_string={"q": term}, headers=auth(token))
        assert answer.status_code == 200 and answer.get_json()["total"] == 0, term
    answer = client.get("/api/v1/vms?per_page=", headers=auth(token))
    assert answer.status_code == 400 and "per_page" in answer.get_json()["errors"]


def test_dns_zone_fields_must_be_strings(client, token):
    """Found by schemathesis: numbers where the schema says strings were once stored as they came."""
    answer = client.post("/api/v1/dns-zones", headers=auth(token),
                         json={"name": 1.5, "provider": "cloudflare", "account_id": 121645100408832001})
    assert answer.status_code == 400 and set(answer.get_json()["errors"]) == {"name", "account_id"}


def test_text_no_database_can_store_is_a_field_error(client, token):
    """Found in an audit: half of a surrogate pair in a DNS zone's API key failed its encryption (a 500), and
    in a setting it was a database error on MariaDB."""
    answer = client.post("/api/v1/dns-zones", headers=auth(token), json={
        "name": "example.com", "provider": "cloudflare", "zone_id": "z", "api_key": "k\ud800k"})
    assert answer.status_code == 400
    assert answer.get_json()["errors"] == {"api_key": "must be valid text (it holds half of a UTF-16 surrogate pair)"}
    answer = client.put("/api/v1/settings", headers=auth(token), json={"whmcs_api_identifier": "a\x00b"})
    assert answer.status_code == 400
    assert answer.get_json()["errors"] == {"whmcs_api_identifier": "must not contain a NUL character"}


def test_a_search_no_database_can_run_is_a_field_error_on_every_backend(any_db_app):
    """Found in review: a NUL in a search was a 500 on PostgreSQL, which refuses it in any text."""
    from tests.test_panel import login
    seed_fleet(1)
    token = admins.create_token("automation")
    client = any_db_app.test_client()
    answer = client.get("/api/v1/vms?q=a%00b", headers=auth(token))
    assert answer.status_code == 400 and answer.get_json()["errors"] == {"q": "must not contain a NUL character"}
    admins.create_admin("root", "correct horse battery")
    login(client, password="correct horse battery")
    page = client.get("/vms?q=a%00b")
    assert page.status_code == 400 and "cannot be stored (a NUL)" in page.get_data(as_text=True)
    assert client.get("/vms?q=5546").status_code == 200


def test_out_of_range_mask_on_update_is_a_field_error(client, token):
    """Found by schemathesis: a huge mask on an existing pool once reached ipaddress and gave a 500."""
    seed_fleet(1)
    answer = client.put("/api/v1/pools/1", headers=auth(token), json={"mask": 225486493, "vlan": -1})
    assert answer.status_code == 400 and set(answer.get_json()["errors"]) == {"mask", "vlan"}


def test_null_settings_are_refused(client, token):
    answer = client.put("/api/v1/settings", headers=auth(token), json={"delete_data_on_uninstall": None})
    assert answer.status_code == 400 and "delete_data_on_uninstall" in answer.get_json()["errors"]


def test_hostile_bodies_get_field_errors_not_a_500(client, token):
    """Found in review: a server id past the database's integers and a body nested deeper than the JSON
    parser goes answered 500."""
    seed_fleet(1)
    before = db.session.scalar(select(func.count()).select_from(IPPool))
    huge = client.post("/api/v1/pools", headers=auth(token), json={
        "server_id": 10**40, "family": 4, "bridge": "vmbr0", "gateway": "192.0.2.1", "mask": 24,
        "first": "192.0.2.2", "last": "192.0.2.9"})
    assert huge.status_code == 400 and set(huge.get_json()["errors"]) == {"server_id"}
    nested = client.post("/api/v1/pools", headers={**auth(token), "Content-Type": "application/json"},
                         data="[" * 100000 + "]" * 100000)
    assert nested.status_code == 400 and nested.get_json()["errors"] == {"body": "must be a JSON object"}
    assert db.session.scalar(select(func.count()).select_from(IPPool)) == before
