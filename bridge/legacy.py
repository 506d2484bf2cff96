"""The original's read-only ``dns.php``: every assigned address with its forward and reverse name, as JSON,
for external DNS automation. Served only to the client addresses in the ``dns_json_allowlist`` setting."""
from __future__ import annotations

import ipaddress

from flask import Blueprint, jsonify, request

from core import settings
from core.vms import dns_map

legacy = Blueprint("legacy", __name__)


def allowed(remote: str) -> bool:
    try:
        client = ipaddress.ip_address(remote)
    except ValueError:
        return False
    for item in settings.get("dns_json_allowlist").replace(",", " ").split():
        try:
            if client in ipaddress.ip_network(item, strict=False):
                return True
        except ValueError:
            continue
    return False


@legacy.get("/modules/servers/puqProxmoxKVM/lib/dns/dns.php")
@legacy.get("/legacy/dns.json")
def dns_json():
    if not allowed(request.remote_addr or ""):
        return jsonify(error="forbidden: this address is not in the DNS JSON allowlist (Settings)"), 403
    return jsonify(dns_map())
