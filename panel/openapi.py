"""The OpenAPI 3.1 description of ``/api/v1`` (JSON Schema 2020-12), kept beside the routes it describes and
checked against them by the suite (schemathesis)."""
from __future__ import annotations

from dataclasses import fields

from core.dns import FIELDS as ZONE_FIELDS
from core.dns import PROVIDERS, SECRET_FIELD
from core.products import ProductSettings
from core.settings import SPECS, WEB_ADDRESS_PATTERN
from core.vms import RESET_STATUSES, SERVICE_STATUSES, SORTS


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "Error")
ERRORS = {"400": ERROR, "401": ERROR, "403": ERROR}
NOT_FOUND = {"404": ERROR}
ID = {"name": "pool_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0, "maximum": 2147483647}}
SERVICE = {"name": "service_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0, "maximum": 2147483647}}
PRODUCT = {"name": "product_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0, "maximum": 2147483647}}

_PY = {"int": {"type": "integer"}, "str": {"type": "string"}, "bool": {"type": "boolean"}}
PRODUCT_SETTINGS = {"type": "object", "properties": {f.name: _PY[f.type] for f in fields(ProductSettings)},
                    "required": [f.name for f in fields(ProductSettings)]}
PRODUCT_SETTINGS_INPUT = {"type": "object", "properties": {f.name: _PY[f.type] for f in fields(ProductSettings)},
                          "additionalProperties": False}


def _setting_schema(name: str) -> dict:
    spec = SPECS[name]
    if spec.secret:
        return {"type": "object", "properties": {"set": {"type": "boolean"}}, "required": ["set"]}
    return {bool: {"type": "boolean"}, int: {"type": "integer"}, str: {"type": "string"}}[spec.kind]


SETTINGS = {"type": "object", "properties": {name: _setting_schema(name) for name in SPECS},
            "required": list(SPECS)}
SETTINGS_INPUT = {"type": "object", "properties": {
    name: {"type": "string", "pattern": WEB_ADDRESS_PATTERN} if spec.url else
    {bool: {"type": "boolean"}, int: {"type": "integer"}, str: {"type": "string"}}[spec.kind]
    for name, spec in SPECS.items()}, "additionalProperties": False}
POOL_INPUT = {"type": "object", "properties": {
    "server_id": {"type": "integer"}, "family": {"type": "integer", "enum": [4, 6]}, "bridge": {"type": "string"},
    "vlan": {"type": "integer"}, "gateway": {"type": "string"}, "mask": {"type": "integer"},
    "dns1": {"type": "string"}, "dns2": {"type": "string"}, "first": {"type": "string"}, "last": {"type": "string"}},
    "additionalProperties": False}
POOL_CREATE = dict(POOL_INPUT, required=["server_id", "family", "bridge", "gateway", "mask", "first", "last"])
POOL = {"type": "object", "properties": {
    "id": {"type": "integer"}, "server_id": {"type": "integer"}, "family": {"type": "integer", "enum": [4, 6]},
    "bridge": {"type": "string"}, "vlan": {"type": "integer"}, "gateway": {"type": "string"},
    "mask": {"type": "integer"}, "dns1": {"type": "string"}, "dns2": {"type": "string"}, "first": {"type": "string"},
    "last": {"type": "string"}, "size": {"type": "integer", "minimum": 0}, "used": {"type": "integer", "minimum": 0},
    "rdns_zone": {"type": ["string", "null"]}},
    "required": ["id", "server_id", "family", "bridge", "vlan", "gateway", "mask", "first", "last", "size", "used",
                 "rdns_zone"]}
NAMED = {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
         "required": ["id", "name"]}
VM = {"type": "object", "properties": {
    "service_id": {"type": "integer"}, "vmid": {"type": ["integer", "null"]}, "name": {"type": "string"},
    "status": {"type": "string"}, "node": {"type": "string"}, "service_status": {"type": "string"},
    "client": NAMED, "product": NAMED, "server": NAMED,
    "addresses": {"type": "array", "items": {"type": "object", "properties": {
        "address": {"type": "string"}, "rdns": {"type": "string"}}, "required": ["address", "rdns"]}},
    "last_error": {"type": ["object", "null"], "properties": {"action": {"type": ["string", "null"]},
                                                              "message": {"type": ["string", "null"]}}}},
    "required": ["service_id", "vmid", "name", "status", "node", "service_status", "client", "product", "server",
                 "addresses", "last_error"]}
ZONE_ID = {"name": "zone_id", "in": "path", "required": True,
           "schema": {"type": "integer", "minimum": 0, "maximum": 2147483647}}
_ZONE_KEYS = sorted({k for keys in ZONE_FIELDS.values() for k in keys})
ZONE = {"type": "object", "properties": {
    "id": {"type": "integer"}, "name": {"type": "string"}, "provider": {"type": "string", "enum": list(PROVIDERS)},
    **{k: {"type": "string"} for k in _ZONE_KEYS},
    **{k: {"type": "object", "properties": {"set": {"type": "boolean"}}, "required": ["set"]}
       for k in sorted(set(SECRET_FIELD.values()))}},
    "required": ["id", "name", "provider"]}
ZONE_INPUT = {"type": "object", "properties": {
    "name": {"type": "string"}, "provider": {"type": "string", "enum": list(PROVIDERS)},
    **{k: {"type": "string"} for k in _ZONE_KEYS + sorted(set(SECRET_FIELD.values()))}},
    "additionalProperties": False}
RUN = {"type": "object", "properties": {
    "id": {"type": "integer"}, "action": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"},
    "result": {"type": "string"}, "error": {"type": ["string", "null"]}, "started_at": {"type": "string"},
    "finished_at": {"type": ["string", "null"]}, "steps": {"type": "array", "items": {"type": "object"}}},
    "required": ["id", "action", "from", "to", "result", "steps"]}


def _list(item: str) -> dict:
    return {"type": "object", "properties": {"items": {"type": "array", "items": _ref(item)}}, "required": ["items"]}


SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "PUQ Proxmox KVM admin API", "version": "1",
             "description": "The admin panel's operations as JSON. Authenticate with a bearer token made by "
                            "`flask admin token create --name NAME`."},
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}, "errors": {
                "type": "object", "additionalProperties": {"type": "string"}}}, "required": ["error"]},
            "Server": {"type": "object", "properties": {
                "id": {"type": "integer"}, "name": {"type": "string"}, "hostname": {"type": "string"},
                "ip": {"type": "string"}, "port": {"type": "integer"}, "token_id": {"type": "string"},
                "verify_tls": {"type": "boolean"}, "custom_ca": {"type": "boolean"}},
                "required": ["id", "name", "hostname", "ip", "port", "token_id", "verify_tls", "custom_ca"]},
            "Pool": POOL, "PoolInput": POOL_INPUT, "PoolCreate": POOL_CREATE, "VM": VM, "Run": RUN,
            "Product": {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                                                         "settings": PRODUCT_SETTINGS},
                        "required": ["id", "name", "settings"]},
            "ProductSettingsInput": PRODUCT_SETTINGS_INPUT, "Zone": ZONE, "ZoneInput": ZONE_INPUT, "Settings": SETTINGS, "SettingsInput": SETTINGS_INPUT,
        },
    },
    "paths": {
        "/api/v1/servers": {"get": {"summary": "Proxmox servers (secrets are never returned)",
                                    "responses": {"200": _json(_list("Server"), "Servers"), **ERRORS}}},
        "/api/v1/pools": {
            "get": {"summary": "IP pools with usage", "responses": {"200": _json(_list("Pool"), "Pools"), **ERRORS}},
            "post": {"summary": "Add an IP pool", "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("PoolCreate")}}},
                "responses": {"201": _json(_ref("Pool"), "The new pool"), **ERRORS}}},
        "/api/v1/pools/{pool_id}": {
            "parameters": [ID],
            "get": {"summary": "One IP pool", "responses": {"200": _json(_ref("Pool"), "Pool"), **ERRORS, **NOT_FOUND}},
            "put": {"summary": "Change an IP pool (addresses handed out stay as they are)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PoolInput")}}},
                    "responses": {"200": _json(_ref("Pool"), "Pool"), **ERRORS, **NOT_FOUND}},
            "delete": {"summary": "Delete an IP pool that hands out nothing",
                       "responses": {"204": {"description": "Deleted"}, "409": ERROR, **ERRORS, **NOT_FOUND}}},
        "/api/v1/products": {"get": {"summary": "Products with their module settings",
                                     "responses": {"200": _json(_list("Product"), "Products"), **ERRORS}}},
        "/api/v1/products/{product_id}": {
            "parameters": [PRODUCT],
            "get": {"summary": "One product", "responses": {"200": _json(_ref("Product"), "Product"), **ERRORS,
                                                            **NOT_FOUND}},
            "put": {"summary": "Change module settings (all or nothing)",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": _ref("ProductSettingsInput")}}},
                    "responses": {"200": _json(_ref("Product"), "Product"), **ERRORS, **NOT_FOUND}}},
        "/api/v1/vms": {"get": {
            "summary": "VMs across every server, filtered, searched, sorted and paginated",
            "parameters": [
                {"name": "service_status", "in": "query", "schema": {"type": "string",
                                                                     "enum": ["", *SERVICE_STATUSES]}},
                {"name": "vm_status", "in": "query", "schema": {"type": "string", "maxLength": 64}},
                {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": 200}},
                {"name": "sort", "in": "query", "schema": {"type": "string", "enum": list(SORTS)}},
                {"name": "dir", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]}},
                {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000000}},
                {"name": "per_page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}}],
            "responses": {"200": _json({"type": "object", "properties": {
                "items": {"type": "array", "items": _ref("VM")}, "total": {"type": "integer"},
                "page": {"type": "integer"}, "per_page": {"type": "integer"}, "pages": {"type": "integer"}},
                "required": ["items", "total", "page", "per_page", "pages"]}, "A page of VMs"), **ERRORS}}},
        "/api/v1/vms/{service_id}": {
            "parameters": [SERVICE],
            "get": {"summary": "One VM", "responses": {"200": _json(_ref("VM"), "VM"), **ERRORS, **NOT_FOUND}},
            "delete": {"summary": "Delete the record of a VM in error_terminate or remove (Proxmox is not touched)",
                       "responses": {"204": {"description": "Deleted"}, "409": ERROR, **ERRORS, **NOT_FOUND}}},
        "/api/v1/vms/{service_id}/log": {
            "parameters": [SERVICE],
            "get": {"summary": "The VM's last 50 pipeline runs", "responses": {"200": _json({
                "type": "object", "properties": {"last_error": {"type": ["object", "null"]},
                                                  "runs": {"type": "array", "items": _ref("Run")}},
                "required": ["last_error", "runs"]}, "Runs"), **ERRORS, **NOT_FOUND}}},
        "/api/v1/vms/{service_id}/reset": {
            "parameters": [SERVICE],
            "post": {"summary": "Put the VM at a re-runnable status",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "properties": {"status": {"type": "string", "enum": list(RESET_STATUSES)}},
                         "required": ["status"]}}}},
                     "responses": {"200": _json(_ref("VM"), "VM"), **ERRORS, **NOT_FOUND}}},
        "/api/v1/vms/{service_id}/redeploy": {
            "parameters": [SERVICE],
            "post": {"summary": "Queue a redeploy (destroys the VM on Proxmox at the next tick)",
                     "responses": {"202": _json(_ref("VM"), "VM"), "409": ERROR, **ERRORS, **NOT_FOUND}}},
        "/api/v1/dns-zones": {
            "get": {"summary": "DNS zones (secrets only say whether they are set)",
                    "responses": {"200": _json(_list("Zone"), "Zones"), **ERRORS}},
            "post": {"summary": "Add a DNS zone", "requestBody": {"required": True, "content": {
                "application/json": {"schema": dict(ZONE_INPUT, required=["name", "provider"])}}},
                "responses": {"201": _json(_ref("Zone"), "The new zone"), **ERRORS}}},
        "/api/v1/dns-zones/{zone_id}": {
            "parameters": [ZONE_ID],
            "get": {"summary": "One DNS zone", "responses": {"200": _json(_ref("Zone"), "Zone"), **ERRORS,
                                                             **NOT_FOUND}},
            "put": {"summary": "Change a DNS zone (an empty secret keeps the stored one)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ZoneInput")}}},
                    "responses": {"200": _json(_ref("Zone"), "Zone"), **ERRORS, **NOT_FOUND}},
            "delete": {"summary": "Delete a DNS zone", "responses": {"204": {"description": "Deleted"}, **ERRORS,
                                                                      **NOT_FOUND}}},
        "/api/v1/dns-zones/{zone_id}/test": {
            "parameters": [ZONE_ID],
            "post": {"summary": "Check reachability, credentials and the zone on the provider",
                     "responses": {"200": _json({"type": "object", "properties": {
                         "ok": {"type": "boolean"}, "error": {"type": "string"}}, "required": ["ok", "error"]},
                         "Result"), **ERRORS, **NOT_FOUND}}},
        "/api/v1/settings": {
            "get": {"summary": "Module settings (secrets only say whether they are set)",
                    "responses": {"200": _json(_ref("Settings"), "Settings"), **ERRORS}},
            "put": {"summary": "Change settings (all or nothing; an empty secret keeps the stored one)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SettingsInput")}}},
                    "responses": {"200": _json(_ref("Settings"), "Settings"), **ERRORS}}},
        "/api/v1/openapi.json": {"get": {"summary": "This document",
                                         "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"), **ERRORS}}},
    },
}
