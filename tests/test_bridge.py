"""The signed bridge: authentication, payload validation, CreateAccount's bookkeeping."""
from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from bridge.signing import signed_headers
from core.extensions import db
from core.models import VM, BridgeNonce, Client, ModuleLog, Product, Server, Service
from core.vault import unseal


def params(service_id=5546, **extra):
    base = {"serviceid": service_id, "userid": 7, "pid": 3, "serverid": 2, "productname": "VPS Start",
            "domain": "vps.example.com", "username": "root", "password": "S3cret-pass", "status": "Active",
            "serverhostname": "127.0.0.1", "serverport": 8006, "serverusername": "root@pam!whmcs",
            "serverpassword": "token-secret-value",
            "clientsdetails": {"firstname": "Ruslan", "lastname": "Client", "email": "c@example.com"}}
    base.update(extra)
    return base


def configure_product(pid=3, **values):
    product = db.session.get(Product, pid) or Product(id=pid, name="VPS Start")
    product.settings = {"template_vmid": 9000, "template_node": "pve1", **values}
    db.session.add(product)
    db.session.commit()


def counts():
    return {m.__name__: db.session.scalar(select(func.count()).select_from(m))
            for m in (VM, Service, Server, Client, Product, ModuleLog)}


def test_create_account_records_vm_and_returns_success(bridge):
    configure_product()
    # a custom field named like a password is masked in the module log too, as the shim masks it
    answer = bridge.call("CreateAccount", {**params(), "customfields": {"Root Password": "cf-root-pw",
                                                                        "SSH Key": "ssh-ed25519 AAAA"}})
    assert answer.status_code == 200
    assert answer.get_json()["result"] == "success"
    vm = db.session.get(VM, 5546)
    assert vm.status == "creation" and vm.vmid is None
    assert vm.name == "vps-7-5546"
    service = db.session.get(Service, 5546)
    assert service.password != "S3cret-pass" and unseal(service.password) == "S3cret-pass"
    server = db.session.get(Server, 2)
    assert server.token_id == "root@pam!whmcs"
    assert server.token_secret.startswith("enc:v1:") and unseal(server.token_secret) == "token-secret-value"
    assert server.verify_tls is True
    log = db.session.scalars(select(ModuleLog)).one()
    assert "token-secret-value" not in log.request and "S3cret-pass" not in log.request
    assert "cf-root-pw" not in log.request and "ssh-ed25519 AAAA" in log.request
    # and encrypted at rest, as the service password is (found in an audit: stored as sent)
    fields = service.customfields
    assert fields["Root Password"].startswith("enc:v1:") and unseal(fields["Root Password"]) == "cf-root-pw"
    assert fields["SSH Key"] == "ssh-ed25519 AAAA"


def test_create_account_twice_does_not_start_a_second_vm(bridge):
    configure_product()
    assert bridge.call("CreateAccount", params()).get_json()["queued"] is True
    vm = db.session.get(VM, 5546)
    vm.status = "clone"
    db.session.commit()
    again = bridge.call("CreateAccount", params()).get_json()
    assert again == {"result": "success", "status": "clone", "queued": False}
    assert counts()["VM"] == 1


def test_calls_keep_the_rows_in_step_with_whmcs_on_every_backend(any_db_app):
    """Each call upserts client, product, server and service; the rows every call shares (server, product)
    are written only when a call changes them. No cookie is read or set for a bridge call."""
    from conftest import Bridge, FreshContextClient
    any_db_app.test_client_class = FreshContextClient
    bridge = Bridge(any_db_app, any_db_app.test_client())
    configure_product()
    first = bridge.call("CreateAccount", params())
    assert first.get_json()["result"] == "success" and "Set-Cookie" not in first.headers
    server, product = db.session.get(Server, 2), db.session.get(Product, 3)
    stamps, sealed = (server.updated_at, product.updated_at), server.token_secret
    assert bridge.call("CreateAccount", params(5547, userid=8)).get_json()["queued"] is True
    db.session.rollback()  # a fresh snapshot (MariaDB's repeatable read)
    server, product = db.session.get(Server, 2), db.session.get(Product, 3)
    assert (server.updated_at, product.updated_at) == stamps and server.token_secret == sealed
    service_stamp = db.session.get(Service, 5546).updated_at
    assert bridge.call("CreateAccount", params()).get_json()["queued"] is False
    db.session.rollback()
    if db.engine.dialect.name != "mysql":  # MariaDB always updates; InnoDB skips the identical row itself
        assert db.session.get(Service, 5546).updated_at == service_stamp  # the same call: nothing written

    again = params(configoptions={"CPU": "4"}, serverpassword="rotated-secret", productname="VPS Plus",
                   clientsdetails={"firstname": "Ruslan", "lastname": "Client", "email": "new@example.com"})
    answer = bridge.call("CreateAccount", again)
    assert answer.get_json() == {"result": "success", "status": "creation", "queued": False}
    db.session.rollback()  # a fresh snapshot (MariaDB's repeatable read)
    assert db.session.get(Service, 5546).configoptions == {"CPU": "4"}
    assert db.session.get(Client, 7).email == "new@example.com"
    assert unseal(db.session.get(Server, 2).token_secret) == "rotated-secret"
    assert db.session.get(Product, 3).name == "VPS Plus"
    assert db.session.get(Product, 3).settings["template_vmid"] == 9000
    assert db.session.scalar(select(func.count()).select_from(ModuleLog)) == 4

    # a replay does its writes and is refused at its nonce: all of them undone
    body = json.dumps(params(5548, userid=9)).encode()
    headers = signed_headers(any_db_app.config["BRIDGE_SECRET"], "POST", "/bridge/v1/module/CreateAccount", body)
    assert bridge.call("CreateAccount", None, raw=body, headers=headers).get_json()["queued"] is True
    db.session.rollback()
    db.session.delete(db.session.get(VM, 5548))
    db.session.commit()
    before = counts()
    _assert_refused(bridge.call("CreateAccount", None, raw=body, headers=headers), before, "replayed")


def test_create_account_without_template_is_an_error_for_the_admin(bridge):
    answer = bridge.call("CreateAccount", params())
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["result"] == "error" and "template" in body["message"]
    assert db.session.get(VM, 5546) is None


def test_malformed_params_are_400_field_by_field_and_write_nothing(bridge):
    before = counts()
    bad = params(serviceid="abc", pid=None, serverusername="root", configoptions=[1, 2])
    bad.pop("serverpassword")
    answer = bridge.call("CreateAccount", bad)
    assert answer.status_code == 400
    errors = answer.get_json()["errors"]
    assert set(errors) >= {"serviceid", "pid", "serverusername", "serverpassword", "configoptions"}
    assert "user@realm!tokenid" in errors["serverusername"]
    assert counts() == before


def test_text_no_database_can_store_is_400_field_by_field_on_every_backend(any_db_app):
    """Found in an audit: a NUL (which the shim sends as \\u0000 for a NUL byte in any WHMCS string) or half
    of a surrogate pair passed validation and failed in the database: a 500 (a NUL only on PostgreSQL).
    Refused field by field now, nested maps too, nothing written, and not replayable."""
    from conftest import Bridge, FreshContextClient
    any_db_app.test_client_class = FreshContextClient
    client = any_db_app.test_client()
    bridge = Bridge(any_db_app, client)
    configure_product()
    before = counts()
    bad = params(domain="vps\x00.example.com", clientsdetails={"firstname": "Ada\ud800", "email": "c@example.com"},
                 customfields={"Note\x00": "x"})
    body = json.dumps(bad).encode()
    assert b"\\u0000" in body and b"\\ud800" in body  # as JSON carries them
    headers = signed_headers(any_db_app.config["BRIDGE_SECRET"], "POST", "/bridge/v1/module/CreateAccount", body)
    answer = client.post("/bridge/v1/module/CreateAccount", data=body, headers=headers)
    assert answer.status_code == 400, answer.get_data(as_text=True)
    assert answer.get_json()["errors"] == {
        "domain": "must not contain a NUL character",
        "clientsdetails.firstname": "must be valid text (it holds half of a UTF-16 surrogate pair)",
        "customfields.Note\\x00": "the name must not contain a NUL character"}
    assert counts() == before
    again = client.post("/bridge/v1/module/CreateAccount", data=body, headers=headers)
    assert again.status_code == 401
    # an emoji (a whole surrogate pair, as PHP's json_encode escapes it) is text like any other
    assert bridge.call("CreateAccount", params(clientsdetails={"firstname": "Ada \U0001F600"})).status_code == 200


def test_non_object_body_is_400(bridge):
    answer = bridge.call("CreateAccount", None, raw=b"[1,2,3]")
    assert answer.status_code == 400
    assert answer.get_json()["errors"] == {"body": "must be a JSON object with the WHMCS module parameters"}


def test_unknown_function_is_404(bridge):
    answer = bridge.call("NoSuchThing", params())
    assert answer.status_code == 404
    assert "CreateAccount" in answer.get_json()["functions"]


def _assert_refused(answer, before, fragment):
    assert answer.status_code == 401
    body = answer.get_json()
    assert body["result"] == "error" and fragment in body["message"]
    assert counts() == before


def test_unsigned_call_is_refused(bridge, client):
    configure_product()
    before = counts()
    answer = client.post("/bridge/v1/module/CreateAccount", json=params())
    _assert_refused(answer, before, "missing signature")


def test_forged_signature_is_refused(bridge):
    configure_product()
    before = counts()
    _assert_refused(bridge.call("CreateAccount", params(), secret="not-the-secret"), before, "bad signature")


def test_tampered_body_is_refused(bridge, app):
    configure_product()
    before = counts()
    body = b'{"serviceid": 1}'
    headers = signed_headers(app.config["BRIDGE_SECRET"], "POST", "/bridge/v1/module/CreateAccount", body)
    answer = bridge.call("CreateAccount", None, raw=b'{"serviceid": 2}', headers=headers)
    _assert_refused(answer, before, "bad signature")


def test_signature_binds_the_path(bridge, app):
    configure_product()
    before = counts()
    body = b"{}"
    headers = signed_headers(app.config["BRIDGE_SECRET"], "POST", "/bridge/v1/module/TestConnection", body)
    _assert_refused(bridge.call("CreateAccount", None, raw=body, headers=headers), before, "bad signature")


def test_stale_and_future_calls_are_refused(bridge):
    configure_product()
    before = counts()
    _assert_refused(bridge.call("CreateAccount", params(), now=time.time() - 301), before, "stale")
    _assert_refused(bridge.call("CreateAccount", params(), now=time.time() + 301), before, "stale")


def test_replayed_call_is_refused(bridge, app, client):
    configure_product()
    body = json.dumps(params()).encode()
    headers = signed_headers(app.config["BRIDGE_SECRET"], "POST", "/bridge/v1/module/CreateAccount", body)
    first = client.post("/bridge/v1/module/CreateAccount", data=body, headers=headers)
    assert first.status_code == 200
    db.session.delete(db.session.get(VM, 5546))
    db.session.commit()
    before = counts()
    second = client.post("/bridge/v1/module/CreateAccount", data=body, headers=headers)
    _assert_refused(second, before, "replayed")
    assert db.session.scalar(select(func.count()).select_from(BridgeNonce)) == 1


def test_refused_and_malformed_calls_cannot_be_replayed_either(bridge, app, client):
    """The nonce of a 400 or of a call that failed inside is kept, though nothing else of the call is."""
    configure_product()
    for raw in (b"[1,2,3]", json.dumps(params(serviceid="abc")).encode()):
        headers = signed_headers(app.config["BRIDGE_SECRET"], "POST", "/bridge/v1/module/CreateAccount", raw)
        assert client.post("/bridge/v1/module/CreateAccount", data=raw, headers=headers).status_code == 400
        again = client.post("/bridge/v1/module/CreateAccount", data=raw, headers=headers)
        assert again.status_code == 401 and "replayed" in again.get_json()["message"]


def test_create_account_writes_nothing_when_it_fails_midway(bridge, app, client, monkeypatch):
    """One transaction: a failure after the client and service rows were written leaves none of them."""
    from core import accounts
    configure_product()
    before = counts()

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(accounts, "render_vm_name", broken)
    body = json.dumps(params()).encode()
    headers = signed_headers(app.config["BRIDGE_SECRET"], "POST", "/bridge/v1/module/CreateAccount", body)
    answer = client.post("/bridge/v1/module/CreateAccount", data=body, headers=headers)
    assert answer.status_code == 500 and "traceback" not in answer.get_data(as_text=True).lower()
    db.session.expire_all()
    assert counts() == before
    again = client.post("/bridge/v1/module/CreateAccount", data=body, headers=headers)
    assert again.status_code == 401 and "replayed" in again.get_json()["message"]


def test_a_timestamp_of_unicode_digits_is_refused_not_a_500(bridge, app):
    configure_product()
    before = counts()
    body = b"{}"
    headers = signed_headers(app.config["BRIDGE_SECRET"], "POST", "/bridge/v1/module/CreateAccount", body)
    headers["X-Bridge-Timestamp"] = "\u00b9\u00b2\u00b3"  # digits to str.isdigit, not to int()
    _assert_refused(bridge.call("CreateAccount", None, raw=body, headers=headers), before, "unix seconds")


def test_malformed_signature_headers_are_refused_not_a_500(bridge, app):
    """Found in review: a 5,000-digit timestamp (beyond int()'s limit) and a non-ASCII signature (which
    compare_digest refuses) were 500s with a traceback in the log, for anyone."""
    configure_product()
    before = counts()
    body = b"{}"
    for header, value, message in (("X-Bridge-Timestamp", "1" * 5000, "unix seconds"),
                                   ("X-Bridge-Signature", "\u00e9" * 64, "64 hex characters"),
                                   ("X-Bridge-Signature", "ab" * 16, "64 hex characters")):
        headers = signed_headers(app.config["BRIDGE_SECRET"], "POST", "/bridge/v1/module/CreateAccount", body)
        headers[header] = value
        _assert_refused(bridge.call("CreateAccount", None, raw=body, headers=headers), before, message)


def test_a_stranger_cannot_make_the_bridge_read_a_large_body(app, client):
    """The headers are checked before the body is read, and no body over 1 MiB is taken at all."""
    import werkzeug.wrappers.request as wrappers
    reads = []
    original = wrappers.Request.get_data

    def counting(self, *args, **kwargs):
        reads.append(self.path)
        return original(self, *args, **kwargs)
    wrappers.Request.get_data = counting
    try:
        answer = client.post("/bridge/v1/module/CreateAccount", data=b"x" * 1000,
                             headers={"X-Bridge-Timestamp": "1", "X-Bridge-Nonce": "ab" * 8,
                                      "X-Bridge-Signature": "00" * 32})
        assert answer.status_code == 401 and "stale" in answer.get_json()["message"] and reads == []
    finally:
        wrappers.Request.get_data = original
    big = json.dumps({"serviceid": 1, "padding": "x" * (1024 * 1024)}).encode()
    headers = signed_headers(app.config["BRIDGE_SECRET"], "POST", "/bridge/v1/module/CreateAccount", big)
    answer = client.post("/bridge/v1/module/CreateAccount", data=big, headers=headers)
    assert answer.status_code == 413 and answer.get_json()["result"] == "error"


def test_create_account_succeeds_when_the_queue_is_down(bridge, monkeypatch):
    """The VM row is committed before the deploy is queued: if the queue cannot take it now, the call has
    still done its work (the next tick queues the VM), so WHMCS hears success."""
    from core import queue as work_queue
    configure_product()

    def down(_service_id):
        raise ConnectionError("Redis is down")
    monkeypatch.setattr(work_queue, "enqueue_vm", down)
    answer = bridge.call("CreateAccount", params())
    assert answer.status_code == 200 and answer.get_json() == {"result": "success", "status": "creation",
                                                                "queued": True}
    assert db.session.get(VM, 5546).status == "creation"


def test_short_nonce_is_refused(bridge, app):
    configure_product()
    before = counts()
    body = b"{}"
    headers = signed_headers(app.config["BRIDGE_SECRET"], "POST", "/bridge/v1/module/CreateAccount", body)
    headers["X-Bridge-Nonce"] = "abc"
    _assert_refused(bridge.call("CreateAccount", None, raw=body, headers=headers), before, "16 to 128 hex")


def test_ca_and_verify_flag_from_access_hash(bridge):
    configure_product()
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    bridge.call("CreateAccount", params(serveraccesshash="verify_tls=1\n" + pem))
    server = db.session.get(Server, 2)
    assert server.ca_pem.strip() == pem and server.verify_tls is True
    bridge.call("CreateAccount", params(serviceid=5547, serveraccesshash="verify_tls=0"))
    server = db.session.get(Server, 2)
    db.session.refresh(server)
    assert server.verify_tls is False


def test_bridge_secret_cli_prints_the_instance_secret(app, runner):
    result = runner.invoke(args=["bridge", "secret"])
    assert result.exit_code == 0
    assert result.output.strip() == app.config["BRIDGE_SECRET"] and len(result.output.strip()) == 64


def test_old_nonces_are_purged(bridge, app):
    from bridge.signing import purge_nonces
    db.session.add_all([BridgeNonce(nonce="a" * 32, seen_at=int(time.time()) - 700),
                        BridgeNonce(nonce="b" * 32, seen_at=int(time.time()))])
    db.session.commit()
    purge_nonces(int(time.time()) - 600)
    assert db.session.scalars(select(BridgeNonce.nonce)).all() == ["b" * 32]


def _instance_secret_in_child(folder):
    from core.config import instance_secret
    return instance_secret(folder, "data_key")


def test_processes_starting_together_agree_on_one_instance_secret(tmp_path):
    """Several server processes (gunicorn workers) creating instance/ at once: one value, never empty."""
    import multiprocessing
    import os
    context = multiprocessing.get_context("fork")
    for attempt in range(5):
        folder = str(tmp_path / f"instance{attempt}")
        with context.Pool(6) as pool:
            values = pool.map(_instance_secret_in_child, [folder] * 12)
        assert len(set(values)) == 1 and len(values[0]) == 64
        assert os.listdir(folder) == ["data_key"]
        assert os.stat(os.path.join(folder, "data_key")).st_mode & 0o777 == 0o600


def test_gunicorn_serves_the_bridge_from_several_processes(tmp_path):
    """The README's production server, `gunicorn 'app:create_app()'` after `flask db upgrade`, here with 3
    workers reading the one instance/ folder; signed calls from any of them are accepted once."""
    import http.client
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "PKVM_"))
           and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PKVM_INSTANCE_PATH=str(tmp_path / "instance"), PKVM_TICKER_SECONDS="0", FLASK_APP="app")
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "flask"), "db", "upgrade"], cwd=root, env=env, check=True, capture_output=True)
    secret = (tmp_path / "instance" / "bridge_secret").read_text().strip()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(bin_dir / "gunicorn"), "-w", "3", "-b", f"127.0.0.1:{port}", "--log-level",
                               "warning", "app:create_app()"], cwd=root, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)

        def post(body: bytes, headers: dict) -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("POST", "/bridge/v1/module/CreateAccount", body=body, headers=headers)
                answer = conn.getresponse()
                return answer.status, json.loads(answer.read())
            finally:
                conn.close()
        answers = []
        for sid in range(1, 7):
            body = json.dumps(params(service_id=sid)).encode()
            headers = signed_headers(secret, "POST", "/bridge/v1/module/CreateAccount", body)
            answers.append(post(body, headers))
        # no product template is set up: every call is stored and answered as an error for the admin
        assert all(status == 200 and "template" in answer["message"] for status, answer in answers), answers
        status, answer = post(body, headers)  # the last call again, to whichever worker takes it
        assert status == 401 and "replayed" in answer["message"]
    finally:
        server.terminate()
        server.wait(15)


def test_a_production_app_puts_its_start_up_objects_out_of_the_collectors_way(tmp_path):
    """gc.freeze() at the end of create_app outside tests: the full collections a 200-row page or a burst
    of calls sets off no longer walk everything start-up built (bench/panel_pages.py shows the effect)."""
    import gc

    from app import create_app
    gc.unfreeze()
    try:
        create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "t"), "REDIS_URL": None, "TICKER_SECONDS": 0,
                    "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 't.sqlite3'}"})
        assert gc.get_freeze_count() == 0  # tests build many apps: nothing of theirs is kept for ever
        create_app({"INSTANCE_PATH": str(tmp_path / "p"), "REDIS_URL": None, "TICKER_SECONDS": 0,
                    "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'p.sqlite3'}"})
        assert gc.get_freeze_count() > 10000
    finally:
        gc.unfreeze()


def test_a_database_errors_message_carries_no_parameters(app):
    """Found in an audit: the message of a database error, which the bridge logs, quoted the statement's
    parameters, a service's custom fields and passwords among them."""
    import pytest
    from sqlalchemy.exc import IntegrityError
    db.session.add(Client(id=1, firstname="first"))
    db.session.commit()
    db.session.add(Client(id=1, firstname="Customer-Data-Here"))
    with pytest.raises(IntegrityError) as failed:
        db.session.commit()
    db.session.rollback()
    assert "Customer-Data-Here" not in str(failed.value) and "parameters hidden" in str(failed.value)


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_database_server_that_dropped_the_connections_costs_no_call(tmp_path, kind):
    """A database server restarted (or a proxy or firewall that dropped idle connections) leaves the
    process's pooled connections dead: the next call is answered as if nothing happened."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from tests.conftest import MYSQL_ADMIN_URL, PG_ADMIN_URL, Bridge, database_url, make_app
    url, drop = database_url(kind, tmp_path)
    app = make_app(tmp_path, url)
    name = make_url(url).database
    admin = create_engine(PG_ADMIN_URL if kind == "postgresql" else MYSQL_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with app.app_context():
            bridge = Bridge(app, app.test_client())
            assert bridge.call("CreateAccount", params(service_id=1)).status_code == 200
            db.session.remove()  # the connection back in the pool, as at the end of every request
            with admin.connect() as conn:
                if kind == "postgresql":
                    killed = conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                               "WHERE datname = :name AND pid <> pg_backend_pid()"),
                                          {"name": name}).all()
                else:
                    ids = conn.execute(text("SELECT id FROM information_schema.processlist WHERE db = :name"),
                                       {"name": name}).scalars().all()
                    killed = [conn.execute(text(f"KILL {int(i)}")) for i in ids]
            assert killed  # the pooled connection was there, and is gone now
            answer = bridge.call("CreateAccount", params(service_id=2))
            assert answer.status_code == 200, answer.get_json()
            db.session.remove()
            db.engine.dispose()
    finally:
        admin.dispose()
        drop()
