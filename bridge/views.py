"""``POST /bridge/v1/module/<Function>``: the WHMCS module functions.

Answers are WHMCS's: ``{"result": "success"}`` or ``{"result": "error", "message": ...}`` (200), a 400 with
field-by-field errors for a malformed payload, a 401 for a call that is not signed, fresh and new.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable

from flask import current_app, g, jsonify, request
from sqlalchemy.exc import IntegrityError, OperationalError

from core import accounts
from core.extensions import db, is_transient
from core.models import Server
from core.proxmox.client import Pve, endpoint_for
from core.proxmox.cluster import check_connection
from core.settings import get as setting
from core.text import unstorable

from . import bp
from .signing import SignatureError, record_nonce, verify

log = logging.getLogger("pkvm.bridge")
Handler = Callable[[dict], tuple[dict, int]]
FUNCTIONS: dict[str, Handler] = {}
TRANSIENT_RETRIES = 5
RETRY_PAUSE = 0.005  # seconds, doubled at every retry
STEP_COMMAND_WAIT = 25  # seconds a one-step command is waited for (the shim's own timeout is 30 s)


def module_function(name: str, one_transaction: bool = False) -> Callable[[Handler], Handler]:
    """Register a module function. A ``one_transaction`` handler never talks to Proxmox or waits: it writes
    the call's nonce (``g.pending_nonce``, see ``keep_nonce``) with its own writes and commits them
    together, and a conflicting concurrent transaction makes the whole call run again. Any other handler
    gets its nonce committed first, so that nothing is held locked while it works."""
    def register(handler: Handler) -> Handler:
        handler.one_transaction = one_transaction
        FUNCTIONS[name] = handler
        return handler
    return register


def success() -> tuple[dict, int]:
    return {"result": "success"}, 200


def error(message: str) -> tuple[dict, int]:
    return {"result": "error", "message": message}, 200


@bp.before_request
def check_signature():
    g.pending_nonce = None  # set on every call: g may outlive one request
    handler = FUNCTIONS.get((request.view_args or {}).get("function", ""))
    deferred = getattr(handler, "one_transaction", False)
    try:
        nonce = verify(current_app.config["BRIDGE_SECRET"], request.headers, request.method, request.path,
                       lambda: request.get_data(cache=True), current_app.config["BRIDGE_MAX_SKEW"],
                       record=not deferred)
    except SignatureError as exc:
        return jsonify(result="error", message=f"unauthorized: {exc}"), 401
    if deferred:
        g.pending_nonce = nonce
    else:
        db.session.commit()
    return None


def keep_nonce(connection=None) -> None:
    """Write the call's nonce into the transaction of a one-transaction handler (``connection``), last: a
    replay is refused here (SignatureError), with all the call wrote undone."""
    record_nonce(*g.pending_nonce, connection=connection)


def _refuse(status: int, body: dict):
    """Answer a call that did nothing: its nonce stays recorded (a refused call is not replayable either).
    A nonce already stored is a replay's: 401."""
    db.session.rollback()
    try:
        if g.get("pending_nonce") is not None:
            keep_nonce()
        db.session.commit()
    except SignatureError as replay:
        return jsonify(result="error", message=f"unauthorized: {replay}"), 401
    return jsonify(body), status


@bp.errorhandler(Exception)
def unexpected(exc: Exception):
    from werkzeug.exceptions import HTTPException
    if isinstance(exc, HTTPException):
        return jsonify(result="error", message=exc.description), exc.code
    log.exception("bridge call failed")
    return _refuse(500, {"result": "error", "message": "internal error; the details are in the server log"})


@bp.post("/module/<function>")
def module_call(function: str):
    handler = FUNCTIONS.get(function)
    if handler is None:
        return jsonify(result="error", message=f"unknown module function {function!r}",
                       functions=sorted(FUNCTIONS)), 404
    try:
        payload = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the parser goes: no WHMCS $params are
        payload = None
    if not isinstance(payload, dict):
        return _refuse(400, {"result": "error", "message": "malformed payload",
                             "errors": {"body": "must be a JSON object with the WHMCS module parameters"}})
    bad = unstorable(payload)
    if bad:
        return _refuse(400, {"result": "error", "message": "malformed payload", "errors": bad})
    for attempt in range(TRANSIENT_RETRIES):
        try:
            body, status = handler(payload)
            break
        except accounts.ParamsError as exc:
            return _refuse(400, {"result": "error", "message": "malformed payload", "errors": exc.errors})
        except SignatureError as replay:  # a one-transaction handler's nonce: all it wrote is undone
            db.session.rollback()
            return jsonify(result="error", message=f"unauthorized: {replay}"), 401
        except (OperationalError, IntegrityError) as exc:
            # Every handler is an idempotent upsert: a deadlocked (or, for a one-transaction handler,
            # conflicting) transaction is simply run again (a one-transaction handler with its nonce).
            db.session.rollback()
            retry = is_transient(exc) or (handler.one_transaction and isinstance(exc, IntegrityError))
            if not retry or attempt == TRANSIENT_RETRIES - 1:
                raise
            # Transactions that collided would collide again in step: each waits a little, at random.
            time.sleep(random.uniform(0, RETRY_PAUSE * 2 ** attempt))
    return jsonify(body), status


@module_function("TestConnection")
def test_connection(payload: dict) -> tuple[dict, int]:
    # WHMCS tests a server from its form, possibly before it is saved: what the form holds is only tested.
    # A server id not seen yet that answers is stored, so that its IP pools can be set up before the first
    # order; a stored server is never changed here (the form may hold unsaved edits: another token or host),
    # only by the module calls, which carry the saved values.
    errors: dict[str, str] = {}
    server = accounts.parse_server(payload, errors, require_id=False)
    if errors:
        raise accounts.ParamsError(errors)
    unsaved = Server(id=server.id, hostname=server.hostname, ip=server.ip, port=server.port,
                     token_id=server.token_id, verify_tls=server.verify_tls, ca_pem=server.ca_pem)
    endpoint = endpoint_for(unsaved, server.token_secret, current_app.instance_path)
    problem = check_connection(Pve(endpoint, timeout=setting("api_timeout")))
    body = {"success": problem is None, "error": problem or ""}
    if problem is None and server.id and db.session.get(Server, server.id) is None:
        accounts.upsert_server(server)
    accounts.log_call("TestConnection", None, payload, body)
    return body, 200


@module_function("AdminServicesTabFields")
def admin_services_tab_fields(payload: dict) -> tuple[dict, int]:
    """What the service's admin page in WHMCS shows of its VM (label, plain text pairs; the shim escapes
    them). It only reads: nothing is stored and, a page view not being an action, nothing is logged."""
    from core import vms
    params = accounts.parse_account(payload)
    return {"result": "success", "fields": [list(pair) for pair in vms.service_summary(params.service_id)]}, 200


@module_function("SetDNSRecords")
def set_dns_records(payload: dict) -> tuple[dict, int]:
    """The admin button: queue a full DNS resync for the next tick and answer at once."""
    from core import vms
    errors: dict[str, str] = {}
    service_id = accounts._int(payload, "serviceid", errors)
    if errors:
        raise accounts.ParamsError(errors)
    vm = db.session.get(vms.VM, service_id)
    if vm is None:
        return error("this service has no VM yet")
    try:
        vms.queue_dns_resync(vm)
    except vms.VMActionError as exc:
        return error(str(exc.errors["status"]))
    accounts.log_call("SetDNSRecords", service_id, payload, {"result": "success"})
    return success()


@module_function("AfterCronJob")
def after_cron_job(payload: dict) -> tuple[dict, int]:
    """WHMCS's cron has run (the addon's AfterCronJob hook). In the WHMCS Hook cron mode that starts a tick,
    as the original's hook mode runs its tasks with WHMCS's cron; in Standalone mode nothing happens."""
    from core import queue as work_queue
    if setting("cron_mode") != "hook":
        return {"result": "success", "tick": "skipped",
                "message": "the cron mode is Standalone: this product's own scheduler runs the tasks"}, 200
    try:
        return {"result": "success", "tick": work_queue.start_tick()}, 200
    except work_queue.QueueUnavailable as exc:
        log.warning("AfterCronJob: %s", exc)
        return error(f"{exc}: no tick was started; the calls already taken wait in the database")


@module_function("AddonDeactivate")
def addon_deactivate(payload: dict) -> tuple[dict, int]:
    """WHMCS deactivated the addon. With "Delete all database tables when module is deactivated" on, the
    module's data goes (core.module_data); otherwise nothing changes."""
    from core import module_data
    if not setting("delete_data_on_uninstall"):
        return {"result": "success", "deleted": False,
                "message": "the module's data is kept (Delete all database tables when module is deactivated "
                           "is off)"}, 200
    removed = module_data.delete_module_data()
    log.warning("AddonDeactivate: the module's data was deleted: %s", removed)
    return {"result": "success", "deleted": True, "rows": removed}, 200


def _account_action(name: str, act, payload: dict) -> tuple[dict, int]:
    """A module function over the whole $params: validate, act, answer WHMCS, log the call."""
    from core.products import PackageError
    from core.whmcs import WhmcsError
    params = accounts.parse_account(payload)
    try:
        act(params)
    except (accounts.AccountError, PackageError) as exc:
        body, status = error(str(exc))
    except WhmcsError as exc:  # ResetPassword saves the password in WHMCS first: its API must answer
        db.session.rollback()
        body, status = error(f"{exc} (Settings > WHMCS API in the product)")
    else:
        body, status = success()
    accounts.log_call(name, params.service_id, payload, body)
    return body, status


for _name, _act in (("ChangePackage", accounts.change_package), ("SuspendAccount", accounts.suspend),
                    ("UnsuspendAccount", accounts.unsuspend), ("TerminateAccount", accounts.terminate),
                    ("ChangePassword", accounts.change_password), ("ResetPassword", accounts.reset_password),
                    ("Start", lambda p: accounts.power(p, "start")), ("Stop", lambda p: accounts.power(p, "stop")),
                    ("Redeploy", accounts.redeploy)):
    FUNCTIONS[_name] = (lambda name, act: lambda payload: _account_action(name, act, payload))(_name, _act)


@module_function("Reinstall")
def reinstall(payload: dict) -> tuple[dict, int]:
    """Optional ``template``: the VMID of the OS template the client chose (another OS than the package's)."""
    errors: dict[str, str] = {}
    template = accounts._int(payload, "template", errors, required=False, minimum=100, maximum=999_999_999)
    if errors:
        raise accounts.ParamsError(errors)
    return _account_action("Reinstall", lambda params: accounts.reinstall(params, template), payload)


# The original's admin commands that run one deploy step on their own (synchronously, under the VM lease).
STEP_COMMANDS = {
    "VMSetDedicatedIp": "creation", "VMSetDNSRecords": "set_ip", "VMClone": "set_dns",
    "migrateToTargetNode": "clone", "VMSetCpuRam": "migrated", "VMSetSystemDiskSize": "set_cpu_ram",
    "VMSetSystemDiskBandwidth": "set_system_disk_size", "VMSetCreatedAdditionalDisk": "set_system_disk_bandwidth",
    "VMSetAdditionalDiskSize": "set_created_additional_disk",
    "VMSetAdditionalDiskBandwidth": "set_additional_disk_size", "VMSetNetwork": "set_additional_disk_bandwidth",
    "VMSetFirewall": "set_network", "VMSetCloudinit": "set_firewall", "VMStart": "set_cloudinit",
}


def _step_command(name: str, source: str, payload: dict) -> tuple[dict, int]:
    from core import queue as work_queue
    from core import settings as module_settings
    params = accounts.parse_account(payload)
    accounts.upsert_account(params)
    try:
        # The shim gives up after 30 s: the answer comes before that, whatever the step still has to do.
        answer = work_queue.run_and_wait("jobs.worker.run_step_job", params.service_id, source,
                                         max(STEP_COMMAND_WAIT - 10, 1), timeout=STEP_COMMAND_WAIT,
                                         job_timeout=module_settings.get("api_heavy_timeout") + 60)
    except work_queue.JobFailed as exc:
        answer = {"result": "error", "message": str(exc)}
    body = success() if answer.get("result") == "success" else error(answer.get("message") or "failed")
    accounts.log_call(name, params.service_id, payload, body[0])
    return body


for _name, _source in STEP_COMMANDS.items():
    FUNCTIONS[_name] = (lambda name, source: lambda payload: _step_command(name, source, payload))(_name, _source)


@module_function("CreateAccount", one_transaction=True)
def create_account(payload: dict) -> tuple[dict, int]:
    """One transaction: the client, product, server and service, the VM row, the module log and the nonce;
    then the deploy is queued."""
    from core import queue as work_queue
    params = accounts.parse_account(payload)
    logged_request = accounts.log_text(payload)
    queued = False
    with db.engine.begin() as connection:
        try:
            vm_status, queued = accounts.create_account(params, connection)
        except accounts.AccountError as exc:
            body, status = error(str(exc))
        else:
            body, status = success()
            body["status"] = vm_status
            body["queued"] = queued
        accounts.log_call("CreateAccount", params.service_id, payload, body, request_text=logged_request,
                          connection=connection)
        keep_nonce(connection)
        # Read here, in the open transaction: after it the session would take a connection of its own.
        task_on = work_queue.vm_task_on(connection) if queued and work_queue.redis_connection() else None
    if queued:
        work_queue.enqueue_recorded(params.service_id, task_on)
    return body, status
