# CI installs php-cli and php-curl (apt-get install -y php-cli php-curl), so these tests run there; they
# skip only on a machine without PHP (and fail instead when the CI variable is set).
"""The WHMCS PHP shim (whmcs/modules) against the real bridge: the product served by a threaded WSGI
server on 127.0.0.1, the module functions called by the PHP CLI exactly as WHMCS calls them, and a
stand-in logModuleCall that writes what it is given so the masking can be checked."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from bridge.signing import sign
from core.extensions import db
from core.models import VM, ModuleLog
from tests.conftest import account_params, register_cluster

ROOT = Path(__file__).resolve().parents[1]
WHMCS = ROOT / "whmcs"
SERVER_MODULE = WHMCS / "modules" / "servers" / "puqProxmoxKVM" / "puqProxmoxKVM.php"
ADDON_MODULE = WHMCS / "modules" / "addons" / "puq_proxmox_kvm" / "puq_proxmox_kvm.php"
ADDON_HOOKS = ADDON_MODULE.with_name("hooks.php")
PHP = shutil.which("php")

# The PHP side of a test: WHMCS's environment reduced to what the modules use. The modules are required
# as WHMCS does (WHMCS defined), logModuleCall appends its first five arguments as a JSON line (and only
# hashes of the values it is asked to replace, so the file itself never holds a secret), and the
# requested functions are called with $params plus an object `model`, as WHMCS passes one.
RUNNER = r"""<?php
define('WHMCS', true);
$input = json_decode(stream_get_contents(STDIN), true);
$GLOBALS['pkvm_log_file'] = $input['log'];

function logModuleCall($module, $action, $request, $response, $processed = '', $replace = [])
{
    $line = [
        'module' => $module, 'action' => $action, 'request' => $request, 'response' => $response,
        'processed' => $processed,
        'replace_sha256' => array_map(function ($s) { return hash('sha256', (string) $s); }, $replace),
    ];
    file_put_contents($GLOBALS['pkvm_log_file'], json_encode($line) . "\n", FILE_APPEND);
}

function add_hook($name, $priority, $callback)
{
    $GLOBALS['pkvm_hooks'][$name][] = $callback;
}

function run_hook($name, $vars = [])
{
    foreach ($GLOBALS['pkvm_hooks'][$name] ?? [] as $callback) {
        $callback($vars);
    }
    return count($GLOBALS['pkvm_hooks'][$name] ?? []);
}

function logActivity($description)
{
    file_put_contents($GLOBALS['pkvm_log_file'], json_encode(['activity' => $description]) . "\n", FILE_APPEND);
}

class FakeServiceModel
{
    public $id;
    public $password;
    public function __construct($id, $password) { $this->id = $id; $this->password = $password; }
}

require $input['module'];
$params = $input['params'];
if ($params !== null && isset($params['password_bytes_hex'])) {  // bytes JSON cannot carry (not UTF-8)
    $params['password'] = hex2bin($params['password_bytes_hex']);
    unset($params['password_bytes_hex']);
}
if ($params !== null) {
    $params['model'] = new FakeServiceModel($params['serviceid'] ?? 0, $params['password'] ?? '');
}
$results = [];
foreach ($input['calls'] as $call) {
    $function = $call[0];
    $args = array_key_exists(1, $call) ? $call[1] : ($params === null ? [] : [$params]);
    $results[] = call_user_func_array($function, $args);
}
echo json_encode($results);
"""


def _php_problem() -> str | None:
    if PHP is None:
        return "php is not on PATH (apt-get install -y php-cli php-curl)"
    check = subprocess.run([PHP, "-r", "exit(function_exists('curl_init') ? 0 : 1);"], capture_output=True)
    if check.returncode != 0:
        return "the PHP curl extension is missing (apt-get install -y php-curl)"
    return None


PHP_PROBLEM = _php_problem()


@pytest.fixture(autouse=True)
def php_available():
    if PHP_PROBLEM:
        if os.environ.get("CI"):
            pytest.fail(f"{PHP_PROBLEM}; CI must install php-cli and php-curl")
        pytest.skip(PHP_PROBLEM)


@pytest.fixture
def served(app):
    """The product on a real threaded WSGI server on 127.0.0.1."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


class Shim:
    """Runs module functions in a PHP CLI process; every call's log lines go to one file."""

    def __init__(self, tmp_path: Path):
        self.script = tmp_path / "runner.php"
        self.script.write_text(RUNNER)
        self.log = tmp_path / "module_log.jsonl"

    def run(self, calls, params: dict | None, *, url: str | None, secret: str | None,
            module: Path = SERVER_MODULE, timeout: int | None = None) -> list:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PKVM_BRIDGE_")}
        if timeout is not None:
            env["PKVM_BRIDGE_TIMEOUT"] = str(timeout)
        if url is not None:
            env["PKVM_BRIDGE_URL"] = url
        if secret is not None:
            env["PKVM_BRIDGE_SECRET"] = secret
        calls = [c if isinstance(c, list) else [c] for c in calls]
        payload = {"log": str(self.log), "module": str(module), "params": params, "calls": calls}
        done = subprocess.run([PHP, "-d", "display_errors=stderr", "-d", "error_reporting=-1", str(self.script)],
                              input=json.dumps(payload), capture_output=True, text=True, env=env, timeout=90)
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", done.stderr  # no warnings, notices or deprecations
        return json.loads(done.stdout)

    def lines(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def shim(tmp_path):
    return Shim(tmp_path)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def assert_log_holds_no_secret(shim: Shim, *secrets: str) -> None:
    text = shim.log.read_text()
    for secret in secrets:
        assert secret and secret not in text


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# ----------------------------------------------------------------------------- the files themselves

def test_every_php_file_lints():
    files = sorted(WHMCS.rglob("*.php"))
    assert SERVER_MODULE in files and ADDON_MODULE in files
    assert WHMCS / "modules/servers/puqProxmoxKVM/lib/Bridge.php" in files
    for path in files:
        done = subprocess.run([PHP, "-l", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_metadata_and_admin_buttons(shim):
    meta, buttons = shim.run(["puqProxmoxKVM_MetaData", "puqProxmoxKVM_AdminCustomButtonArray"], None,
                             url=None, secret=None)
    assert meta == {"DisplayName": "PUQ Proxmox KVM", "APIVersion": "1.1", "RequiresServer": True,
                    "DefaultNonSSLPort": "8006", "DefaultSSLPort": "8006"}
    from bridge.views import FUNCTIONS, STEP_COMMANDS
    assert list(buttons.items())[:6] == [("Start", "Start"), ("Stop", "Stop"), ("Reset password", "ResetPassword"),
                                         ("Reinstall", "Reinstall"), ("Set DNS records", "SetDNSRecords"),
                                         ("Redeploy", "Redeploy")]
    # found in review: the original's one-step commands existed in the bridge but no button reached them
    assert list(buttons.values())[6:] == list(STEP_COMMANDS)
    assert set(buttons.values()) <= set(FUNCTIONS)
    names = [f"puqProxmoxKVM_{suffix}" for suffix in buttons.values()] + [
        f"puqProxmoxKVM_{name}" for name in ("CreateAccount", "SuspendAccount", "UnsuspendAccount",
                                             "TerminateAccount", "ChangePackage", "ChangePassword",
                                             "TestConnection", "AdminServicesTabFields")]
    exists = shim.run([["function_exists", [name]] for name in names], None, url=None, secret=None)
    assert exists == [True] * len(names)


def test_signature_and_body_match_the_bridge(shim):
    """The PHP signer and encoder agree with bridge.signing byte for byte."""
    body = '{"serviceid":5,"note":"ünïcode / slash"}'
    php_sig, encoded, empty = shim.run([
        ["PuqProxmoxKVM\\Bridge::sign", ["s3cr3t", "1700000000", "ab" * 16, "POST",
                                        "/bridge/v1/module/CreateAccount", body]],
        ["PuqProxmoxKVM\\Bridge::encode", [{"serviceid": 5, "configoptions": [], "customfields": [],
                                           "clientsdetails": {"firstname": "Ada", "customfields": [{"id": 1}]},
                                           "list": [1, 2], "price": 1.0}]],
        ["PuqProxmoxKVM\\Bridge::encode", [[]]],
    ], None, url=None, secret=None)
    assert php_sig == sign("s3cr3t", "1700000000", "ab" * 16, "POST", "/bridge/v1/module/CreateAccount",
                           body.encode())
    assert json.loads(encoded) == {"serviceid": 5, "configoptions": {}, "customfields": {},
                                   "clientsdetails": {"firstname": "Ada"}, "list": [1, 2], "price": 1.0}
    assert empty == "{}"


# ----------------------------------------------------------------------------- against the real bridge

def test_create_account_and_test_connection_through_the_shim(app, served, cluster, shim):
    register_cluster(cluster)
    params = account_params(cluster, 8101, configoptions={})
    params["clientsdetails"]["customfields"] = [{"id": 3, "value": "x"}]  # nested, as WHMCS sends it
    secret = app.config["BRIDGE_SECRET"]
    created, tested = shim.run(["puqProxmoxKVM_CreateAccount", "puqProxmoxKVM_TestConnection"], params,
                               url=served, secret=secret)
    assert created == "success"
    assert tested == {"success": True, "error": ""}
    db.session.expire_all()
    vm = db.session.get(VM, 8101)
    assert vm is not None and vm.status == "creation"

    stored = db.session.scalars(select(ModuleLog).where(ModuleLog.action == "CreateAccount")).one()
    received = json.loads(stored.request)  # what the bridge got (masked by the bridge itself)
    assert "model" not in received
    assert received["configoptions"] == {} and received["clientsdetails"]["firstname"] == "Ada"

    lines = shim.lines()
    assert [(line["module"], line["action"]) for line in lines] == [
        ("puqProxmoxKVM", "CreateAccount"), ("puqProxmoxKVM", "TestConnection")]
    create = lines[0]
    assert create["request"]["url"] == f"{served}/bridge/v1/module/CreateAccount"
    assert create["request"]["params"]["password"] == "********"
    assert create["request"]["params"]["serverpassword"] == "********"
    assert "model" not in create["request"]["params"]  # the log shows what was sent
    assert "customfields" not in create["request"]["params"]["clientsdetails"]
    assert json.loads(create["response"])["result"] == "success"
    assert create["processed"] == "success"
    assert lines[1]["processed"] == {"success": True, "error": ""}
    for line in lines:
        assert {sha(secret), sha(params["password"]), sha(params["serverpassword"])} <= set(line["replace_sha256"])
    assert_log_holds_no_secret(shim, secret, params["password"], params["serverpassword"])


def test_wrong_secret_says_so(app, served, cluster, shim):
    register_cluster(cluster)
    params = account_params(cluster, 8102)
    wrong = "0" * 64
    created, tested = shim.run(["puqProxmoxKVM_CreateAccount", "puqProxmoxKVM_TestConnection"], params,
                               url=served, secret=wrong)
    assert isinstance(created, str) and created != "success"
    assert "Bridge Secret" in created and "bad signature" in created and "clocks" in created
    assert "unauthorized (unauthorized" not in created
    assert tested["success"] is False and "Bridge Secret" in tested["error"]
    db.session.expire_all()
    assert db.session.get(VM, 8102) is None
    assert_log_holds_no_secret(shim, wrong, params["password"], params["serverpassword"],
                               app.config["BRIDGE_SECRET"])
    assert wrong not in created and wrong not in tested["error"]


def test_rejected_payload_names_the_field(app, served, cluster, shim):
    register_cluster(cluster)
    params = account_params(cluster, 8103, serverusername="root")
    created, tested = shim.run(["puqProxmoxKVM_CreateAccount", "puqProxmoxKVM_TestConnection"], params,
                               url=served, secret=app.config["BRIDGE_SECRET"])
    assert created.startswith("The bridge refused the parameters of CreateAccount")
    assert "serverusername" in created and "user@realm!tokenid" in created
    assert tested["success"] is False and "serverusername" in tested["error"]
    db.session.expire_all()
    assert db.session.get(VM, 8103) is None
    assert params["serverpassword"] not in created and params["password"] not in created
    assert_log_holds_no_secret(shim, params["password"], params["serverpassword"], app.config["BRIDGE_SECRET"])


def test_unreachable_bridge_names_the_url(cluster, shim):
    params = account_params(cluster, 8104)
    url = f"http://127.0.0.1:{free_port()}"
    created, tested = shim.run(["puqProxmoxKVM_CreateAccount", "puqProxmoxKVM_TestConnection"], params,
                               url=url, secret="a" * 64)
    assert "unreachable" in created and f"{url}/bridge/v1/module/CreateAccount" in created
    assert tested["success"] is False and f"{url}/bridge/v1/module/TestConnection" in tested["error"]
    assert_log_holds_no_secret(shim, "a" * 64, params["password"], params["serverpassword"])


def test_unconfigured_shim_says_where_to_configure(cluster, shim):
    params = account_params(cluster, 8105)
    created, tested = shim.run(["puqProxmoxKVM_CreateAccount", "puqProxmoxKVM_TestConnection"], params,
                               url=None, secret=None)
    assert "not configured" in created and "Bridge URL" in created and "Bridge Secret" in created
    assert tested["success"] is False and "not configured" in tested["error"]


def test_a_plain_http_bridge_url_is_refused_unless_on_this_machine(cluster, shim):
    """Every call carries the Proxmox token secret and the service's password: over the network, https."""
    params = account_params(cluster, 8106)
    created, tested = shim.run(["puqProxmoxKVM_CreateAccount", "puqProxmoxKVM_TestConnection"], params,
                               url="http://10.0.0.5:5000", secret="a" * 64)
    assert "must use https://" in created and tested["success"] is False and "must use https://" in tested["error"]
    for local in (f"http://127.0.0.1:{free_port()}", f"http://localhost:{free_port()}", f"http://[::1]:{free_port()}"):
        created, = shim.run(["puqProxmoxKVM_CreateAccount"], params, url=local, secret="a" * 64)
        assert "unreachable" in created, (local, created)


def test_whmcs_cron_hook_starts_a_tick_in_hook_mode_only(app, served, shim):
    """The addon's AfterCronJob hook, as WHMCS runs it after its cron: in the product's WHMCS Hook mode (the
    default, as the original's) a tick runs; in Standalone mode the call changes nothing."""
    import time
    from core import settings
    from core.models import CronLock, CronTask
    settings.update({"cron_mode": "standalone"})
    count, = shim.run([["run_hook", ["AfterCronJob"]]], None, url=served, secret=app.config["BRIDGE_SECRET"],
                      module=ADDON_HOOKS)
    assert count == 1 and db.session.get(CronTask, "processVirtualMachines") is None
    settings.update({"cron_mode": "hook"})
    shim.run([["run_hook", ["AfterCronJob"]]], None, url=served, secret=app.config["BRIDGE_SECRET"],
             module=ADDON_HOOKS)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the tick runs in a thread of the product's process, to its end
        db.session.expire_all()
        task = db.session.get(CronTask, "collectingStatistics")
        if task is not None and task.last_run_at and db.session.get(CronLock, "cron") is None:
            break
        time.sleep(0.05)
    assert db.session.get(CronTask, "processVirtualMachines").last_run_at is not None
    assert not shim.lines()  # nothing to report in WHMCS's activity log
    # a product that cannot be reached is noted in WHMCS's activity log, without the secret
    shim.run([["run_hook", ["AfterCronJob"]]], None, url=f"http://127.0.0.1:{free_port()}", secret="b" * 64,
             module=ADDON_HOOKS)
    activity = [line["activity"] for line in shim.lines() if "activity" in line]
    assert len(activity) == 1 and "the cron hook did not reach the product" in activity[0]
    assert "b" * 64 not in shim.log.read_text()
    # reached, but no tick could be started (its Redis is down): the product's reason is noted too
    app.config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    try:
        shim.run([["run_hook", ["AfterCronJob"]]], None, url=served, secret=app.config["BRIDGE_SECRET"],
                 module=ADDON_HOOKS)
    finally:
        app.config["REDIS_URL"] = None
    activity = [line["activity"] for line in shim.lines() if "activity" in line]
    assert len(activity) == 2 and "which started no tick: Redis does not answer" in activity[1]


def test_addon_declares_the_settings(shim):
    config, activated, deactivated = shim.run([
        "puq_proxmox_kvm_config", "puq_proxmox_kvm_activate", "puq_proxmox_kvm_deactivate",
    ], None, url=None, secret=None, module=ADDON_MODULE)
    fields = config["fields"]
    assert (fields["bridge_url"]["FriendlyName"], fields["bridge_url"]["Type"]) == ("Bridge URL", "text")
    assert (fields["bridge_secret"]["FriendlyName"], fields["bridge_secret"]["Type"]) == ("Bridge Secret", "password")
    assert activated["status"] == "success" and deactivated["status"] == "success"


def test_addon_output_prints_the_link(tmp_path):
    script = tmp_path / "output.php"
    script.write_text("<?php define('WHMCS', true); require $argv[1]; "
                      "puq_proxmox_kvm_output(['bridge_url' => $argv[2]]);")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKVM_BRIDGE_")}
    done = subprocess.run([PHP, str(script), str(ADDON_MODULE), "https://pkvm.example.com/"], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0 and done.stderr == ""
    assert 'href="https://pkvm.example.com/"' in done.stdout and "web UI" in done.stdout
    done = subprocess.run([PHP, str(script), str(ADDON_MODULE), ""], capture_output=True, text=True, env=env)
    assert "not set" in done.stdout


def test_a_one_step_admin_command_runs_through_the_shim(app, served, cluster, shim):
    """VMSetDedicatedIp from the service's admin page: the product runs that one step and answers."""
    from core import ipam
    register_cluster(cluster)
    params = account_params(cluster, 8110)
    secret = app.config["BRIDGE_SECRET"]
    created, step = shim.run(["puqProxmoxKVM_CreateAccount", "puqProxmoxKVM_VMSetDedicatedIp"], params,
                             url=served, secret=secret)
    assert (created, step) == ("success", "success")
    db.session.expire_all()
    assert [a.address for a in ipam.assigned(8110)] == ["192.0.2.10"]
    assert db.session.get(VM, 8110).status == "creation"  # a one-step command leaves the status as it is
    assert [line["action"] for line in shim.lines()] == ["CreateAccount", "VMSetDedicatedIp"]


def test_deactivating_the_addon_deletes_the_module_data_only_when_asked(app, served, cluster, shim):
    """Found in review: the setting "Delete all database tables when module is deactivated" was stored and
    never read. The addon's deactivation now tells the product, which deletes the module's data when the
    setting is on (the admins and the bridge's replay protection stay) and keeps everything otherwise."""
    from core import admins, settings
    from core.models import Admin, BridgeNonce, IPPool, Setting
    register_cluster(cluster)
    admins.create_admin("root", "correct horse battery")
    secret = app.config["BRIDGE_SECRET"]
    created, = shim.run(["puqProxmoxKVM_CreateAccount"], account_params(cluster, 8120), url=served, secret=secret)
    assert created == "success"
    kept, = shim.run(["puq_proxmox_kvm_deactivate"], None, url=served, secret=secret, module=ADDON_MODULE)
    assert kept["status"] == "success" and "untouched" in kept["description"]
    db.session.expire_all()
    assert db.session.get(VM, 8120) is not None and db.session.scalar(select(IPPool.id).limit(1)) is not None
    settings.update({"delete_data_on_uninstall": True})
    gone, = shim.run(["puq_proxmox_kvm_deactivate"], None, url=served, secret=secret, module=ADDON_MODULE)
    assert gone["status"] == "success" and "data was deleted" in gone["description"], gone
    db.session.expire_all()
    assert db.session.get(VM, 8120) is None and db.session.scalar(select(IPPool.id).limit(1)) is None
    assert db.session.scalar(select(ModuleLog.id).limit(1)) is None
    assert db.session.scalar(select(Setting.key).limit(1)) is None  # back to the defaults: the flag is off
    assert db.session.scalar(select(Admin.username)) == "root"
    assert db.session.scalar(select(BridgeNonce.nonce).limit(1)) is not None


def test_a_bridge_that_takes_the_call_but_does_not_answer_in_time_is_not_called_unreachable(cluster, shim):
    """Found in review: a call the bridge was still carrying out when the shim's timeout ran out was reported
    as "unreachable ... check the Bridge URL", which sends the admin after the wrong problem and invites a
    second try of something that may be going on."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    try:
        answer, = shim.run(["puqProxmoxKVM_CreateAccount"], account_params(cluster, 8107),
                           url=f"http://127.0.0.1:{listener.getsockname()[1]}", secret="a" * 64, timeout=2)
    finally:
        listener.close()
        for conn, _addr in accepted:
            conn.close()
    assert "did not answer within 2 s" in answer and "may still be carrying it out" in answer
    assert "unreachable" not in answer and "VM Management" in answer


def test_a_password_that_is_not_utf8_is_refused_not_changed(app, served, cluster, shim):
    """Found in review: invalid UTF-8 was replaced by U+FFFD on the way, so the VM would have got another
    password than the one WHMCS holds."""
    params = account_params(cluster, 8108)
    params["password_bytes_hex"] = b"P\xe4ssw0rd-latin1".hex()  # "Pässw0rd" in Latin-1
    created, = shim.run(["puqProxmoxKVM_CreateAccount"], params, url=served, secret=app.config["BRIDGE_SECRET"])
    assert "service password is not valid UTF-8" in created and "set it again in WHMCS" in created
    assert db.session.get(VM, 8108) is None  # nothing reached the bridge


def test_a_short_password_is_masked_where_it_stands_alone_not_inside_words(cluster, shim):
    """Found in review: every occurrence of a secret was masked, so a short password mangled the admin's
    message ("c********nect")."""
    params = account_params(cluster, 8109, password="on")
    url = f"http://127.0.0.1:{free_port()}"
    created, = shim.run(["puqProxmoxKVM_CreateAccount"], params, url=url, secret="a" * 64)
    assert "connect" in created and "********" not in created
    lines = [line for line in shim.lines() if line.get("action") == "CreateAccount"]
    assert lines and json.dumps(lines[-1]["request"]).count('"on"') == 0  # the password itself is masked


def test_the_services_admin_page_shows_its_vm(app, served, cluster, shim):
    """Seed 001 (v3.0): the service's admin page shows the VM, live; here its status, VMID and node, its
    addresses, how it runs now, its last run and error, and a link into the panel. Every text escaped;
    a cluster that does not answer is said, not an error; a service with no VM says so."""
    from jobs.cron import run_tick
    from jobs.pipeline import Output
    register_cluster(cluster)
    params = account_params(cluster, 8111)
    secret = app.config["BRIDGE_SECRET"]
    assert shim.run(["puqProxmoxKVM_CreateAccount"], params, url=served, secret=secret) == ["success"]
    run_tick(Output(None))
    db.session.expire_all()
    vm = db.session.get(VM, 8111)
    assert vm.status == "ready"
    vm.last_error_action, vm.last_error_message = "deploy", "<b>start</b> failed & retried"
    db.session.commit()
    before = len(shim.lines())

    tab, = shim.run(["puqProxmoxKVM_AdminServicesTabFields"], params, url=served, secret=secret)
    assert tab["VM status"] == "ready"
    assert tab["VM"] == f"{vm.name} (VMID {vm.vmid}) on node {vm.node}"
    assert tab["IP addresses"] == "192.0.2.10"
    assert tab["Now"].startswith("running, ") and "RAM " in tab["Now"] and " MiB" in tab["Now"]
    assert tab["Last run"].startswith("deploy: success (creation -&gt; ready), ")
    assert tab["Last error"].endswith(": &lt;b&gt;start&lt;/b&gt; failed &amp; retried")
    assert tab["PUQ Proxmox KVM"] == f'<a href="{served}/vms?q=8111" target="_blank" rel="noopener noreferrer">' \
                                     "VM Management in the panel</a>"
    assert len(shim.lines()) == before  # a page view is no module call worth logging

    cluster.pve.fail("GET", "/status/current", 500, "node busy", times=1)
    tab, = shim.run(["puqProxmoxKVM_AdminServicesTabFields"], params, url=served, secret=secret)
    assert tab["Now"].startswith("not available: ") and tab["VM status"] == "ready"
    other, = shim.run(["puqProxmoxKVM_AdminServicesTabFields"], account_params(cluster, 8112), url=served,
                      secret=secret)
    assert other["VM"] == "No VM is recorded here for this service."
    down, = shim.run(["puqProxmoxKVM_AdminServicesTabFields"], params, url=f"http://127.0.0.1:{free_port()}",
                     secret=secret)
    assert list(down) == ["PUQ Proxmox KVM"] and "unreachable" in down["PUQ Proxmox KVM"]
