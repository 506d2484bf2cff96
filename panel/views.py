"""The panel's pages: thin views that parse, call a core service and render."""
from __future__ import annotations

from datetime import timedelta

from flask import abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError
from sqlalchemy import func, select

from core import dns
from core import pools as pool_service
from core import settings as settings_service
from core import vms as vm_service
from core.extensions import db
from core.health import health
from core.models import VM, CronTask, DnsZone, IPPool, Product, Server, id_from_text, utcnow
from core.products import ProductSettings, ProductSettingsError
from core.products import validate as validate_product
from core.proxmox.client import ProxmoxError, Pve, endpoint_for
from core.vault import SecretUnreadable, unseal

from . import bp, section, wants_json

class ActionForm(FlaskForm):
    """A form with nothing but its CSRF token, for buttons that change state."""


# ----------------------------------------------------------------------------- dashboard

@bp.get("/")
@section("dashboard")
def dashboard():
    counts = vm_service.pipeline_counts()
    pipelines = {name: sum(counts.get(s, 0) for s in statuses)
                 for name, statuses in vm_service.PIPELINE_STATUSES.items()}
    return render_template(
        "dashboard.html", pools=db.session.scalar(select(func.count()).select_from(IPPool)) or 0,
        dns_zones=db.session.scalar(select(func.count()).select_from(DnsZone)) or 0,
        services=vm_service.active_services(), pipelines=pipelines,
        ready=counts.get("ready", 0), failing=counts.get("error_terminate", 0),
        errors_24h=vm_service.errors_since(utcnow() - timedelta(hours=24)), health=health())


# ----------------------------------------------------------------------------- IP pools

def _pool_form_values() -> dict:
    return {key: request.form.get(key, "") for key in pool_service.FIELDS}


def _render_pools(status: int = 200, dialog: dict | None = None):
    servers = list(db.session.scalars(select(Server).order_by(Server.name)))
    return render_template("pools.html", rows=pool_service.rows(), servers=servers, form=ActionForm(),
                           dialog=dialog), status


@bp.get("/pools")
@section("ip_pools")
def pools():
    return _render_pools()[0]


@bp.post("/pools")
@section("ip_pools", change=True)
def pool_create():
    form = ActionForm()
    values = _pool_form_values()
    if not form.validate_on_submit():
        return _render_pools(400, {"values": values, "errors": {"form": _("The form expired; try again.")}})
    try:
        pool_service.create(values)
    except pool_service.PoolError as exc:
        return _render_pools(400, {"values": values, "errors": {k: str(v) for k, v in exc.errors.items()}})
    flash(_("IP pool added."), "success")
    return redirect(url_for("panel.pools"))


@bp.post("/pools/<int:pool_id>")
@section("ip_pools", change=True)
def pool_update(pool_id: int):
    pool = db.session.get(IPPool, pool_id) or abort(404)
    form = ActionForm()
    values = _pool_form_values()
    if not form.validate_on_submit():
        abort(400)
    try:
        pool_service.update(pool, values)
    except pool_service.PoolError as exc:
        return _render_pools(400, {"pool_id": pool_id, "values": values,
                                   "errors": {k: str(v) for k, v in exc.errors.items()}})
    flash(_("IP pool saved. Addresses already handed out are unchanged."), "success")
    return redirect(url_for("panel.pools"))


@bp.post("/pools/<int:pool_id>/delete")
@section("ip_pools", change=True)
def pool_delete(pool_id: int):
    pool = db.session.get(IPPool, pool_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        pool_service.delete(pool)
    except pool_service.PoolError as exc:
        flash(str(exc.errors["pool"]), "error")
    else:
        flash(_("IP pool deleted."), "success")
    return redirect(url_for("panel.pools"))


@bp.get("/pools/rdns-hint")
@section("ip_pools")
def pool_rdns_hint():
    """The rDNS zone for a gateway and mask, for the add/edit dialog as the admin types."""
    from core.ipam import rdns_zone
    try:
        family = int(request.args.get("family", "4"))
        zone = rdns_zone(family, request.args.get("gateway", ""), int(request.args.get("mask", "")))
    except ValueError:
        return jsonify(zone=None, hint="")
    return jsonify(zone=zone, hint=zone or _("classless delegation required"))


# ----------------------------------------------------------------------------- VM management

VM_PAGE_SIZES = (10, 25, 50, 100)  # "Show N entries"; 10 first, as the original's table


def _vm_query() -> dict:
    return {"service_status": request.args.get("service_status", ""), "vm_status": request.args.get("vm_status", ""),
            "search": request.args.get("q", ""), "sort": request.args.get("sort", "id"),
            "descending": request.args.get("dir", "desc") != "asc",
            "page": request.args.get("page", 1, type=int) or 1,
            "per_page": request.args.get("per_page", VM_PAGE_SIZES[0], type=int) or VM_PAGE_SIZES[0]}


@bp.get("/vms")
@section("vms")
def vms():
    query = _vm_query()
    page = vm_service.list_vms(**query)
    statuses = set(db.session.scalars(select(VM.status).distinct()))
    if query["vm_status"]:  # a filter (remembered by the browser) on a status no VM has now stays visible
        statuses.add(query["vm_status"])
    statuses = sorted(statuses)
    return render_template("vms.html", page=page, query=query, statuses=statuses, page_sizes=VM_PAGE_SIZES,
                           whmcs_admin=settings_service.get("whmcs_admin_url").rstrip("/"),
                           service_statuses=vm_service.SERVICE_STATUSES, reset_statuses=vm_service.RESET_STATUSES,
                           deletable=vm_service.DELETABLE, form=ActionForm(), service_labels=vm_service.SERVICE_LABELS)


@bp.get("/vms/status")
@section("vms")
def vm_statuses():
    """The statuses of the VMs on screen, for rows that update without a reload."""
    ids = [n for n in map(id_from_text, request.args.get("ids", "").split(",")) if n is not None][:200]
    rows = db.session.execute(select(VM.service_id, VM.status, VM.vmid, VM.last_error_message)
                              .where(VM.service_id.in_(ids))).all() if ids else []
    return jsonify({str(sid): {"status": status, "vmid": vmid, "error": bool(error)}
                    for sid, status, vmid, error in rows})


@bp.get("/vms/<int:service_id>/log")
@section("vms")
def vm_log(service_id: int):
    vm = db.session.get(VM, service_id) or abort(404)
    return render_template("vm_log.html", vm=vm, runs=vm_service.runs(service_id))


def _vm_action(service_id: int, act, done_message) -> object:
    """Run one admin action on a VM from a button: CSRF-checked, its refusal flashed, back to the list."""
    vm = db.session.get(VM, service_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        act(vm)
    except vm_service.VMActionError as exc:
        flash(str(exc.errors["status"]), "error")
    else:
        flash(done_message(vm), "success")
    return redirect(request.referrer or url_for("panel.vms"))


@bp.post("/vms/<int:service_id>/reset")
@section("vms", change=True)
def vm_reset(service_id: int):
    return _vm_action(service_id, lambda vm: vm_service.reset(vm, request.form.get("status", "")),
                      lambda vm: _("Service %(id)s set to %(status)s.", id=service_id, status=vm.status))


@bp.post("/vms/<int:service_id>/redeploy")
@section("vms", change=True)
def vm_redeploy(service_id: int):
    return _vm_action(service_id, vm_service.redeploy,
                      lambda vm: _("Redeploy of service %(id)s queued.", id=service_id))


@bp.post("/vms/<int:service_id>/delete")
@section("vms", change=True)
def vm_delete(service_id: int):
    return _vm_action(service_id, vm_service.delete_record,
                      lambda vm: _("Record of service %(id)s deleted. Proxmox was not touched.", id=service_id))


@bp.route("/vms/<int:service_id>/record", methods=["GET", "POST"])
@section("vms")
def vm_record(service_id: int):
    vm = db.session.get(VM, service_id) or abort(404)
    form = ActionForm()
    errors: dict = {}
    if request.method == "POST":
        if not current_user_can("vms"):
            abort(403)
        if not form.validate_on_submit():
            abort(400)
        values = {k: v for k, v in request.form.items() if k in vm_service.EDITABLE}
        try:
            vm_service.update_record(vm, values)
        except vm_service.VMActionError as exc:
            errors = {k: str(v) for k, v in exc.errors.items()}
        else:
            flash(_("Record of service %(id)s saved.", id=service_id), "success")
            return redirect(url_for("panel.vms"))
    return render_template("vm_record.html", vm=vm, record=vm_service.record(vm), form=form, errors=errors,
                           editable=vm_service.EDITABLE), 400 if errors else 200


def current_user_can(name: str) -> bool:
    from flask_login import current_user
    return current_user.can_change(name)


# ----------------------------------------------------------------------------- products

def product_problems(product: Product) -> tuple[list[str], set[str]]:
    """Live checks of a product against its cluster: (messages, fields to highlight)."""
    settings = ProductSettings.from_stored(product.settings)
    server = db.session.scalar(select(Server).join(VM, VM.server_id == Server.id)
                               .where(VM.service.has(product_id=product.id)).limit(1)) \
        or db.session.scalar(select(Server).order_by(Server.id).limit(1))
    if server is None:
        return [_("No server is known yet: send TestConnection or CreateAccount from WHMCS first.")], set()
    try:
        pve = Pve(endpoint_for(server, unseal(server.token_secret), current_app.instance_path),
                  timeout=settings_service.get("api_timeout"))
        nodes = {n["node"]: n for n in pve.get("nodes") or []}
        resources = pve.get("cluster", "resources") or []
    except ProxmoxError as exc:
        return [_("Server %(name)s does not answer: %(error)s", name=server.name, error=exc.message)], set()
    except SecretUnreadable:
        # The reason is technical English, like the Proxmox errors shown through the same message.
        return [_("Server %(name)s does not answer: %(error)s", name=server.name,
                  error="its stored token secret cannot be decrypted (was the instance key replaced?); the next "
                        "call from WHMCS stores it again")], set()
    messages, fields = [], set()
    if settings.template_node not in nodes:
        messages.append(_("Node %(node)s is not in the cluster; choose one of: %(nodes)s.",
                          node=settings.template_node or "-", nodes=", ".join(sorted(nodes))))
        fields.add("template_node")
    templates = {int(r["vmid"]): r for r in resources if r.get("type") == "qemu" and r.get("template")}
    if settings.template_vmid not in templates:
        messages.append(_("Template %(vmid)s does not exist; templates on the cluster: %(list)s.",
                          vmid=settings.template_vmid,
                          list=", ".join(f"{k} ({v.get('name')})" for k, v in sorted(templates.items())) or "-"))
        fields.add("template_vmid")
    elif settings.template_node in nodes and templates[settings.template_vmid].get("node") != settings.template_node:
        # The clone is made on the template's node: the deploy would ask the wrong one for it.
        messages.append(_("Template %(vmid)s is on node %(actual)s, not on %(node)s.", vmid=settings.template_vmid,
                          actual=templates[settings.template_vmid].get("node"), node=settings.template_node))
        fields.add("template_node")
    storages = {r.get("storage") for r in resources if r.get("type") == "storage"}
    on_node = {(r.get("storage"), r.get("node")) for r in resources if r.get("type") == "storage"}
    for key in ("system_disk_storage", "additional_disk_storage"):
        value = getattr(settings, key)
        if value and value not in storages:
            messages.append(_("Storage %(storage)s does not exist; storages: %(list)s.", storage=value,
                              list=", ".join(sorted(s for s in storages if s))))
            fields.add(key)
    if settings.target_node and settings.target_node not in nodes:
        messages.append(_("Target node %(node)s is not in the cluster.", node=settings.target_node))
        fields.add("target_node")
    elif settings.target_node:
        for key in ("system_disk_storage", "additional_disk_storage"):
            value = getattr(settings, key)
            if value and value in storages and (value, settings.target_node) not in on_node:
                messages.append(_("Storage %(storage)s is not on the target node %(node)s.", storage=value,
                                  node=settings.target_node))
                fields.add(key)
    return messages, fields


@bp.get("/products")
@section("products")
def products():
    rows = list(db.session.scalars(select(Product).order_by(Product.id)))
    return render_template("products.html", products=rows)


@bp.route("/products/<int:product_id>", methods=["GET", "POST"])
@section("products")
def product_edit(product_id: int):
    product = db.session.get(Product, product_id) or abort(404)
    form = ActionForm()
    errors: dict = {}
    if request.method == "POST":
        if not current_user_can("products"):
            abort(403)
        if not form.validate_on_submit():
            abort(400)
        defaults = ProductSettings()
        values = {}
        for key, value in defaults.to_dict().items():
            if isinstance(value, bool):
                values[key] = key in request.form
            elif key in request.form:
                values[key] = request.form[key]
        try:
            clean = validate_product(values)
        except ProductSettingsError as exc:
            errors = exc.errors
        else:
            product.settings = {**(product.settings or {}), **clean}
            db.session.commit()
            flash(_("Module settings of %(name)s saved.", name=product.name), "success")
            return redirect(url_for("panel.product_edit", product_id=product_id))
    problems, fields = product_problems(product) if request.args.get("check", "1") != "0" else ([], set())
    return render_template("product.html", product=product, settings=ProductSettings.from_stored(product.settings),
                           form=form, errors=errors, problems=problems, bad_fields=fields), 400 if errors else 200


# ----------------------------------------------------------------------------- settings

GENERAL = ("api_timeout", "api_heavy_timeout", "migration_enabled", "migration_timeout", "delete_data_on_uninstall",
           "whmcs_api_url", "whmcs_api_identifier", "whmcs_api_secret", "whmcs_admin_url", "dns_json_allowlist")
BOOLEANS = ("migration_enabled", "delete_data_on_uninstall")


@bp.route("/settings", methods=["GET", "POST"])
@section("settings")
def settings_general():
    form = ActionForm()
    errors: dict = {}
    if request.method == "POST":
        if not current_user_can("settings"):
            abort(403)
        if not form.validate_on_submit():
            abort(400)
        values = {key: (key in request.form) if key in BOOLEANS else request.form.get(key, "") for key in GENERAL}
        try:
            settings_service.update(values)
        except settings_service.SettingError as exc:
            errors = exc.errors
        else:
            flash(_("Settings saved."), "success")
            return redirect(url_for("panel.settings_general"))
    return render_template("settings.html", values=settings_service.public(), form=form, errors=errors,
                           posted=request.form if errors else {}), 400 if errors else 200


@bp.route("/settings/cron", methods=["GET", "POST"])
@section("settings")
def settings_cron():
    from core.settings import TASK_DEFAULTS
    form = ActionForm()
    errors: dict = {}
    if request.method == "POST":
        if not current_user_can("settings"):
            abort(403)
        if not form.validate_on_submit():
            abort(400)
        values = {"cron_mode": request.form.get("cron_mode", ""),
                  "cron_lock_timeout": request.form.get("cron_lock_timeout", "")}
        values.update({f"interval_{name}": request.form.get(f"interval_{name}", "") for name in TASK_DEFAULTS})
        try:
            settings_service.update(values)
        except settings_service.SettingError as exc:
            errors = exc.errors
        else:
            flash(_("Cron settings saved."), "success")
            return redirect(url_for("panel.settings_cron"))
    return render_template("settings_cron.html", values=settings_service.public(), tasks=_task_rows(), form=form,
                           task_info=settings_service.TASK_INFO, crontab_line=_crontab_line(),
                           errors=errors, posted=request.form if errors else {}), 400 if errors else 200


@bp.get("/help")
def help_page():
    """Help (seed 002's last navigation item): this installation's version, where its bridge is, how WHMCS
    and the cron connect to it, and where the documentation and support are. Any logged-in admin."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        installed = version("proxmox-kvm-bridge")
    except PackageNotFoundError:
        installed = "-"
    return render_template("help.html", version=installed, bridge_url=request.host_url.rstrip("/"),
                           crontab_line=_crontab_line(), active_section="help")


def _crontab_line() -> str | None:
    """The crontab line for this installation: its folder, its flask command, its instance folder and, when
    it is not the default SQLite file, its database (the password shown as ***, never sent to a browser).
    None with Redis, whose tick is ``rq cron`` (one tick, not two)."""
    import shlex
    import sys
    from pathlib import Path

    from sqlalchemy.engine import make_url
    if current_app.config.get("REDIS_URL"):
        return None
    root = Path(current_app.root_path)
    flask = Path(sys.executable).with_name("flask")
    database = make_url(current_app.config["SQLALCHEMY_DATABASE_URI"])
    default = make_url("sqlite:///" + str(Path(current_app.instance_path) / "pkvm.sqlite3"))
    env = f"PKVM_INSTANCE_PATH={shlex.quote(current_app.instance_path)}"
    if database != default:
        # The password of the user part, and of any query parameter that may hold one (?password=, passwd,
        # sslpassword, a key), is shown as ***.
        hidden = {key: ("***" if any(word in key.lower() for word in ("pass", "secret", "key", "token"))
                        else value) for key, value in database.query.items()}
        shown = database.set(query=hidden).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
        env += f" DATABASE_URL={shlex.quote(shown)}"
    return f"* * * * * cd {shlex.quote(str(root))} && {env} {shlex.quote(str(flask))} cron > /dev/null 2>&1"


def _task_rows() -> list[dict]:
    from core.settings import TASK_DEFAULTS
    rows = []
    for name, default in TASK_DEFAULTS.items():
        row = db.session.get(CronTask, name)
        rows.append({"name": name, "default": default, "interval": settings_service.get(f"interval_{name}"),
                     "last_run": row.last_run_at if row else None, "status": row.last_status if row else "never",
                     "errors": row.last_errors if row else 0})
    return rows


@bp.app_errorhandler(CSRFError)
def form_expired(_exc):
    """A form whose security token is missing or too old (a page left open, a cross-site post): refused, as
    Flask-WTF refuses it, but with what to do rather than a bare 400."""
    if wants_json():
        return jsonify(error="form expired"), 400
    return render_template("error.html", code=400, message=_(
        "The form had expired (its security token is no longer valid): go back, reload the page and submit "
        "it again.")), 400


@bp.errorhandler(413)
def too_large(_exc):
    """A form over the size limit (the bridge and the API answer this in their own JSON)."""
    return render_template("error.html", code=413, message=_("What was sent is too large.")), 413


@bp.app_errorhandler(403)
def forbidden(_exc):
    if wants_json():
        return jsonify(error="forbidden"), 403
    return render_template("error.html", code=403, message=_("Your access group does not allow this.")), 403


# ----------------------------------------------------------------------------- DNS zones

def _zone_form_values() -> dict:
    keys = {"name", "provider", *[k for fields in dns.FIELDS.values() for k in fields], *dns.SECRET_FIELD.values()}
    return {key: request.form.get(key, "") for key in keys}


def _render_zones(status: int = 200, dialog: dict | None = None):
    return render_template("dns.html", zones=[dns.public(z) for z in dns.zones()], providers=dns.PROVIDERS,
                           fields=dns.FIELDS, secret_field=dns.SECRET_FIELD, form=ActionForm(),
                           dialog=dialog), status


@bp.get("/dns")
@section("dns_zones")
def dns_zones():
    return _render_zones()[0]


@bp.post("/dns")
@section("dns_zones", change=True)
def dns_zone_create():
    values = _zone_form_values()
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        dns.create_zone(values)
    except dns.ZoneError as exc:
        values.update({k: "" for k in dns.SECRET_FIELD.values()})  # a typed secret is never sent back
        return _render_zones(400, {"values": values, "errors": {k: str(v) for k, v in exc.errors.items()}})
    flash(_("DNS zone added."), "success")
    return redirect(url_for("panel.dns_zones"))


@bp.post("/dns/<int:zone_id>")
@section("dns_zones", change=True)
def dns_zone_update(zone_id: int):
    zone = db.session.get(DnsZone, zone_id) or abort(404)
    values = _zone_form_values()
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        dns.update_zone(zone, values)
    except dns.ZoneError as exc:
        values.update({k: "" for k in dns.SECRET_FIELD.values()})
        return _render_zones(400, {"zone_id": zone_id, "values": values,
                                   "errors": {k: str(v) for k, v in exc.errors.items()}})
    flash(_("DNS zone saved."), "success")
    return redirect(url_for("panel.dns_zones"))


@bp.post("/dns/<int:zone_id>/delete")
@section("dns_zones", change=True)
def dns_zone_delete(zone_id: int):
    zone = db.session.get(DnsZone, zone_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    dns.delete_zone(zone)
    flash(_("DNS zone deleted."), "success")
    return redirect(url_for("panel.dns_zones"))


@bp.post("/dns/<int:zone_id>/test")
@section("dns_zones")
def dns_zone_test(zone_id: int):
    """Reachability, credentials and the zone's existence, checked live; the provider's own error if not."""
    zone = db.session.get(DnsZone, zone_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    problem = dns.test_zone(zone)
    if wants_json():
        return jsonify(ok=problem is None, message=problem or _("%(zone)s answers and the zone exists.",
                                                                 zone=zone.name))
    if problem:
        flash(_("%(zone)s: %(error)s", zone=zone.name, error=problem), "error")
    else:
        flash(_("%(zone)s answers and the zone exists.", zone=zone.name), "success")
    return redirect(url_for("panel.dns_zones"))
