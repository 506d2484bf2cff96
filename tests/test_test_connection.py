"""TestConnection: the API answers and the token holds the privileges the lifecycle needs."""
from __future__ import annotations

from pathlib import Path

import pytest


def server_params(fakepve, cafile, **extra):
    base = {"serverid": 4, "serverhostname": "127.0.0.1", "serverport": fakepve.port,
            "serverusername": "root@pam!whmcs", "serverpassword": "tok-secret",
            "serveraccesshash": Path(cafile).read_text()}
    base.update(extra)
    return base


def test_connection_ok(bridge, fakepve, fakepve_cafile):
    fakepve.apitokens["root@pam!whmcs"] = "tok-secret"
    answer = bridge.call("TestConnection", server_params(fakepve, fakepve_cafile))
    assert answer.status_code == 200
    assert answer.get_json() == {"success": True, "error": ""}


def test_wrong_secret_says_what_to_fix(bridge, fakepve, fakepve_cafile):
    fakepve.apitokens["root@pam!whmcs"] = "another"
    body = bridge.call("TestConnection", server_params(fakepve, fakepve_cafile)).get_json()
    assert body["success"] is False and "API token ID and secret" in body["error"]


def test_missing_privileges_are_listed(bridge, fakepve, fakepve_cafile):
    fakepve.apitokens["auditor@pve!whmcs"] = "tok-secret"
    fakepve.grant("auditor@pve!whmcs", "/", "Sys.Audit", "VM.Audit", "Datastore.Audit")
    body = bridge.call("TestConnection", server_params(fakepve, fakepve_cafile,
                                                       serverusername="auditor@pve!whmcs")).get_json()
    assert body["success"] is False
    assert "VM.Clone" in body["error"] and "VM.Allocate" in body["error"] and "PVEVMAdmin" in body["error"]
    assert "Sys.Audit" not in body["error"].split("privileges:")[1].split(".")[0]


def test_untrusted_certificate_is_explained(bridge, fakepve, fakepve_cafile):
    fakepve.apitokens["root@pam!whmcs"] = "tok-secret"
    body = bridge.call("TestConnection", server_params(fakepve, fakepve_cafile, serveraccesshash="")).get_json()
    assert body["success"] is False and "TLS verification failed" in body["error"]
    body = bridge.call("TestConnection", server_params(fakepve, fakepve_cafile,
                                                       serveraccesshash="verify_tls=0")).get_json()
    assert body == {"success": True, "error": ""}


def test_nothing_listening(bridge, fakepve_cafile):
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()

    class Closed:
        pass
    closed = Closed()
    closed.port = port
    body = bridge.call("TestConnection", server_params(closed, fakepve_cafile)).get_json()
    assert body["success"] is False and "cannot connect" in body["error"]


@pytest.mark.parametrize("field", ["serverusername", "serverpassword"])
def test_missing_credentials_are_400(bridge, fakepve, fakepve_cafile, field):
    params = server_params(fakepve, fakepve_cafile)
    params.pop(field)
    answer = bridge.call("TestConnection", params)
    assert answer.status_code == 400 and field in answer.get_json()["errors"]


def test_unsaved_server_is_tested_without_being_stored(bridge, fakepve, fakepve_cafile):
    from sqlalchemy import func, select

    from core.extensions import db
    from core.models import Server
    fakepve.apitokens["root@pam!whmcs"] = "tok-secret"
    params = server_params(fakepve, fakepve_cafile)
    params.pop("serverid")
    assert bridge.call("TestConnection", params).get_json() == {"success": True, "error": ""}
    assert db.session.scalar(select(func.count()).select_from(Server)) == 0


def test_nested_client_details_are_ignored_not_refused(bridge):
    from tests.test_bridge import configure_product, params
    configure_product()
    payload = params(clientsdetails={"firstname": "Ada", "customfields": [{"id": 1, "value": "x"}]})
    assert bridge.call("CreateAccount", payload).get_json()["result"] == "success"


def test_a_secret_with_a_line_break_is_refused_and_never_echoed(bridge, fakepve, fakepve_cafile):
    """Found in review: a token secret pasted with a line break made the HTTP client refuse the header, and
    its error, which quotes the whole Authorization header, went into the answer and the logs."""
    from core.proxmox.client import Endpoint, ProxmoxError, Pve
    answer = bridge.call("TestConnection", server_params(fakepve, fakepve_cafile, serverpassword="TOP-SECRET\n"))
    assert answer.status_code == 400 and "control characters" in answer.get_json()["errors"]["serverpassword"]
    assert "TOP-SECRET" not in answer.get_data(as_text=True)
    # one stored before this check: the error of every call says what failed, without the secret
    pve = Pve(Endpoint("127.0.0.1", fakepve.port, "root@pam!whmcs", "TOP-SECRET\r", True, fakepve_cafile))
    with pytest.raises(ProxmoxError) as failed:
        pve.get("version")
    assert "TOP-SECRET" not in failed.value.message and "********" in failed.value.message
    assert failed.value.__cause__ is None and failed.value.__suppress_context__  # nor in a logged traceback


def test_a_saved_server_that_answers_is_stored_so_its_pools_can_come_first(bridge, fakepve, fakepve_cafile):
    """Found in review: a server reached the product only with the first order, so its IP pools could not be
    set up before it and that first deploy failed for want of an address."""
    from core.extensions import db
    from core.models import Server
    from core.vault import unseal
    fakepve.apitokens["root@pam!whmcs"] = "tok-secret"
    assert bridge.call("TestConnection", server_params(fakepve, fakepve_cafile, serverid=5,
                                                       serverpassword="wrong")).get_json()["success"] is False
    assert db.session.get(Server, 5) is None  # one that does not answer is not kept
    assert bridge.call("TestConnection", server_params(fakepve, fakepve_cafile, serverid=5)).get_json() == \
        {"success": True, "error": ""}
    stored = db.session.get(Server, 5)
    assert stored.port == fakepve.port and stored.token_id == "root@pam!whmcs"
    assert unseal(stored.token_secret) == "tok-secret" and stored.token_secret != "tok-secret"


def test_a_stored_server_is_never_changed_by_a_test_of_unsaved_form_values(bridge, fakepve, fakepve_cafile):
    """Found in review: a test of a saved server's form with another working token (or host) overwrote the
    stored server before the admin saved anything; the workers then used it."""
    from core.extensions import db
    from core.models import Server
    from core.vault import unseal
    fakepve.apitokens["root@pam!whmcs"] = "tok-secret"
    fakepve.apitokens["root@pam!trial"] = "trial-secret"
    assert bridge.call("TestConnection", server_params(fakepve, fakepve_cafile, serverid=6)).get_json()["success"]
    trial = server_params(fakepve, fakepve_cafile, serverid=6, serverusername="root@pam!trial",
                          serverpassword="trial-secret")
    assert bridge.call("TestConnection", trial).get_json() == {"success": True, "error": ""}
    db.session.expire_all()
    stored = db.session.get(Server, 6)
    assert stored.token_id == "root@pam!whmcs" and unseal(stored.token_secret) == "tok-secret"
