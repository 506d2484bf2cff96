"""Sequences of WHMCS calls, admin actions and ticks found by a stateful fuzz of both, each of which once ended
with a VM not as its service says: a released address still in its cloud-init, a suspended service's VM
running, a VM "ready" that was not deployed, two VMs with one address."""
import threading

import pytest

from jobs.cron import run_tick
from jobs.pipeline import Output
from core import ipam
from core import vms as vm_service
from core.extensions import db
from core.models import VM
from tests.conftest import account_params, paused_deploy, register_cluster


def tick(clock, n=1):
    lines = []
    for _ in range(n):
        clock.advance(60)
        run_tick(Output(lines.append, clock), clock, only="processVirtualMachines")
    return lines


def test_reset_to_set_ip_is_refused_before_the_deploy_allocated_addresses(app, bridge, cluster, clock):
    """set_ip goes on from the addresses the deploy allocated: from creation it skipped the allocation, and
    the VM ended ready with no address."""
    register_cluster(cluster, ipv4_count=1)
    bridge.call("CreateAccount", account_params(cluster, 101))
    vm = db.session.get(VM, 101)
    with pytest.raises(vm_service.VMActionError, match="not deployed"):
        vm_service.reset(vm, "set_ip")
    assert vm.status == "creation"
    tick(clock)
    db.session.refresh(vm)
    assert vm.status == "ready" and [a.address for a in ipam.assigned(101)] == ["192.0.2.10"]
    vm_service.reset(vm, "set_ip")  # a deployed VM: the deploy runs again on its addresses
    tick(clock)
    db.session.refresh(vm)
    assert vm.status == "ready"
    assert cluster.pve.vm(vm.vmid).config.get("ipconfig0", "").startswith("ip=192.0.2.10/24")


def test_a_change_package_to_no_addresses_takes_the_released_address_out_of_cloud_init(app, bridge, cluster, clock):
    register_cluster(cluster, ipv4_count=1)
    bridge.call("CreateAccount", account_params(cluster, 101))
    tick(clock)
    vm = db.session.get(VM, 101)
    assert vm.status == "ready"
    answer = bridge.call("ChangePackage", account_params(cluster, 101, configoptions={"IPv4 Addresses": "0"}))
    assert answer.get_json()["result"] == "success"
    lines = tick(clock)
    db.session.refresh(vm)
    assert vm.status == "ready", "\n".join(lines)
    assert ipam.assigned(101) == []  # handed back to the pool ...
    # ... and the next order gets it, while the first VM still boots with it
    bridge.call("CreateAccount", account_params(cluster, 102))
    tick(clock)
    other = db.session.get(VM, 102)
    assert [a.address for a in ipam.assigned(102)] == ["192.0.2.10"]
    first = cluster.pve.vm(vm.vmid).config.get("ipconfig0")
    second = cluster.pve.vm(other.vmid).config.get("ipconfig0")
    assert "192.0.2.10" not in (first or ""), f"both VMs configured with 192.0.2.10: {first!r} / {second!r}"
    assert "nameserver" not in cluster.pve.vm(vm.vmid).config


def test_start_is_refused_for_a_suspended_service(app, bridge, cluster, clock):
    register_cluster(cluster)
    bridge.call("CreateAccount", account_params(cluster, 101))
    tick(clock)
    vm = db.session.get(VM, 101)
    assert bridge.call("SuspendAccount", account_params(cluster, 101)).get_json()["result"] == "success"
    assert cluster.pve.vm(vm.vmid).status == "stopped"
    answer = bridge.call("Start", account_params(cluster, 101, status="Suspended")).get_json()
    assert answer == {"result": "error", "message": "the service is suspended: unsuspend it to start its VM"}
    assert cluster.pve.vm(vm.vmid).status == "stopped"


@pytest.mark.parametrize("status", ["set_dns_records", "change_package", "set_ip"])
def test_a_terminated_vm_is_not_reset_to_a_pipeline_that_needs_it(app, bridge, cluster, clock, status):
    """set_dns_records ended "ready" for a VM that was no longer on Proxmox."""
    register_cluster(cluster)
    bridge.call("CreateAccount", account_params(cluster, 101))
    tick(clock)
    assert bridge.call("TerminateAccount", account_params(cluster, 101)).get_json()["result"] == "success"
    tick(clock)
    vm = db.session.get(VM, 101)
    db.session.refresh(vm)
    assert vm.status == "remove" and cluster.pve.vm(vm.vmid) is None
    with pytest.raises(vm_service.VMActionError, match="not deployed"):
        vm_service.reset(vm, status)
    assert vm.status == "remove"


def _deploy_paused_before_configuration(bridge, cluster, clock):
    """A deploy that cloned the VM but failed its Set CPU & RAM (the VM waits at `migrated`, cloned, stopped)."""
    register_cluster(cluster, cpu_cores=2, ram_mb=2048)
    vm = paused_deploy(bridge, cluster, clock, "PUT", "/nodes/{node}/qemu/{vmid}/config", "injected failure",
                       service_id=101)
    assert vm.status == "migrated" and cluster.pve.vm(vm.vmid).status == "stopped"
    return vm


@pytest.mark.parametrize("status", ["set_dns_records", "change_package"])
def test_reset_of_a_half_deployed_vm_to_a_later_pipeline_is_refused(app, bridge, cluster, clock, status):
    """Both end at ready and neither configures a VM from scratch: from a deploy paused after its clone they
    reported ready a VM that was stopped with the template's CPU (set_dns_records), or ran without its
    cloud-init user, password and keys (change_package)."""
    vm = _deploy_paused_before_configuration(bridge, cluster, clock)
    with pytest.raises(vm_service.VMActionError, match="not deployed"):
        vm_service.reset(vm, status)
    assert vm.status == "migrated"
    tick(clock)
    db.session.refresh(vm)
    config = cluster.pve.vm(vm.vmid).config
    assert vm.status == "ready" and int(config["cores"]) == 2 and config.get("ciuser") == "root"


def test_addresses_kept_for_a_deleted_error_terminate_record_are_not_reused_by_the_service_ordered_again(
        app, bridge, cluster, clock):
    """Two VMs booted with one address: the one that failed to terminate (still on Proxmox) and its service's
    new one. CreateAccount is refused until the admin hands the addresses back."""
    register_cluster(cluster)
    bridge.call("CreateAccount", account_params(cluster, 101))
    tick(clock)
    old = db.session.get(VM, 101).vmid
    cluster.pve.fail("DELETE", "/nodes/{node}/qemu/{vmid}", 500, "storage unreachable", times=1)
    bridge.call("TerminateAccount", account_params(cluster, 101))
    tick(clock)
    vm = db.session.get(VM, 101)
    db.session.refresh(vm)
    assert vm.status == "error_terminate" and cluster.pve.vm(old) is not None
    vm_service.delete_record(vm)
    assert [a.address for a in ipam.assigned(101)] == ["192.0.2.10"]
    refused = bridge.call("CreateAccount", account_params(cluster, 101)).get_json()
    assert refused["result"] == "error" and "flask pool release-service 101" in refused["message"]
    assert db.session.get(VM, 101) is None
    done = app.test_cli_runner().invoke(args=["pool", "release-service", "101"])
    assert done.exit_code == 0 and "handed back 192.0.2.10" in done.output and ipam.assigned(101) == []
    assert bridge.call("CreateAccount", account_params(cluster, 101)).get_json()["result"] == "success"
    kept = app.test_cli_runner().invoke(args=["pool", "release-service", "101"])
    assert kept.exit_code != 0 and "has a VM record" in kept.output


def _during_pass(app, clock, after_prefix, call):
    """Run one tick; when the pass prints a line starting with ``after_prefix`` (right after a step committed),
    ``call`` runs in another thread with its own app context and session, as a bridge request would in the web
    process while a worker runs the pass. Returns what ``call`` returned."""
    got, lines = [], []

    def line(text):
        lines.append(text)
        if text.startswith(after_prefix) and not got:
            def other():
                with app.app_context():
                    try:
                        got.append(call())
                    finally:
                        db.session.remove()
            thread = threading.Thread(target=other)
            thread.start()
            thread.join(60)
    clock.advance(60)
    run_tick(Output(line, clock), clock, only="processVirtualMachines")
    assert got, "\n".join(lines)
    return got[0], lines


@pytest.mark.parametrize(("pipeline", "call", "after", "service_status", "power"), [
    ("deploy", "SuspendAccount", "[+] 5. Set CPU & RAM", "Suspended", "stopped"),
    ("change_package", "SuspendAccount", "[+] 3. Set CPU & RAM", "Suspended", "stopped"),
    ("deploy", "UnsuspendAccount", "[+] 5. Set CPU & RAM", "Active", "running"),
])
def test_a_suspend_or_unsuspend_while_a_pass_runs_leaves_the_vm_as_the_service_says(
        app, bridge, cluster, clock, pipeline, call, after, service_status, power):
    """The pass read the service's status once, at its start: a suspend that came meanwhile had its VM
    started again at the end, an unsuspend left it off for good."""
    from core.models import Service
    register_cluster(cluster)
    bridge.call("CreateAccount", account_params(cluster, 101))
    if pipeline == "change_package":
        tick(clock)
        bridge.call("ChangePackage", account_params(cluster, 101, configoptions={"CPU Cores": "2"}))
    if call == "UnsuspendAccount":
        assert bridge.call("SuspendAccount", account_params(cluster, 101)).get_json()["result"] == "success"
    extra = {"status": "Suspended"} if call == "UnsuspendAccount" else {}
    answer, lines = _during_pass(app, clock, after, lambda: bridge.call(call, account_params(
        cluster, 101, **extra, **({"configoptions": {"CPU Cores": "2"}} if pipeline == "change_package" else {}))
    ).get_json())
    assert answer == {"result": "success"}
    vm, service = db.session.get(VM, 101), db.session.get(Service, 101)
    db.session.refresh(vm), db.session.refresh(service)
    assert (vm.status, service.status) == ("ready", service_status), "\n".join(lines)
    assert cluster.pve.vm(vm.vmid).status == power, "\n".join(lines)


def test_a_service_ordered_again_clones_the_products_template_not_an_old_reinstalls(app, bridge, cluster, clock):
    register_cluster(cluster)
    bridge.call("CreateAccount", account_params(cluster, 101))
    tick(clock)
    answer = bridge.call("Reinstall", {**account_params(cluster, 101), "template": 9001}).get_json()
    assert answer["result"] == "success", answer
    tick(clock)
    bridge.call("TerminateAccount", account_params(cluster, 101))
    tick(clock)
    assert bridge.call("CreateAccount", account_params(cluster, 101)).get_json()["result"] == "success"
    n = len(cluster.pve.requests)
    tick(clock)
    clones = [p for m, p, _ in cluster.pve.requests[n:] if m == "POST" and p.endswith("/clone")]
    assert clones == ["/api2/json/nodes/pve1/qemu/9000/clone"], clones


@pytest.mark.parametrize(("function", "first", "second"), [
    ("ChangePackage", {"configoptions": {"CPU Cores": "2"}}, {"configoptions": {"CPU Cores": "4"}}),
    ("ChangePassword", {"password": "First-pw-123"}, {"password": "Second-pw-456"}),
])
def test_a_second_change_accepted_while_the_first_ones_pass_runs_is_applied_too(app, bridge, cluster, clock,
                                                                               function, first, second):
    """The pass worked from what it read at its start and ended ready: the second package, or password,
    which WHMCS was told is being applied, never was."""
    register_cluster(cluster)
    bridge.call("CreateAccount", account_params(cluster, 101))
    tick(clock)
    assert bridge.call(function, account_params(cluster, 101, **first)).get_json()["result"] == "success"
    answer, lines = _during_pass(app, clock, f"--- {function}:", lambda: bridge.call(
        function, account_params(cluster, 101, **second)).get_json())
    assert answer["result"] == "success"
    assert any("the service changed while it ran" in line for line in lines), "\n".join(lines)
    lines += tick(clock, 2)
    vm = db.session.get(VM, 101)
    db.session.refresh(vm)
    config = cluster.pve.vm(vm.vmid).config
    assert vm.status == "ready", "\n".join(lines)
    if function == "ChangePackage":
        assert int(config["cores"]) == 4
    else:
        assert config.get("cipassword") == "Second-pw-456"


@pytest.mark.parametrize("where", ["terminate", "remove", "error_terminate"])
def test_a_terminated_service_is_not_reset_to_creation(app, bridge, cluster, clock, where):
    """As a redeploy is refused: the reset deployed (or kept) a running VM with an address for the
    terminated service."""
    register_cluster(cluster)
    bridge.call("CreateAccount", account_params(cluster, 101))
    tick(clock)
    if where == "error_terminate":
        cluster.pve.fail("DELETE", "/nodes/{node}/qemu/{vmid}", 500, "storage unreachable", times=1)
    assert bridge.call("TerminateAccount", account_params(cluster, 101)).get_json()["result"] == "success"
    if where != "terminate":
        tick(clock)
    vm = db.session.get(VM, 101)
    db.session.refresh(vm)
    assert vm.status == where
    with pytest.raises(vm_service.VMActionError, match="not redeployed"):
        vm_service.reset(vm, "creation")
    assert vm.status == where


def test_a_vm_a_change_package_powered_off_is_not_reset_to_set_dns_records(app, bridge, cluster, clock):
    """set_dns_records leaves the VM as it is and ends ready: here, off for good with the change dropped."""
    register_cluster(cluster)
    bridge.call("CreateAccount", account_params(cluster, 101))
    tick(clock)
    bridge.call("ChangePackage", account_params(cluster, 101, configoptions={"CPU Cores": "2"}))
    cluster.pve.fail("PUT", "/nodes/{node}/qemu/{vmid}/config", 500, "injected failure", times=1)
    tick(clock)  # the stop done, Set CPU & RAM failed: the VM waits at cp_stop, off
    vm = db.session.get(VM, 101)
    db.session.refresh(vm)
    assert (vm.status, cluster.pve.vm(vm.vmid).status) == ("cp_stop", "stopped")
    with pytest.raises(vm_service.VMActionError, match="not deployed"):
        vm_service.reset(vm, "set_dns_records")
    vm_service.reset(vm, "change_package")  # the way on: the change package again
    tick(clock)
    db.session.refresh(vm)
    guest = cluster.pve.vm(vm.vmid)
    assert (vm.status, guest.status, int(guest.config["cores"])) == ("ready", "running", 2)


def test_a_one_step_command_for_a_service_with_no_vm_says_so(app, bridge, cluster, clock):
    """It answered "the VM is being worked on right now" (no row to lease)."""
    register_cluster(cluster)
    assert bridge.call("VMSetCpuRam", account_params(cluster, 101)).get_json() == \
        {"result": "error", "message": "this service has no VM"}
