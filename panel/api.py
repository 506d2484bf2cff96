"""``/api/v1``: the panel's operations as JSON, over the same core services and the same validation.

Authentication is a bearer token (``flask admin token create --name NAME``); a token may belong to an access
group, which limits it exactly as it limits a panel admin. Errors are ``{"error": ..., "errors": {field: ...}}``.
The OpenAPI 3.1 document at ``/api/v1/openapi.json`` describes every route and answer.
"""
from __future__ import annotations

from functools import wraps
from typing import Any, Callable

from flask import Blueprint, g, jsonify, request
from werkzeug.exceptions import HTTPException

from core import admins, dns, ipam
from core import pools as pool_service
from core import settings as settings_service
from core import vms as vm_service
from core.extensions import db
from core.models import VM, DnsZone, IPPool, Product, Server
from core.products import ProductSettings, ProductSettingsError, validate as validate_product
from core.text import unstorable, unstorable_fields

from .openapi import SPEC

api = Blueprint("api", __name__, url_prefix="/api/v1")


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors or {}


def _text(errors: dict) -> dict[str, str]:
    return {key: str(value) for key, value in errors.items()}


@api.errorhandler(ApiError)
def api_error(exc: ApiError):
    body: dict[str, Any] = {"error": exc.message}
    if exc.errors:
        body["errors"] = _text(exc.errors)
    return jsonify(body), exc.status


@api.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    return jsonify(error=exc.description or exc.name), exc.code


@api.errorhandler(Exception)
def unexpected(exc: Exception):
    import logging
    db.session.rollback()
    logging.getLogger("pkvm.api").exception("API call failed")
    return jsonify(error="internal error; the details are in the server log"), 500


@api.before_request
def authenticate():
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "a bearer token is required (Authorization: Bearer <token>)")
    owner = admins.token_owner(token.strip())
    if owner is None:
        raise ApiError(401, "unknown or revoked token")
    g.api_token = owner
    bad = unstorable_fields(request.args)
    if bad:  # a NUL in a search: no database searches with it (PostgreSQL refuses it outright)
        raise ApiError(400, "text that cannot be stored", bad)


def allowed(section: str, change: bool) -> bool:
    group = g.api_token.group
    if group is None:
        return True
    return section in (group.sections or []) and (group.can_change or not change)


def requires(section: str, change: bool = False) -> Callable:
    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def guarded(*args, **kwargs):
            if not allowed(section, change):
                raise ApiError(403, "this token's access group does not allow this")
            return view(*args, **kwargs)
        return guarded
    return decorate


def body() -> dict:
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the parser goes: no payload of ours is
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", {"body": "must be a JSON object"})
    bad = unstorable(data)
    if bad:
        raise ApiError(400, "text that cannot be stored", bad)
    return data


def _only_known(values: dict, known) -> None:
    unknown = set(values) - set(known)
    if unknown:
        raise ApiError(400, "unknown fields", {k: "unknown field" for k in sorted(unknown)})


JSON_TYPES = {"boolean": (bool,), "integer": (int,), "string": (str,)}


def typed(values: dict, schema: dict) -> dict:
    """Refuse fields of the wrong JSON type (the panel's forms send text and get coerced; the API says
    exactly what each field is)."""
    errors = {}
    for key, value in values.items():
        expected = (schema["properties"].get(key) or {}).get("type")
        if expected is None:
            errors[key] = "unknown field"
        elif not isinstance(value, JSON_TYPES[expected]) or (expected == "integer" and isinstance(value, bool)):
            errors[key] = f"must be a JSON {expected}"
    if errors:
        raise ApiError(400, "invalid field types", errors)
    return values


def int_arg(name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)  # an empty value is not a number either
    except ValueError:
        raise ApiError(400, "invalid query parameter", {name: "must be a whole number"}) from None
    if not minimum <= value <= maximum:
        raise ApiError(400, "invalid query parameter", {name: f"must be between {minimum} and {maximum}"})
    return value


# ----------------------------------------------------------------------------- representations

def server_json(server: Server) -> dict:
    return {"id": server.id, "name": server.name, "hostname": server.hostname, "ip": server.ip, "port": server.port,
            "token_id": server.token_id, "verify_tls": server.verify_tls, "custom_ca": bool(server.ca_pem)}


def pool_json(row: pool_service.PoolRow) -> dict:
    p = row.pool
    return {"id": p.id, "server_id": p.server_id, "family": p.family, "bridge": p.bridge, "vlan": p.vlan,
            "gateway": p.gateway, "mask": p.mask, "dns1": p.dns1, "dns2": p.dns2, "first": p.first, "last": p.last,
            "size": row.size, "used": row.used, "rdns_zone": row.rdns_zone}


def vm_json(row: vm_service.VMRow) -> dict:
    vm = row.vm
    return {"service_id": vm.service_id, "vmid": vm.vmid, "name": vm.name, "status": vm.status, "node": vm.node,
            "service_status": row.service.status, "client": {"id": row.client.id, "name": row.client.display_name},
            "product": {"id": row.product.id, "name": row.product.name},
            "server": {"id": row.server.id, "name": row.server.name},
            "addresses": [{"address": a, "rdns": r} for a, r in row.addresses],
            "last_error": {"action": vm.last_error_action, "message": vm.last_error_message}
            if vm.last_error_message else None}


def single_vm(service_id: int) -> vm_service.VMRow:
    vm = db.session.get(VM, service_id)
    if vm is None:
        raise ApiError(404, f"no VM for service {service_id}")
    service = vm.service
    row = vm_service.VMRow(vm, service, service.client, service.product, vm.server)
    for address in ipam.assigned(service_id):
        row.addresses.append((address.address, (vm.rev_dns or {}).get(address.address, "")))
    return row


# ----------------------------------------------------------------------------- routes

@api.get("/openapi.json")
def openapi():
    return jsonify(SPEC)


@api.get("/servers")
@requires("dashboard")
def servers():
    rows = db.session.scalars(db.select(Server).order_by(Server.id))
    return jsonify(items=[server_json(s) for s in rows])


@api.get("/pools")
@requires("ip_pools")
def pools_list():
    return jsonify(items=[pool_json(r) for r in pool_service.rows()])


def _pool_row(pool_id: int) -> pool_service.PoolRow:
    for row in pool_service.rows():
        if row.pool.id == pool_id:
            return row
    raise ApiError(404, f"no IP pool {pool_id}")


@api.post("/pools")
@requires("ip_pools", change=True)
def pools_create():
    values = typed(body(), SPEC["components"]["schemas"]["PoolInput"])
    try:
        pool = pool_service.create(values)
    except pool_service.PoolError as exc:
        raise ApiError(400, "invalid IP pool", exc.errors) from None
    return jsonify(pool_json(_pool_row(pool.id))), 201


@api.get("/pools/<int:pool_id>")
@requires("ip_pools")
def pools_get(pool_id: int):
    return jsonify(pool_json(_pool_row(pool_id)))


@api.put("/pools/<int:pool_id>")
@requires("ip_pools", change=True)
def pools_update(pool_id: int):
    pool = db.session.get(IPPool, pool_id)
    if pool is None:
        raise ApiError(404, f"no IP pool {pool_id}")
    values = typed(body(), SPEC["components"]["schemas"]["PoolInput"])
    try:
        pool_service.update(pool, values)
    except pool_service.PoolError as exc:
        raise ApiError(400, "invalid IP pool", exc.errors) from None
    return jsonify(pool_json(_pool_row(pool_id)))


@api.delete("/pools/<int:pool_id>")
@requires("ip_pools", change=True)
def pools_delete(pool_id: int):
    pool = db.session.get(IPPool, pool_id)
    if pool is None:
        raise ApiError(404, f"no IP pool {pool_id}")
    try:
        pool_service.delete(pool)
    except pool_service.PoolError as exc:
        raise ApiError(409, "the pool still hands out addresses", exc.errors) from None
    return "", 204


@api.get("/products")
@requires("products")
def products_list():
    rows = db.session.scalars(db.select(Product).order_by(Product.id))
    return jsonify(items=[{"id": p.id, "name": p.name, "settings": ProductSettings.from_stored(p.settings).to_dict()}
                          for p in rows])


@api.get("/products/<int:product_id>")
@requires("products")
def products_get(product_id: int):
    product = db.session.get(Product, product_id)
    if product is None:
        raise ApiError(404, f"no product {product_id}")
    return jsonify(id=product.id, name=product.name, settings=ProductSettings.from_stored(product.settings).to_dict())


@api.put("/products/<int:product_id>")
@requires("products", change=True)
def products_update(product_id: int):
    product = db.session.get(Product, product_id)
    if product is None:
        raise ApiError(404, f"no product {product_id}")
    values = typed(body(), SPEC["components"]["schemas"]["ProductSettingsInput"])
    try:
        clean = validate_product(values)
    except ProductSettingsError as exc:
        raise ApiError(400, "invalid module settings", exc.errors) from None
    product.settings = {**(product.settings or {}), **clean}
    db.session.commit()
    return products_get(product_id)


VM_QUERY = ("service_status", "vm_status", "q", "sort", "dir", "page", "per_page")


@api.get("/vms")
@requires("vms")
def vms_list():
    _only_known(request.args, VM_QUERY)
    for name, limit in (("q", 200), ("vm_status", 64)):
        if len(request.args.get(name, "")) > limit:
            raise ApiError(400, "invalid query parameter", {name: f"must be at most {limit} characters"})
    service_status = request.args.get("service_status", "")
    if service_status and service_status not in vm_service.SERVICE_STATUSES:
        raise ApiError(400, "invalid query parameter",
                       {"service_status": "must be one of " + ", ".join(vm_service.SERVICE_STATUSES)})
    sort = request.args.get("sort", "id")
    if sort not in vm_service.SORTS:
        raise ApiError(400, "invalid query parameter", {"sort": "must be one of " + ", ".join(vm_service.SORTS)})
    direction = request.args.get("dir", "desc")
    if direction not in ("asc", "desc"):
        raise ApiError(400, "invalid query parameter", {"dir": "must be asc or desc"})
    page = vm_service.list_vms(service_status=service_status, vm_status=request.args.get("vm_status", ""),
                               search=request.args.get("q", ""), sort=sort, descending=direction == "desc",
                               page=int_arg("page", 1, 1, 1_000_000), per_page=int_arg("per_page", 25, 1, 200))
    return jsonify(items=[vm_json(r) for r in page.rows], total=page.total, page=page.page, per_page=page.per_page,
                   pages=page.pages)


@api.get("/vms/<int:service_id>")
@requires("vms")
def vms_get(service_id: int):
    return jsonify(vm_json(single_vm(service_id)))


@api.get("/vms/<int:service_id>/log")
@requires("vms")
def vms_log(service_id: int):
    row = single_vm(service_id)
    return jsonify(last_error=vm_json(row)["last_error"], runs=[
        {"id": r.id, "action": r.action, "from": r.from_status, "to": r.to_status, "result": r.result,
         "error": r.error, "started_at": r.started_at.isoformat() + "Z",
         "finished_at": r.finished_at.isoformat() + "Z" if r.finished_at else None, "steps": r.steps or []}
        for r in vm_service.runs(service_id)])


@api.post("/vms/<int:service_id>/reset")
@requires("vms", change=True)
def vms_reset(service_id: int):
    row = single_vm(service_id)
    status = body().get("status")
    try:
        vm_service.reset(row.vm, status if isinstance(status, str) else "")
    except vm_service.VMActionError as exc:
        raise ApiError(400, "invalid status", exc.errors) from None
    return jsonify(vm_json(single_vm(service_id)))


@api.post("/vms/<int:service_id>/redeploy")
@requires("vms", change=True)
def vms_redeploy(service_id: int):
    row = single_vm(service_id)
    try:
        vm_service.redeploy(row.vm)
    except vm_service.VMActionError as exc:
        raise ApiError(409, "cannot redeploy", exc.errors) from None
    return jsonify(vm_json(single_vm(service_id))), 202


@api.delete("/vms/<int:service_id>")
@requires("vms", change=True)
def vms_delete(service_id: int):
    row = single_vm(service_id)
    try:
        vm_service.delete_record(row.vm)
    except vm_service.VMActionError as exc:
        raise ApiError(409, "cannot delete this record", exc.errors) from None
    return "", 204


@api.get("/dns-zones")
@requires("dns_zones")
def zones_list():
    return jsonify(items=[dns.public(z) for z in dns.zones()])


def _zone(zone_id: int) -> DnsZone:
    zone = db.session.get(DnsZone, zone_id)
    if zone is None:
        raise ApiError(404, f"no DNS zone {zone_id}")
    return zone


@api.post("/dns-zones")
@requires("dns_zones", change=True)
def zones_create():
    values = typed(body(), SPEC["components"]["schemas"]["ZoneInput"])
    try:
        zone = dns.create_zone(values)
    except dns.ZoneError as exc:
        raise ApiError(400, "invalid DNS zone", exc.errors) from None
    return jsonify(dns.public(zone)), 201


@api.get("/dns-zones/<int:zone_id>")
@requires("dns_zones")
def zones_get(zone_id: int):
    return jsonify(dns.public(_zone(zone_id)))


@api.put("/dns-zones/<int:zone_id>")
@requires("dns_zones", change=True)
def zones_update(zone_id: int):
    zone = _zone(zone_id)
    values = typed(body(), SPEC["components"]["schemas"]["ZoneInput"])
    try:
        dns.update_zone(zone, values)
    except dns.ZoneError as exc:
        raise ApiError(400, "invalid DNS zone", exc.errors) from None
    return jsonify(dns.public(zone))


@api.delete("/dns-zones/<int:zone_id>")
@requires("dns_zones", change=True)
def zones_delete(zone_id: int):
    dns.delete_zone(_zone(zone_id))
    return "", 204


@api.post("/dns-zones/<int:zone_id>/test")
@requires("dns_zones")
def zones_test(zone_id: int):
    problem = dns.test_zone(_zone(zone_id))
    return jsonify(ok=problem is None, error=problem or "")


@api.get("/settings")
@requires("settings")
def settings_get():
    return jsonify(settings_service.public())


@api.put("/settings")
@requires("settings", change=True)
def settings_update():
    values = typed(body(), SPEC["components"]["schemas"]["SettingsInput"])
    try:
        settings_service.update(values)
    except settings_service.SettingError as exc:
        raise ApiError(400, "invalid settings", exc.errors) from None
    return jsonify(settings_service.public())


def json_for_unrouted(app) -> None:
    """Paths under /api/ or /bridge/ that match no route (a bad id, a wrong method) answer JSON too; the
    panel's own pages answer with its error page, in the admin's language."""
    from flask import render_template
    from flask_babel import gettext as _
    from werkzeug.exceptions import MethodNotAllowed, NotFound

    def handler(exc: HTTPException):
        if request.path.startswith(("/api/", "/bridge/")):
            return jsonify(error=exc.description or exc.name), exc.code
        message = {404: _("There is no such page here."),
                   405: _("This page does not take that kind of request.")}[exc.code]
        return render_template("error.html", code=exc.code, message=message), exc.code
    for exc_class in (NotFound, MethodNotAllowed):
        app.register_error_handler(exc_class, handler)
