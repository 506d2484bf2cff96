"""The panel in a real browser: what an admin clicks, types and sees, driven with Playwright in Chromium.

CI installs what this needs: the Debian package ``chromium`` (apt-get install -y chromium, giving
/usr/bin/chromium) and the Python package ``playwright`` (pip; no ``playwright install``: the system
Chromium is used; pytest-playwright is not needed, this file drives the sync API itself). Without them the
module is skipped, except under CI, where it fails.

Each test serves the app with a real threaded WSGI server on 127.0.0.1 over a fresh SQLite database,
and saves a full-page screenshot to test-artifacts/screenshots/<test name>.png.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
USER, PASSWORD = "root", "correct horse battery"


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install playwright)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    return None


_missing = _browser_missing()
if _missing:
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must provide a browser for tests/test_browser.py: {_missing}")
    pytest.skip(_missing, allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from conftest import make_app  # noqa: E402
from core import admins  # noqa: E402
from core.extensions import db  # noqa: E402
from core.models import VM, Client, IPAddress, IPPool, Product, Server, Service, VMRun  # noqa: E402

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def arabic_catalog(served) -> str:
    """The Arabic msgstr of "IP Pools" as the catalog has it now, compiled (.mo files are not committed) and
    not hidden by translations cached earlier: Flask-Babel keeps one cache per process, for every app."""
    subprocess.run([sys.executable, "-m", "babel.messages.frontend", "compile", "-d", "translations", "-l", "ar"],
                   cwd=ROOT, check=True, capture_output=True)
    from babel.messages.pofile import read_po

    from core.extensions import babel
    with open(ROOT / "translations" / "ar" / "LC_MESSAGES" / "messages.po", "rb") as po:
        wanted = read_po(po, locale="ar").get("IP Pools").string
    with served.app.app_context():
        babel.domain_instance.cache.clear()
    return wanted


@pytest.fixture(scope="module")
def chromium():
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Served:
    app: object
    url: str


@pytest.fixture
def served(tmp_path):
    """The app on a fresh database, with an admin, served on 127.0.0.1 by a threaded WSGI server."""
    app = make_app(tmp_path, f"sqlite:///{tmp_path / 'browser.sqlite3'}")
    with app.app_context():
        admins.create_admin(USER, PASSWORD)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(app, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def tab(chromium, served) -> Page:
    context = chromium.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    context.set_default_timeout(5000)
    tab = context.new_page()
    yield tab
    context.close()


def shot(tab: Page, request, suffix: str = "") -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{request.node.originalname}{suffix}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path


def log_in(tab: Page, served: Served) -> None:
    tab.goto(served.url + "/")
    expect(tab).to_have_url(served.url + "/login?next=/")
    tab.fill("input[name=username]", USER)
    tab.fill("input[name=password]", PASSWORD)
    tab.click("button[type=submit]:has-text('Log in')")
    expect(tab).to_have_url(served.url + "/")
    # app.js is deferred: until it has run, a change of the language picker submits nothing (seen on a
    # loaded machine)
    tab.wait_for_load_state("load")


def seed(app, statuses=("ready",)) -> None:
    """A server, a product, a client, a small IPv4 pool with one address per VM, and a VM per status
    (service ids 5546, 5547, ...)."""
    with app.app_context():
        db.session.add(Server(id=1, name="pve-waw1", hostname="127.0.0.1", token_id="root@pam!t"))
        db.session.add(Client(id=1, firstname="Ada", lastname="Lovelace"))
        db.session.add(Product(id=1, name="VPS Start", settings={}))
        pool = IPPool(server_id=1, family=4, bridge="vmbr1", vlan=30, gateway="10.20.30.1", mask=29,
                      first="10.20.30.2", last="10.20.30.6")
        db.session.add(pool)
        db.session.flush()
        for n, status in enumerate(statuses):
            sid = 5546 + n
            db.session.add(Service(id=sid, client_id=1, product_id=1, server_id=1, status="Active"))
            db.session.add(VM(service_id=sid, server_id=1, vmid=2000 + n, name=f"{sid}-1776530141", status=status))
            db.session.flush()
            db.session.add(IPAddress(server_id=1, pool_id=pool.id, family=4, address=f"10.20.30.{n + 2}",
                                     key=f"0a141e{n + 2:02x}", service_id=sid))
        db.session.commit()


# ----------------------------------------------------------------------------- tests


def test_login_lands_on_dashboard_with_cards(tab, served, request):
    seed(served.app, ("ready", "ready", "set_cloudinit"))
    log_in(tab, served)
    expect(tab.locator("h1")).to_have_text("Dashboard")
    cards = tab.locator(".cards .card.stat")
    expect(cards).to_have_count(12)  # 5 sections + 7 at a glance (ticker mode: no Redis card)
    card = {label: cards.filter(has=tab.locator(".label", has_text=label)).locator(".value")
            for label in ("IP Pools", "KVM Services", "VM Management", "Deploying", "Workers")}
    expect(card["IP Pools"]).to_have_text("1")
    expect(card["KVM Services"]).to_have_text("3")
    expect(card["VM Management"]).to_have_text("2 ready")
    expect(card["Deploying"]).to_have_text("1")
    expect(card["Workers"]).to_have_text("In-process ticker (no Redis)")
    expect(tab.locator("nav.nav a.active")).to_have_text("Home")
    expect(tab.locator(".topbar-end button.link")).to_have_text(f"Log out {USER}")
    shot(tab, request)


def test_pool_add_with_live_rdns_hint_and_usage_bar(tab, served, request):
    seed(served.app, ("ready", "ready", "ready"))  # the existing /29 pool: 3 of 5 addresses used
    log_in(tab, served)
    tab.click("nav.nav >> text=IP Pools")
    expect(tab.locator("h1")).to_have_text("IP Pools")
    tab.click("button:has-text('+ Add IP Pool')")
    dialog = tab.locator("#pool-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("h2")).to_have_text("Add IP Pool")
    hint = dialog.locator("[data-rdns-hint]")
    dialog.locator("select[name=server_id]").select_option(label="pve-waw1")
    dialog.locator("select[name=family]").select_option("4")
    dialog.locator("input[name=bridge]").fill("vmbr0")
    dialog.locator("input[name=vlan]").fill("0")
    dialog.locator("input[name=gateway]").press_sequentially("192.168.130.1", delay=10)
    expect(hint).to_have_text("")  # no mask yet: nothing to show
    with tab.expect_response(lambda answer: "/pools/rdns-hint?" in answer.url and "mask=24" in answer.url):
        dialog.locator("input[name=mask]").fill("24")
    expect(hint).to_have_text("rDNS zone: 130.168.192.in-addr.arpa")  # fetched live from /pools/rdns-hint
    dialog.locator("input[name=first]").fill("192.168.130.2")
    dialog.locator("input[name=last]").fill("192.168.130.254")
    shot(tab, request, "-dialog")
    dialog.locator("button[type=submit]").click()

    expect(tab).to_have_url(served.url + "/pools")
    expect(tab.locator(".alert-success")).to_have_text("IP pool added.")
    rows = tab.locator("#pools tbody tr[data-pool-id]")
    expect(rows).to_have_count(2)
    new = rows.filter(has_text="192.168.130.1")
    expect(new.locator("td").nth(3)).to_have_text("vmbr0")
    addresses = new.locator("td").nth(7)
    expect(addresses).to_contain_text("253")  # the pool's total, then its range and rDNS zone
    expect(addresses.locator(".sub").first).to_have_text("192.168.130.2 – 192.168.130.254")
    expect(addresses.locator(".sub").last).to_have_text("rDNS zone: 130.168.192.in-addr.arpa")
    usage = new.locator(".usage")
    expect(usage).to_be_visible()
    expect(usage).to_have_attribute("aria-valuemax", "253")
    expect(usage).to_have_attribute("aria-valuenow", "0")
    # the older pool's bar is drawn 3/5 full
    old = rows.filter(has_text="10.20.30.1")
    expect(old.locator("td").nth(7).locator(".sub").last).to_have_text("rDNS zone: classless delegation required")
    bar = old.locator(".usage").bounding_box()
    fill = old.locator(".usage span").bounding_box()
    assert bar and fill and abs(fill["width"] / bar["width"] - 0.6) < 0.02, (bar, fill)
    with served.app.app_context():
        saved = db.session.query(IPPool).filter_by(gateway="192.168.130.1").one()
        assert (saved.server_id, saved.family, saved.bridge, saved.vlan, saved.mask, saved.first, saved.last) == \
            (1, 4, "vmbr0", 0, 24, "192.168.130.2", "192.168.130.254")
    shot(tab, request)


def test_rdns_hint_is_not_overwritten_by_a_late_answer(tab, served, request):
    seed(served.app)
    log_in(tab, served)
    held = []

    def hold_the_first_keystroke(route):
        if "mask=2&" in route.request.url or route.request.url.endswith("mask=2"):
            held.append(route)  # answered later, after the one for mask=24
        else:
            route.continue_()
    tab.route("**/pools/rdns-hint?*", hold_the_first_keystroke)
    tab.goto(served.url + "/pools")
    tab.click("button:has-text('+ Add IP Pool')")
    dialog = tab.locator("#pool-dialog")
    hint = dialog.locator("[data-rdns-hint]")
    dialog.locator("input[name=gateway]").fill("192.168.130.1")
    dialog.locator("input[name=mask]").press_sequentially("24", delay=50)
    expect(hint).to_have_text("rDNS zone: 130.168.192.in-addr.arpa")
    assert len(held) == 1
    with tab.expect_response(lambda answer: "mask=2" in answer.url and "mask=24" not in answer.url):
        held[0].continue_()
    tab.wait_for_timeout(200)
    shot(tab, request)
    expect(hint).to_have_text("rDNS zone: 130.168.192.in-addr.arpa", timeout=500)


def _submit_pool_with_ipv6_gateway(tab: Page, served: Served):
    tab.goto(served.url + "/pools")
    tab.click("button:has-text('+ Add IP Pool')")
    dialog = tab.locator("#pool-dialog")
    dialog.locator("select[name=family]").select_option("4")
    for name, value in (("bridge", "vmbr0"), ("vlan", "0"), ("gateway", "2001:db8::1"), ("mask", "24"),
                        ("first", "192.168.130.2"), ("last", "192.168.130.254")):
        dialog.locator(f"input[name={name}]").fill(value)
    dialog.locator("button[type=submit]").click()
    expect(tab).to_have_url(served.url + "/pools")
    return dialog


def test_pool_with_wrong_family_gateway_reopens_dialog_with_field_error(tab, served, request):
    seed(served.app)
    log_in(tab, served)
    dialog = _submit_pool_with_ipv6_gateway(tab, served)
    expect(dialog).to_be_visible()  # the answer (400) opens the dialog again by itself
    expect(dialog.locator("h2")).to_have_text("Add IP Pool")
    gateway = dialog.locator("input[name=gateway]")
    expect(gateway).to_have_attribute("aria-invalid", "true")
    error = dialog.locator("label:has(input[name=gateway]) .field-error")
    expect(error).to_have_text("Gateway must be an IPv4 address.")
    expect(error).to_be_visible()
    expect(dialog.locator(".field-error")).to_have_count(1)  # nothing else is wrong
    box, field = error.bounding_box(), gateway.bounding_box()
    assert 0 <= box["y"] - (field["y"] + field["height"]) < 30 and abs(box["x"] - field["x"]) < 5  # right under it
    with served.app.app_context():
        assert db.session.query(IPPool).count() == 1  # only the seeded one
    shot(tab, request)


def test_reopened_pool_dialog_keeps_what_was_typed(tab, served, request):
    seed(served.app)
    log_in(tab, served)
    dialog = _submit_pool_with_ipv6_gateway(tab, served)
    expect(dialog).to_be_visible()
    shot(tab, request)
    for name, value in (("bridge", "vmbr0"), ("vlan", "0"), ("gateway", "2001:db8::1"), ("mask", "24"),
                        ("first", "192.168.130.2"), ("last", "192.168.130.254")):
        expect(dialog.locator(f"input[name={name}]")).to_have_value(value, timeout=1000)


def test_vm_status_filter_is_remembered_across_visits(tab, served, request):
    seed(served.app, ("ready", "set_cloudinit", "ready", "error_terminate", "creation"))
    log_in(tab, served)
    tab.goto(served.url + "/vms")
    rows = tab.locator("#vms tbody tr[data-service]")
    expect(rows).to_have_count(5)
    status_filter = tab.locator("#vm-filters select[name=vm_status]")
    with tab.expect_navigation():
        status_filter.select_option("ready")  # the form submits on change
    expect(tab).to_have_url(served.url + "/vms?service_status=&vm_status=ready&q=&per_page=10&sort=id&dir=desc")
    expect(rows).to_have_count(2)
    assert tab.evaluate("JSON.parse(localStorage.getItem('vm-filters'))") == \
        {"service_status": "", "vm_status": "ready"}

    tab.goto(served.url + "/vms", wait_until="commit")  # no query string: the remembered filter comes back
    tab.wait_for_url(served.url + "/vms?vm_status=ready")
    tab.wait_for_load_state()
    expect(status_filter).to_have_value("ready")
    expect(rows).to_have_count(2)
    expect(tab.locator("#vms [data-field=status]")).to_have_text(["READY", "READY"])
    expect(tab.locator(".pager")).to_contain_text("Showing 1 to 2 of 2 entries")
    shot(tab, request)


def test_log_button_shows_the_failed_run_in_a_dialog(tab, served, request):
    seed(served.app, ("set_cloudinit", "ready"))
    with served.app.app_context():
        db.session.add(VMRun(service_id=5546, action="deploy", from_status="creation", to_status="set_cloudinit",
                             result="error", error="VM failed to start", steps=[
                                 {"label": "Clone template", "from": "clone", "to": "migrated", "result": "success",
                                  "seconds": 12.4, "at": "2026-04-10T03:53:40"},
                                 {"label": "Start VM", "from": "set_cloudinit", "to": "set_cloudinit",
                                  "result": "error: VM failed to start", "seconds": 5.11,
                                  "at": "2026-04-10T03:53:51"}]))
        vm = db.session.get(VM, 5546)
        vm.last_error_action, vm.last_error_message = "deploy", "VM failed to start (status: stopped)"
        db.session.commit()
    log_in(tab, served)
    tab.goto(served.url + "/vms")
    row = tab.locator("#vms tr[data-service='5546']")
    expect(row.locator(".badge.bad")).to_have_attribute("title", "VM failed to start (status: stopped)")
    dialog = tab.locator("#load-dialog")
    expect(dialog).to_be_hidden()
    row.locator("button:has-text('Log')").click()
    expect(dialog).to_be_visible()
    expect(dialog.locator("h2")).to_have_text("Log of service 5546")
    banner = dialog.locator(".alert-error.banner")
    expect(banner).to_be_visible()
    expect(banner).to_have_text("deploy: VM failed to start (status: stopped)")
    failed = dialog.locator("tr.bad")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("Start VM")
    expect(failed).to_contain_text("error: VM failed to start")
    expect(dialog.locator(".badge.result-error")).to_have_text("error")
    shot(tab, request)
    dialog.locator("button[data-close]").click()
    expect(dialog).to_be_hidden()


def test_arabic_switches_the_page_to_right_to_left(tab, served, request):
    log_in(tab, served)
    with tab.expect_navigation():
        tab.locator("#locale").select_option("ar")  # submits the language form on change
    expect(tab).to_have_url(served.url + "/")
    html = tab.locator("html")
    expect(html).to_have_attribute("dir", "rtl")
    expect(html).to_have_attribute("lang", "ar")
    expect(tab.locator("#locale")).to_have_value("ar")
    assert tab.evaluate("getComputedStyle(document.body).direction") == "rtl"
    # mirrored: the brand sits at the right end of the top bar, the language picker at the left
    width = tab.viewport_size["width"]
    brand, picker = tab.locator(".brand").bounding_box(), tab.locator("#locale").bounding_box()
    assert brand["x"] > width / 2 > picker["x"] + picker["width"], (brand, picker)
    shot(tab, request)


def test_arabic_navigation_uses_the_catalog(tab, served, request, arabic_catalog):
    wanted = arabic_catalog
    log_in(tab, served)
    with tab.expect_navigation():
        tab.locator("#locale").select_option("ar")
    expect(tab.locator("html")).to_have_attribute("lang", "ar")
    shot(tab, request)
    assert wanted, "translations/ar/LC_MESSAGES/messages.po has no Arabic msgstr for 'IP Pools' yet"
    pools_link = tab.locator("nav.nav a[href='/pools']")
    expect(pools_link).to_have_text(wanted)
    expect(pools_link).not_to_have_text("IP Pools")


def test_whmcs_api_secret_is_never_sent_back(tab, served, request):
    secret = "whmcs-Secret-4c1f9e77b2"
    log_in(tab, served)
    tab.click("nav.nav >> text=Settings")
    expect(tab.locator("h1")).to_have_text("General Settings")
    field = tab.locator("input[name=whmcs_api_secret]")
    expect(field).to_have_attribute("type", "password")
    expect(field).to_have_attribute("placeholder", "")  # nothing stored yet
    tab.fill("input[name=whmcs_api_url]", "https://billing.example.com/includes/api.php")
    tab.fill("input[name=whmcs_api_identifier]", "api-id")
    field.fill(secret)
    tab.click("form.panels button[type=submit]")
    expect(tab.locator(".alert-success")).to_have_text("Settings saved.")

    tab.reload()
    expect(tab.locator("h1")).to_have_text("General Settings")
    assert secret not in tab.content()
    expect(field).to_have_value("")
    expect(field).to_have_attribute("placeholder", "(unchanged - enter new to replace)")
    expect(tab.locator("input[name=whmcs_api_identifier]")).to_have_value("api-id")
    with served.app.app_context():
        from core import settings
        assert settings.get("whmcs_api_secret") == secret  # stored (sealed), usable by the product
    shot(tab, request)


def test_dns_zone_dialog_test_button_and_masked_secret(tab, served, request):
    """Add a PowerDNS zone through the dialog (only PowerDNS's fields show), Test it against a real
    PowerDNS, and find the key never sent back: the edit dialog shows the keep-as-is placeholder."""
    from tests.dnspeers import start_powerdns
    server = start_powerdns()
    try:
        server.create_zone("example.com")
        log_in(tab, served)
        tab.goto(served.url + "/dns")
        tab.click("button:has-text('+ Add DNS Zone')")
        dialog = tab.locator("#zone-dialog")
        expect(dialog.locator("input[name=zone_id]")).to_be_visible()  # Cloudflare is the default type
        dialog.locator("select[name=provider]").select_option("powerdns")
        expect(dialog.locator("input[name=zone_id]")).to_be_hidden()
        dialog.locator("input[name=name]").fill("example.com.")
        dialog.locator("[data-provider=powerdns] input[name=server_url]").fill(server.url)
        dialog.locator("[data-provider=powerdns] input[name=api_key]").fill(server.api_key)
        dialog.locator("button[type=submit]").click()
        expect(tab.locator(".alert-success")).to_contain_text("DNS zone added.")
        row = tab.locator("#zones tr[data-zone-id]")
        expect(row).to_have_count(1)
        expect(row.locator("td").first).to_have_text("example.com")
        row.locator("button:has-text('Test')").click()
        expect(tab.locator(".alert-success")).to_contain_text("example.com answers and the zone exists.")
        assert server.api_key not in tab.content()
        tab.locator("#zones button:has-text('Edit')").click()
        key = tab.locator("#zone-dialog [data-provider=powerdns] input[name=api_key]")
        expect(key).to_have_value("")
        expect(key).to_have_attribute("placeholder", "(unchanged - enter new to replace)")
        shot(tab, request)
        tab.locator("#zone-dialog button[type=submit]").click()  # saved with the key left empty
        tab.locator("#zones button:has-text('Test')").click()
        expect(tab.locator(".alert-success")).to_contain_text("answers and the zone exists")
    finally:
        server.stop()


def test_a_vm_row_follows_its_pipeline_without_a_reload(tab, served, request):
    """Found in review: only the status badge changed in place; the VMID, the addresses and the error badge
    stayed as they were until a reload. A changed row now comes back whole."""
    seed(served.app, ("set_dns", "ready"))
    with served.app.app_context():
        vm = db.session.get(VM, 5546)
        vm.vmid, vm.last_error_message = None, "clone failed: storage full"
        db.session.commit()
    log_in(tab, served)
    tab.goto(served.url + "/vms")
    row = tab.locator("#vms tr[data-service='5546']")
    expect(row.locator("[data-field=status]")).to_have_text("SET_DNS")
    expect(row.locator(".badge.bad")).to_have_count(1)
    with served.app.app_context():  # a worker moves the VM on meanwhile
        vm = db.session.get(VM, 5546)
        vm.status, vm.vmid, vm.last_error_message = "migrated", 2100, None
        db.session.commit()
    expect(row.locator("[data-field=status]")).to_have_text("MIGRATED", timeout=15000)
    expect(row).to_contain_text("2100")
    expect(row.locator(".badge.bad")).to_have_count(0)
    expect(row.locator("button:has-text('Log')")).to_be_visible()
    shot(tab, request)


def test_help_page_from_the_navigation(tab, served, request):
    log_in(tab, served)
    tab.click("nav a:has-text('Help')")
    expect(tab).to_have_url(served.url + "/help")
    expect(tab.locator("h1")).to_have_text("Help")
    expect(tab.locator("dd").first).to_have_text(served.url)
    expect(tab.locator("pre")).to_contain_text("flask")
    shot(tab, request)


def test_product_settings_can_be_edited_and_saved_without_losing_switches(tab, served, request):
    """Found in review: every field of the product page was disabled, even for an admin who may change
    products (its macro could not see the page's permission), and Save then switched every checkbox off."""
    seed(served.app)
    log_in(tab, served)
    tab.goto(served.url + "/products/1?check=0")
    expect(tab.locator("h1")).to_have_text("Module Settings of VPS Start")
    assert tab.locator("form.panels :is(input, select):disabled").count() == 0
    expect(tab.locator("input[name=firewall_enable]")).to_be_checked()
    tab.fill("input[name=cpu_cores]", "4")
    tab.click("form.panels button[type=submit]")
    expect(tab.locator(".alert-success")).to_contain_text("saved")
    with served.app.app_context():
        from core.products import ProductSettings
        saved = ProductSettings.from_stored(db.session.get(Product, 1).settings)
        assert saved.cpu_cores == 4
        assert saved.auto_bridge_vlan and saved.firewall_enable and saved.firewall_macfilter
    shot(tab, request)


def test_settings_and_record_pages_fit_a_phone(chromium, served, request):
    """Found in review: at 390 px Cron Settings and DB Record were wider than the screen (a fieldset grows to
    its widest table; the record's inputs kept their default width)."""
    seed(served.app)
    context = chromium.new_context(viewport={"width": 390, "height": 800}, locale="en-US")
    context.set_default_timeout(5000)
    tab = context.new_page()
    try:
        log_in(tab, served)
        for path in ("/settings/cron", "/vms/5546/record", "/settings"):
            tab.goto(served.url + path)
            width = tab.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (path, width)
        shot(tab, request)
    finally:
        context.close()
