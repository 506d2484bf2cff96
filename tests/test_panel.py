"""The panel: login and throttling, access groups, CSRF, every route behind a login, the screens' content."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from core import admins
from core.extensions import db
from core.models import VM, Client, IPAddress, IPPool, Product, Server, Service, VMRun

PASSWORD = "correct horse battery"


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', html).group(1)


def login(client, username="root", password=PASSWORD):
    page = client.get("/login").get_data(as_text=True)
    return client.post("/login", data={"username": username, "password": password, "csrf_token": csrf_of(page)})


@pytest.fixture
def admin(app):
    return admins.create_admin("root", PASSWORD)


@pytest.fixture
def logged_in(client, admin):
    assert login(client).status_code == 302
    return client


def seed_fleet(n=3):
    db.session.add(Server(id=1, name="pve-waw1", hostname="127.0.0.1", token_id="root@pam!t",
                          token_secret="enc:v1:xyz"))
    db.session.add(Client(id=1, firstname="<script>alert(1)</script>", lastname="Poloviy"))
    db.session.add(Product(id=1, name="VPS Start", settings={}))
    pool = IPPool(server_id=1, family=4, bridge="vmbr0", vlan=0, gateway="192.168.130.1", mask=24,
                  first="192.168.130.2", last="192.168.130.254")
    db.session.add(pool)
    db.session.flush()
    for n in range(n):
        sid = 5546 + n
        db.session.add(Service(id=sid, client_id=1, product_id=1, server_id=1, status="Active"))
        db.session.add(VM(service_id=sid, server_id=1, vmid=2000 + n, name=f"{sid}-1776530141",
                          status="ready" if n else "set_cloudinit",
                          rev_dns={f"192.168.130.{n + 2}": f"{sid}-1776530141.puqcloud.com"}))
        db.session.flush()
        db.session.add(IPAddress(server_id=1, pool_id=pool.id, family=4, address=f"192.168.130.{n + 2}",
                                 key=f"c0a882{n + 2:02x}", service_id=sid))
    db.session.commit()
    return pool


def test_every_route_needs_a_login(app, client):
    public = {"panel.login", "panel.language", "static", "legacy.dns_json", "healthz"}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in public or rule.endpoint.startswith("bridge.") or rule.endpoint.startswith("api."):
            continue
        url = re.sub(r"<(?:int:)?\w+>", "1", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            answer = client.open(url, method=method)
            # a POST without a session has no CSRF token either: refused before the login check (400)
            allowed = (302, 401) if method == "GET" else (400, 401)
            assert answer.status_code in allowed, (method, url, answer.status_code)
            if answer.status_code == 302:
                assert "/login" in answer.headers["Location"]


def test_login_wrong_password_and_throttling(client, admin):
    assert login(client, password="wrong").status_code == 401
    for _ in range(4):
        login(client, password="wrong")
    answer = login(client)  # the right password, but too many failures just now
    assert answer.status_code == 429
    assert "Too many failed logins" in answer.get_data(as_text=True)
    # found in review: the same name padded with spaces (which the login strips) or in other case once had
    # fresh counts of its own
    for variant in ("  root ", "ROOT", "root\t"):
        assert login(client, username=variant).status_code == 429, variant


def test_behind_a_trusted_proxy_failures_count_against_the_client_address(tmp_path):
    from conftest import make_app
    from core.models import LoginAttempt
    for proxies, expected in ((0, "127.0.0.1"), (1, "203.0.113.9")):
        app = make_app(tmp_path / str(proxies), f"sqlite:///{tmp_path / f'{proxies}.sqlite3'}",
                       TRUSTED_PROXIES=proxies)
        with app.app_context():
            client = app.test_client()
            page = client.get("/login").get_data(as_text=True)
            client.post("/login", data={"username": "x", "password": "y", "csrf_token": csrf_of(page)},
                        headers={"X-Forwarded-For": "203.0.113.9"})
            assert [a.remote_addr for a in db.session.scalars(select(LoginAttempt))] == [expected]
            db.session.remove()
            db.engine.dispose()


def test_unknown_user_and_next_redirect_is_local_only(client, admin):
    assert login(client, username="nobody").status_code == 401
    page = client.get("/login?next=https://evil.example/").get_data(as_text=True)
    answer = client.post("/login?next=https://evil.example/",
                         data={"username": "root", "password": PASSWORD, "csrf_token": csrf_of(page)})
    assert answer.status_code == 302 and answer.headers["Location"] == "/"


def test_posts_without_csrf_are_refused(logged_in):
    seed_fleet()
    for url, data in (("/pools", {"server_id": 1}), ("/vms/5546/reset", {"status": "ready"}),
                      ("/settings", {"api_timeout": 20}), ("/language", {"locale": "de"}), ("/logout", {})):
        answer = logged_in.post(url, data=data)
        assert answer.status_code in (400, 302), url
        if url != "/language":
            assert answer.status_code == 400, url
            assert "The form had expired" in answer.get_data(as_text=True), url  # what to do, not a bare 400
    assert db.session.get(VM, 5546).status == "set_cloudinit"


def test_password_change_ends_sessions(logged_in, admin):
    assert logged_in.get("/").status_code == 200
    admins.set_password(admin, "another long password")
    assert logged_in.get("/").status_code == 302


def test_dashboard_cards(logged_in):
    seed_fleet()
    html = logged_in.get("/").get_data(as_text=True)
    assert "IP Pools" in html and "KVM Services" in html and "In-process ticker" in html
    assert "Deploying" in html


def test_pools_list_usage_and_rdns_hint(logged_in):
    seed_fleet()
    html = logged_in.get("/pools").get_data(as_text=True)
    assert "rDNS zone: 130.168.192.in-addr.arpa" in html
    assert 'aria-valuenow="3"' in html and 'aria-valuemax="253"' in html
    assert "192.168.130.2 – 192.168.130.254" in html


def test_pool_validation_errors_are_next_to_their_fields(logged_in):
    seed_fleet()
    page = logged_in.get("/pools").get_data(as_text=True)
    answer = logged_in.post("/pools", data={"csrf_token": csrf_of(page), "server_id": 1, "family": "4",
                                            "bridge": "not a bridge", "vlan": "0", "gateway": "2001:db8::1",
                                            "mask": "24", "first": "10.0.0.9", "last": "10.0.0.1"})
    assert answer.status_code == 400
    html = answer.get_data(as_text=True)
    assert "Not a valid bridge name" in html and "Gateway must be an IPv4 address" in html
    assert "data-open-now" in html
    assert db.session.scalar(select(IPPool).where(IPPool.bridge == "not a bridge")) is None


def test_pool_add_edit_and_delete_refused_while_allocated(logged_in):
    pool = seed_fleet()
    token = csrf_of(logged_in.get("/pools").get_data(as_text=True))
    answer = logged_in.post("/pools", data={"csrf_token": token, "server_id": 1, "family": "6", "bridge": "vmbr1",
                                            "vlan": "10", "gateway": "2001:db8::1", "mask": "64", "dns1": "",
                                            "dns2": "2001:4860:4860::8888", "first": "2001:db8::2",
                                            "last": "2001:db8::ffff"})
    assert answer.status_code == 302
    new = db.session.scalar(select(IPPool).where(IPPool.family == 6))
    assert new.dns2 == "2001:4860:4860::8888"
    edit = logged_in.post(f"/pools/{pool.id}", data={"csrf_token": token, "server_id": 1, "family": "4",
                                                     "bridge": "vmbr2", "vlan": "5", "gateway": "192.168.130.1",
                                                     "mask": "24", "first": "192.168.130.2",
                                                     "last": "192.168.130.100"})
    assert edit.status_code == 302
    db.session.refresh(pool)
    assert pool.bridge == "vmbr2" and pool.last == "192.168.130.100"
    assert db.session.scalar(select(IPAddress).where(IPAddress.address == "192.168.130.2")).service_id == 5546
    refused = logged_in.post(f"/pools/{pool.id}/delete", data={"csrf_token": token}, follow_redirects=True)
    assert "3 addresses are allocated: 192.168.130.2 (service 5546)" in refused.get_data(as_text=True)
    assert db.session.get(IPPool, pool.id) is not None
    assert logged_in.post(f"/pools/{new.id}/delete", data={"csrf_token": token}).status_code == 302
    assert db.session.get(IPPool, new.id) is None


def test_vm_management_lists_searches_and_escapes(logged_in):
    seed_fleet(3)
    html = logged_in.get("/vms").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert "5546-1776530141.puqcloud.com" in html and "SET_CLOUDINIT" in html
    assert "Showing 1 to 3 of 3 entries" in html
    only = logged_in.get("/vms?vm_status=ready").get_data(as_text=True)
    assert "#5546" not in only and "#5547" in only
    found = logged_in.get("/vms?q=192.168.130.4").get_data(as_text=True)
    assert "#5548" in found and "#5547" not in found
    # "%" and "_" are searched as typed, not as wildcards (found in review: each matched every VM)
    assert "Showing 0 to 0 of 0 entries" in logged_in.get("/vms?q=%25").get_data(as_text=True)
    underscore = logged_in.get("/vms?q=_").get_data(as_text=True)  # only set_cloudinit has one
    assert "Showing 1 to 1 of 1 entries" in underscore and "#5546" in underscore
    statuses = logged_in.get("/vms/status", query_string={"ids": "5546,5547,\u00b9,99999999999999999999"},
                             headers={"Accept": "application/json"}).get_json()
    assert statuses["5546"]["status"] == "set_cloudinit" and set(statuses) == {"5546", "5547"}


def test_vm_management_shows_ten_entries_by_default_and_more_on_request(logged_in):
    seed_fleet(12)
    html = logged_in.get("/vms").get_data(as_text=True)
    assert "Showing 1 to 10 of 12 entries" in html and html.count('<tr data-service="') == 10
    assert '<option value="10" selected>10</option>' in html and '<option value="100" >100</option>' in html
    html = logged_in.get("/vms?per_page=25").get_data(as_text=True)
    assert "Showing 1 to 12 of 12 entries" in html and '<option value="25" selected>25</option>' in html


def test_cron_settings_show_this_installations_crontab_line(logged_in, app):
    import sys
    from pathlib import Path
    html = logged_in.get("/settings/cron").get_data(as_text=True)
    assert "Crontab Setup" in html and "This prevents stuck locks from blocking all future cron executions." in html
    database = app.config["SQLALCHEMY_DATABASE_URI"]  # the tests' own file, not instance/pkvm.sqlite3
    line = f"* * * * * cd {app.root_path} &amp;&amp; PKVM_INSTANCE_PATH={app.instance_path} " \
           f"DATABASE_URL={database} {Path(sys.executable).with_name('flask')} cron &gt; /dev/null 2&gt;&amp;1"
    assert line in html and "rq cron jobs/rq_cron.py" in html and "flask cron --task=processVirtualMachines" in html


def test_the_crontab_line_names_the_database_without_its_password_and_none_is_offered_with_redis(logged_in, app):
    """Found in review: the line had no DATABASE_URL, so run from cron it made an empty SQLite file and failed
    (into /dev/null); and it was offered beside rq cron, the one tick of an installation with Redis."""
    from pathlib import Path
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + str(Path(app.instance_path) / "pkvm.sqlite3")
    html = logged_in.get("/help").get_data(as_text=True)
    assert "cron &gt; /dev/null" in html and "DATABASE_URL" not in html  # the default install needs none
    app.config["SQLALCHEMY_DATABASE_URI"] = "postgresql+psycopg://pkvm:Db-Secret-99@db.example:5432/pkvm"
    html = logged_in.get("/help").get_data(as_text=True)
    assert "DATABASE_URL=&#39;postgresql+psycopg://pkvm:***@db.example:5432/pkvm&#39;" in html  # shell-quoted
    assert "Db-Secret-99" not in html and "Write the database password where the line shows ***" in html
    for url in ("postgresql+psycopg://pkvm@db/pkvm?password=Db-Secret-99&sslmode=require",
                "mysql+pymysql://pkvm@db/pkvm?passwd=Db-Secret-99", "postgresql+psycopg://pkvm@db/pkvm?sslpassword=Db-Secret-99"):
        app.config["SQLALCHEMY_DATABASE_URI"] = url
        html = logged_in.get("/help").get_data(as_text=True)
        assert "Db-Secret-99" not in html and "=***" in html, url  # found in review: query parameters
        assert "sslmode=require" in html or "sslmode" not in url  # the rest of the URL stays
    app.config["REDIS_URL"] = "redis://127.0.0.1:6379/0"
    for page in ("/help", "/settings/cron"):
        html = logged_in.get(page).get_data(as_text=True)
        assert "crontab -e" not in html and "Add no crontab line" in html, page


def test_vm_reset_redeploy_log_record_and_delete(logged_in):
    seed_fleet(2)
    db.session.add(VMRun(service_id=5546, action="deploy", from_status="creation", to_status="set_cloudinit",
                         result="error", error="VM failed to start", steps=[
                             {"label": "Start VM", "from": "set_cloudinit", "to": "set_cloudinit",
                              "result": "error: VM failed to start", "seconds": 5.11, "at": "2026-04-10T03:53:51",
                              "lines": ["still running, waited 15s / 60s"]}]))
    vm = db.session.get(VM, 5546)
    vm.last_error_action, vm.last_error_message = "deploy", "VM failed to start (status: stopped)"
    db.session.commit()
    token = csrf_of(logged_in.get("/vms").get_data(as_text=True))
    log = logged_in.get("/vms/5546/log").get_data(as_text=True)
    assert "alert-error banner" in log and "VM failed to start (status: stopped)" in log and "Start VM" in log
    assert '<div class="sub mono">still running, waited 15s / 60s</div>' in log
    assert logged_in.post("/vms/5546/reset", data={"csrf_token": token, "status": "bogus"}).status_code == 302
    assert db.session.get(VM, 5546).status == "set_cloudinit"
    logged_in.post("/vms/5546/reset", data={"csrf_token": token, "status": "creation"})
    db.session.refresh(vm)
    assert vm.status == "creation"
    ready_redeploy = logged_in.post("/vms/5547/redeploy", data={"csrf_token": token}, follow_redirects=True)
    assert "A ready VM is not redeployed" in ready_redeploy.get_data(as_text=True)
    logged_in.post("/vms/5546/redeploy", data={"csrf_token": token})
    db.session.refresh(vm)
    assert vm.status == "redeploy"
    bad = logged_in.post("/vms/5546/record", data={"csrf_token": token, "vmid": "abc", "rev_dns": "[1]"})
    assert bad.status_code == 400 and "Must be a whole number" in bad.get_data(as_text=True)
    # found in review: a value longer than its column was a database error (a 500) on PostgreSQL and MariaDB
    long = logged_in.post("/vms/5546/record", data={"csrf_token": token, "name": "n" * 256, "mac": "m" * 33})
    assert long.status_code == 400 and "At most 255 characters." in long.get_data(as_text=True)
    assert "At most 32 characters." in long.get_data(as_text=True)
    # found in an audit: a NUL, which no column of PostgreSQL takes, was a database error there (a 500)
    nul = logged_in.post("/vms/5546/record", data={"csrf_token": token, "name": "a\x00b"})
    assert nul.status_code == 400 and "cannot be stored (a NUL)" in nul.get_data(as_text=True)
    assert db.session.get(VM, 5546).name == "5546-1776530141"
    # found in review: a VMID another VM has was a 500, and any status was taken (the VM then stalled)
    seed_taken = db.session.get(VM, 5547).vmid
    taken = logged_in.post("/vms/5546/record", data={"csrf_token": token, "vmid": str(seed_taken)})
    assert taken.status_code == 400 and "Another VM of this server has this VMID." in taken.get_data(as_text=True)
    bogus = logged_in.post("/vms/5546/record", data={"csrf_token": token, "status": "bogus_status"})
    assert bogus.status_code == 400 and "Not a status this product knows." in bogus.get_data(as_text=True)
    # and a page number no database offset can take is an empty page, not a 500
    assert logged_in.get("/vms?page=99999999999999999999").status_code == 200
    logged_in.post("/vms/5546/record", data={"csrf_token": token, "vmid": "2100", "status": "remove"})
    db.session.refresh(vm)
    assert (vm.vmid, vm.status) == (2100, "remove")
    logged_in.post("/vms/5546/delete", data={"csrf_token": token})
    assert db.session.get(VM, 5546) is None
    assert db.session.scalar(select(IPAddress).where(IPAddress.address == "192.168.130.2")).service_id is None


def test_read_only_group_sees_but_cannot_change(client, app):
    group = admins.create_group("support", ["dashboard", "vms"], can_change=False)
    admins.create_admin("helpdesk", PASSWORD, group)
    seed_fleet()
    login(client, "helpdesk")
    assert client.get("/vms").status_code == 200
    assert client.get("/pools").status_code == 403
    token = csrf_of(client.get("/vms").get_data(as_text=True))
    assert client.post("/vms/5546/reset", data={"csrf_token": token, "status": "ready"}).status_code == 403
    assert "Reset VM Status" not in client.get("/vms").get_data(as_text=True)


def test_settings_validated_to_their_ranges_and_secret_never_shown(logged_in):
    token = csrf_of(logged_in.get("/settings").get_data(as_text=True))
    bad = logged_in.post("/settings", data={"csrf_token": token, "api_timeout": "0", "api_heavy_timeout": "601",
                                            "migration_timeout": "300", "delete_data_on_uninstall": "on"})
    assert bad.status_code == 400
    # what was typed comes back with the errors, the boxes too (found in review: they showed the stored values)
    assert re.search(r'name="delete_data_on_uninstall"\s+checked', bad.get_data(as_text=True))
    assert not re.search(r'name="migration_enabled"\s+checked', bad.get_data(as_text=True))
    ok = logged_in.post("/settings", data={"csrf_token": token, "api_timeout": "20", "api_heavy_timeout": "90",
                                           "migration_timeout": "300", "migration_enabled": "on",
                                           "whmcs_api_secret": "top-secret-value"})
    assert ok.status_code == 302
    html = logged_in.get("/settings").get_data(as_text=True)
    assert "top-secret-value" not in html and "(unchanged - enter new to replace)" in html
    # found in review: a new API URL (or identifier) with the stored secret kept would send the secret there
    base = {"csrf_token": token, "api_timeout": "20", "api_heavy_timeout": "90", "migration_timeout": "300"}
    moved = logged_in.post("/settings", data={**base, "whmcs_api_url": "https://elsewhere.example/includes/api.php"})
    assert moved.status_code == 400
    assert "Enter the secret again: where it is sent has changed." in moved.get_data(as_text=True)
    assert logged_in.post("/settings", data={**base, "whmcs_api_url": "https://elsewhere.example/includes/api.php",
                                             "whmcs_api_secret": "the-new-secret"}).status_code == 302
    cron = logged_in.post("/settings/cron", data={"csrf_token": token, "cron_mode": "standalone",
                                                  "cron_lock_timeout": "600", "interval_processVirtualMachines": "2",
                                                  "interval_removeOldSnapshots": "0", "interval_restoreBackupStatus": "1",
                                                  "interval_nowBackupStatus": "1", "interval_scheduleBackup": "5",
                                                  "interval_collectingStatistics": "60"})
    assert cron.status_code == 302
    html = logged_in.get("/settings/cron").get_data(as_text=True)
    assert "DISABLED" in html and "Process Virtual Machines" in html


def test_whmcs_admin_url_links_service_ids_and_clients_to_whmcs(logged_in):
    seed_fleet(1)
    html = logged_in.get("/vms").get_data(as_text=True)
    assert "clientsservices.php" not in html  # not set: plain text, as before
    token = csrf_of(logged_in.get("/settings").get_data(as_text=True))
    base = {"csrf_token": token, "api_timeout": "10", "api_heavy_timeout": "60", "migration_timeout": "300"}
    for bad in ("javascript:alert(1)", "billing.example.com/admin", "https:///admin"):
        answer = logged_in.post("/settings", data={**base, "whmcs_admin_url": bad})
        assert answer.status_code == 400 and "Must be an http:// or https:// address." in answer.get_data(as_text=True)
    assert logged_in.post("/settings", data={**base, "whmcs_api_url": "ftp://x"}).status_code == 400
    assert logged_in.post("/settings", data={**base, "whmcs_admin_url": "https://billing.example.com/admin/"}) \
        .status_code == 302
    html = logged_in.get("/vms").get_data(as_text=True)
    assert 'href="https://billing.example.com/admin/clientsservices.php?userid=1&amp;id=5546"' in html
    assert 'href="https://billing.example.com/admin/clientssummary.php?userid=1"' in html


def test_language_choice_and_rtl(logged_in, admin):
    token = csrf_of(logged_in.get("/").get_data(as_text=True))
    logged_in.post("/language", data={"csrf_token": token, "locale": "ar", "next": "/"})
    html = logged_in.get("/").get_data(as_text=True)
    assert 'dir="rtl"' in html and 'lang="ar"' in html
    assert db.session.get(type(admin), admin.id).locale == "ar"


def test_browser_language_is_the_fallback(client, admin):
    html = client.get("/login", headers={"Accept-Language": "he-IL,he;q=0.9"}).get_data(as_text=True)
    assert 'lang="he"' in html and 'dir="rtl"' in html


def test_product_page_checks_the_cluster_live_and_highlights_fields(logged_in, cluster):
    from tests.conftest import register_cluster
    register_cluster(cluster, template_vmid=9999, template_node="pve1", additional_disk_storage="nowhere")
    html = logged_in.get("/products/1").get_data(as_text=True)
    assert "Template 9999 does not exist" in html and "9000 (debian-12-cloud)" in html
    assert "Storage nowhere does not exist" in html
    assert html.count('class="invalid"') == 2
    token = csrf_of(html)
    fixed = logged_in.post("/products/1", data={"csrf_token": token, "template_vmid": "9001", "template_node": "pve1",
                                                "additional_disk_storage": "local-lvm", "cpu_cores": "2",
                                                "firewall_enable": "on"})
    assert fixed.status_code == 302
    html = logged_in.get("/products/1").get_data(as_text=True)
    assert "does not exist" not in html and 'class="invalid"' not in html
    product = db.session.get(Product, 1)
    db.session.refresh(product)
    assert product.settings["template_vmid"] == 9001 and product.settings["firewall_dhcp"] is False
    bad = logged_in.post("/products/1", data={"csrf_token": token, "cpu_cores": "0", "network_vlan": "9999"})
    assert bad.status_code == 400 and "VLAN must be between 0 (untagged) and 4094." in bad.get_data(as_text=True)


def test_product_page_says_when_the_cluster_does_not_answer(logged_in):
    seed_fleet(1)
    html = logged_in.get("/products/1").get_data(as_text=True)
    assert "does not answer" in html


def test_vm_actions_are_recorded_when_the_queue_is_down(tmp_path):
    """Found in review: Reset, Redeploy and Set DNS records (the bridge's button) committed the new status, then failed on an
    unreachable Redis with a 500. The status is the work: the next tick queues it."""
    from tests.conftest import Bridge, FreshContextClient, make_app
    app = make_app(tmp_path, f"sqlite:///{tmp_path / 'down.sqlite3'}", REDIS_URL="redis://127.0.0.1:1/0")
    app.test_client_class = FreshContextClient
    with app.app_context():
        admins.create_admin("root", PASSWORD)
        seed_fleet(3)
        client = app.test_client()
        assert login(client).status_code == 302
        token = csrf_of(client.get("/vms").get_data(as_text=True))
        for url, data, sid, status in (("/vms/5546/reset", {"status": "creation"}, 5546, "creation"),
                                       ("/vms/5546/redeploy", {}, 5546, "redeploy")):
            answer = client.post(url, data={"csrf_token": token, **data})
            assert answer.status_code == 302, (url, answer.status_code)
            db.session.expire_all()
            assert db.session.get(VM, sid).status == status, url
        answer = Bridge(app, app.test_client()).call("SetDNSRecords", {"serviceid": 5547})
        assert answer.status_code == 200 and answer.get_json() == {"result": "success"}
        db.session.expire_all()
        assert db.session.get(VM, 5547).status == "set_dns_records"
        db.session.remove()
        db.engine.dispose()


def test_a_session_ends_twelve_hours_after_login_whatever_the_polling(logged_in, app):
    """Found in review: the 12-hour lifetime and SameSite=Lax were set with setdefault over Flask's own
    defaults (31 days, no SameSite), so they never applied, and VM Management's 5-second status poll renewed
    the session for ever. A login now lasts 12 hours from the moment it was made."""
    import time
    from datetime import timedelta
    assert app.config["PERMANENT_SESSION_LIFETIME"] == timedelta(hours=12)
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax" and app.config["SESSION_COOKIE_HTTPONLY"] is True
    cookie = next(c for c in logged_in.get("/").headers.getlist("Set-Cookie") if c.startswith("session="))
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie
    assert logged_in.get("/vms/status", headers={"X-Requested-With": "fetch"}).status_code == 200
    with logged_in.session_transaction() as session:
        session["login_at"] = time.time() - 11.9 * 3600  # still within the 12 hours
    assert logged_in.get("/").status_code == 200
    with logged_in.session_transaction() as session:
        session["login_at"] = time.time() - 12.1 * 3600  # polled all along, but logged in 12 hours ago
    assert logged_in.get("/vms/status", headers={"X-Requested-With": "fetch"}).status_code == 401
    answer = logged_in.get("/")
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]
    assert "expired" in logged_in.get("/login").get_data(as_text=True)


def test_vm_admin_actions_keep_terminated_services_and_addresses_safe(logged_in):
    """Found in review: Redeploy was taken for a VM in error_terminate (a cancelled service got a fresh VM
    and a second Welcome email); a Reset kept the old red error for ever; Reset to remove (the VM is gone
    from Proxmox) kept the addresses taken; Delete Record of a VM that failed to terminate, and so may
    still run on Proxmox, handed its addresses to the next order."""
    from core import ipam
    seed_fleet(3)  # 5546 set_cloudinit (192.168.130.2), 5547 ready (.3), 5548 ready (.4)
    for sid in (5547, 5548):
        vm = db.session.get(VM, sid)
        vm.status, vm.last_error_action, vm.last_error_message = "error_terminate", "terminate", "HTTP 500"
    db.session.commit()
    token = csrf_of(logged_in.get("/vms").get_data(as_text=True))
    page = logged_in.post("/vms/5547/redeploy", data={"csrf_token": token}, follow_redirects=True)
    assert "failed to terminate is not redeployed" in page.get_data(as_text=True)
    assert db.session.get(VM, 5547).status == "error_terminate"
    assert 'action="/vms/5547/redeploy"' not in page.get_data(as_text=True)  # no button either
    # Reset to remove: the admin says the VM is gone; its error and its addresses go with it
    logged_in.post("/vms/5547/reset", data={"csrf_token": token, "status": "remove"})
    vm = db.session.get(VM, 5547)
    db.session.refresh(vm)
    assert vm.status == "remove" and vm.last_error_message is None and vm.last_error_action is None
    assert ipam.assigned(5547) == []
    # Delete Record straight from error_terminate: the row goes, its address stays taken
    logged_in.post("/vms/5548/delete", data={"csrf_token": token})
    assert db.session.get(VM, 5548) is None
    assert db.session.scalar(select(IPAddress.service_id).where(IPAddress.address == "192.168.130.4")) == 5548
    # the API does the same
    from core import admins as admin_service
    api_token = admin_service.create_token("ops")
    vm = db.session.get(VM, 5546)
    vm.status = "error_terminate"
    db.session.commit()
    answer = logged_in.post("/api/v1/vms/5546/redeploy", headers={"Authorization": f"Bearer {api_token}"})
    assert answer.status_code == 409 and db.session.get(VM, 5546).status == "error_terminate"


def test_a_group_without_the_dashboard_lands_on_its_first_section(client, app):
    """Found in review: logging in always went to the dashboard, a 403 for a group without it."""
    vms_only = admins.create_group("noc", ["vms"], can_change=False)
    admins.create_admin("noc", PASSWORD, vms_only)
    nothing = admins.create_group("none", [], can_change=False)
    admins.create_admin("idle", PASSWORD, nothing)
    answer = login(client, "noc")
    assert answer.status_code == 302 and answer.headers["Location"] == "/vms"
    assert client.get("/").headers["Location"] == "/vms"
    assert client.get("/vms").status_code == 200 and client.get("/settings").status_code == 403
    client.post("/logout", data={"csrf_token": csrf_of(client.get("/vms").get_data(as_text=True))})
    assert login(client, "idle").headers["Location"] == "/"
    assert client.get("/").status_code == 403  # a group that may see nothing: no redirect loop


def test_a_status_filter_no_vm_matches_stays_shown(logged_in):
    """Found in review: the VM status list held only statuses some VM has, so a remembered filter on another
    one showed "All VM Statuses" over an empty table."""
    seed_fleet(2)
    html = logged_in.get("/vms?vm_status=clone").get_data(as_text=True)
    assert re.search(r'<option value="clone"\s+selected', html), html[html.find("vm_status"):][:600]


def test_cron_settings_show_a_task_whose_last_run_failed(logged_in):
    """Found in review: the Status column showed ACTIVE for a task that crashed at every run; the last run's
    outcome is shown beside its time now."""
    from datetime import datetime, timezone

    from core.models import CronTask
    when = datetime(2026, 4, 10, 3, 50, tzinfo=timezone.utc)
    db.session.add_all([CronTask(name="processVirtualMachines", last_run_at=when, last_status="errors",
                                 last_processed=3, last_errors=2),
                        CronTask(name="removeOldSnapshots", last_run_at=when, last_status="failed", last_errors=1),
                        CronTask(name="scheduleBackup", last_run_at=when, last_status="success")])
    db.session.commit()
    html = logged_in.get("/settings/cron").get_data(as_text=True)
    assert html.count('class="badge bad">2 errors<') == 1 and "failed: see the server log" in html
    assert html.count("failed: see the server log") == 1


def test_product_page_checks_the_templates_node_and_the_target_nodes_storage(logged_in, cluster):
    """Found in review: a template on another node than the product says, or a storage its target node lacks,
    passed the live check, and the deploy then failed. Also: the upgrade and reset-password email templates
    can be set here, not only through the API."""
    from tests.conftest import register_cluster
    cluster.pve.storages["fast-pve1"] = {"type": "dir", "path": "/srv/fast", "content": "images", "nodes": "pve1",
                                         "active": 1, "files": set(), "volumes": {}, "total": 2 ** 40,
                                         "avail": 2 ** 40}
    register_cluster(cluster, template_vmid=9000, template_node="pve2", target_node="pve2",
                     system_disk_storage="fast-pve1")
    html = logged_in.get("/products/1").get_data(as_text=True)
    assert "Template 9000 is on node pve1, not on pve2." in html
    assert "Storage fast-pve1 is not on the target node pve2." in html
    token = csrf_of(html)
    saved = logged_in.post("/products/1", data={"csrf_token": token, "template_node": "pve1", "target_node": "pve1",
                                                "email_upgrade": "My Upgrade", "email_reset_password": "My Reset"})
    assert saved.status_code == 302
    html = logged_in.get("/products/1").get_data(as_text=True)
    assert "is on node" not in html and "is not on the target node" not in html
    product = db.session.get(Product, 1)
    db.session.refresh(product)
    assert (product.settings["email_upgrade"], product.settings["email_reset_password"]) == ("My Upgrade", "My Reset")


def test_logging_out_ends_a_copied_session_and_logging_in_starts_a_fresh_one(app, admin):
    """Found in review: the session is a signed cookie, so a copy of it kept working for 12 hours after
    logout; and the CSRF token of the session before the login (one an attacker could plant) carried over."""
    from tests.conftest import FreshContextClient
    app.test_client_class = FreshContextClient
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    before = csrf_of(page)
    assert client.post("/login", data={"username": "root", "password": PASSWORD, "csrf_token": before}).status_code == 302
    seed_fleet(1)
    after = csrf_of(client.get("/vms").get_data(as_text=True))
    assert after != before
    refused = client.post("/vms/5546/reset", data={"csrf_token": before, "status": "creation"})
    assert refused.status_code == 400  # the pre-login token does not work after the login
    cookie = client.get_cookie("session").value
    copy = app.test_client()
    copy.set_cookie("session", cookie)
    assert copy.get("/vms").status_code == 200
    client.post("/logout", data={"csrf_token": after})
    answer = copy.get("/vms")
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]


def test_help_page_says_how_to_connect_whmcs_and_the_cron(logged_in, app):
    """Seed 002's navigation ends with Help: links to documentation and support."""
    html = logged_in.get("/").get_data(as_text=True)
    assert 'href="/help"' in html
    page = logged_in.get("/help")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "http://localhost" in text and "flask bridge secret" in text and "cron" in text
    assert app.config["BRIDGE_SECRET"] not in text
    # paths stay left to right inside a right-to-left sentence (found in review: "healthz/" in Arabic)
    assert "<code>/healthz</code>" in text and "<code>/api/v1/openapi.json</code>" in text


def test_choosing_a_language_logged_out_lands_on_the_login_page(client):
    """Found in review: POST /language with no (or a foreign) next, logged out, answered 500."""
    page = client.get("/login").get_data(as_text=True)
    for data in ({}, {"next": "https://evil.example/"}):
        answer = client.post("/language", data={"csrf_token": csrf_of(page), "locale": "de", **data})
        assert answer.status_code == 302 and answer.headers["Location"] == "/login"


def test_a_record_edit_nested_deeper_than_json_goes_is_a_field_error(logged_in):
    seed_fleet()
    kept = db.session.get(VM, 5546).rev_dns
    page = logged_in.get("/vms/5546/record").get_data(as_text=True)
    answer = logged_in.post("/vms/5546/record", data={"csrf_token": csrf_of(page),
                                                      "rev_dns": '{"a":' * 50000 + "1" + "}" * 50000})
    assert answer.status_code == 400 and "Must be a JSON object." in answer.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(VM, 5546).rev_dns == kept


def test_a_wrong_allowlist_entry_is_shown_on_its_field(logged_in):
    page = logged_in.get("/settings").get_data(as_text=True)
    answer = logged_in.post("/settings", data={"csrf_token": csrf_of(page), "api_timeout": "10",
                                               "api_heavy_timeout": "60", "migration_timeout": "300",
                                               "dns_json_allowlist": "192.0.2.10, not-an-ip"})
    text = answer.get_data(as_text=True)
    assert answer.status_code == 400 and "Not an IP address or network: not-an-ip." in text
    assert 'value="192.0.2.10, not-an-ip"' in text  # what was typed stays


def test_unknown_pages_and_wrong_methods_get_the_panels_error_page_in_the_admins_language(logged_in, admin):
    """Found in review: 404 and 405 were Flask's bare English pages, without the panel around them."""
    page = logged_in.get("/").get_data(as_text=True)
    logged_in.post("/language", data={"csrf_token": csrf_of(page), "locale": "de", "next": "/"})
    missing = logged_in.get("/no/such/page")
    assert missing.status_code == 404 and '<html lang="de"' in missing.get_data(as_text=True)
    assert "<nav" in missing.get_data(as_text=True)
    wrong = logged_in.get("/logout")
    assert wrong.status_code == 405 and "<nav" in wrong.get_data(as_text=True)
    api = logged_in.get("/api/v1/no-such-thing")
    assert api.status_code == 404 and api.is_json


def test_a_form_over_the_size_limit_gets_the_panels_error_page(logged_in, app):
    page = logged_in.get("/settings").get_data(as_text=True)
    answer = logged_in.post("/settings", data={"csrf_token": csrf_of(page), "dns_json_allowlist": "x" * (3 << 20)})
    assert answer.status_code == 413 and "What was sent is too large." in answer.get_data(as_text=True)


def test_the_vm_log_speaks_the_admins_language(logged_in):
    """Found in review: the step labels and results of the VM log were English in every language."""
    from flask_babel import force_locale, gettext
    seed_fleet(1)
    db.session.add(VMRun(service_id=5546, action="deploy", from_status="creation", to_status="set_dns",
                         result="waiting", steps=[
                             {"label": "Allocate IP", "from": "creation", "to": "set_ip", "result": "success",
                              "seconds": 0.1, "at": "2026-04-10T03:53:51"},
                             {"label": "Set DNS records", "from": "set_ip", "to": "set_dns",
                              "result": "skip (no DNS zone configured)", "seconds": 0, "at": "2026-04-10T03:53:52"},
                             {"label": "Set <b>bold</b>", "from": "set_dns", "to": "set_dns", "result": "waiting",
                              "seconds": 0, "at": "2026-04-10T03:53:53"}]))
    db.session.commit()
    page = logged_in.get("/").get_data(as_text=True)
    logged_in.post("/language", data={"csrf_token": csrf_of(page), "locale": "de", "next": "/"})
    log = logged_in.get("/vms/5546/log").get_data(as_text=True)
    with force_locale("de"):
        wanted = [gettext("Allocate IP"), gettext("Set DNS records"), gettext("success"), gettext("skip"),
                  gettext("waiting")]
    assert "Allocate IP" not in wanted and all(text in log for text in wanted), wanted
    assert f"{wanted[3]} (no DNS zone configured)" in log  # the detail after it stays as the step wrote it
    assert "Set &lt;b&gt;bold&lt;/b&gt;" in log  # a label the catalogs do not know is shown escaped


def test_the_vm_log_says_why_a_pass_ended_without_an_error_step(logged_in):
    """Found in review: an interrupted pass, one a stopping worker ended and a step waiting for Proxmox were
    shown with no reason (it was stored with the run, or not at all)."""
    seed_fleet(1)
    db.session.add(VMRun(service_id=5546, action="deploy", from_status="clone", to_status="clone",
                         result="interrupted", error="interrupted in Migrate to target node: JobTimeoutException",
                         steps=[]))
    db.session.add(VMRun(service_id=5546, action="deploy", from_status="clone", to_status="clone",
                         result="waiting", steps=[
                             {"label": "Migrate to target node", "from": "clone", "to": "clone", "result": "waiting",
                              "note": "migration still running", "seconds": 5.0, "at": "2026-04-10T03:53:51"}]))
    db.session.commit()
    log = logged_in.get("/vms/5546/log").get_data(as_text=True)
    assert "interrupted in Migrate to target node: JobTimeoutException" in log
    assert "(migration still running)" in log
