"""DNS zones and a VM's records in them: forward A/AAAA for its FQDN in every zone that is a suffix of the
name, a PTR for every address in every reverse zone that contains it, on any mix of providers.

A DNS problem never holds a VM back: every zone and every record set is in its own error boundary, the
live output shows ``fwd ERR`` / ``rev ERR`` where one fails, and the caller gets a summary.
"""
from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .. import settings
from ..extensions import db
from ..models import DnsZone, ModuleLog
from ..vault import SecretUnreadable, seal, unseal
from .base import DnsError, Outcome, ProviderClient, RRSet
from .cloudflare import DEFAULT_API, Cloudflare
from .hestiacp import HestiaCp
from .names import classless_span, in_zone, is_host_name, normalize, reverse_name_in
from .powerdns import PowerDns

PROVIDERS = {"cloudflare": "Cloudflare", "hestiacp": "HestiaCP", "powerdns": "PowerDNS"}
# The provider's non-secret fields, and the name of its one secret field.
FIELDS = {"cloudflare": ("account_id", "zone_id"), "hestiacp": ("server_url", "admin_user", "owner_user"),
          "powerdns": ("server_url",)}
SECRET_FIELD = {"cloudflare": "api_token", "hestiacp": "admin_password", "powerdns": "api_key"}
ZONE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-._/")  # "/": RFC 2317 (0/26.2.0.192...)


class ZoneError(ValueError):
    def __init__(self, errors: dict[str, Any]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


# ----------------------------------------------------------------------------- zones

def _url(value: str) -> bool:
    return value.startswith(("http://", "https://")) and len(value) > 8 and \
        not any(c.isspace() or not c.isprintable() for c in value)


def validate_zone(values: dict[str, Any], existing: DnsZone | None = None) -> dict[str, Any]:
    """Check a zone's fields for its provider; returns {name, provider, settings, secret} or raises."""
    errors: dict[str, Any] = {}
    provider = str(values.get("provider") or (existing.provider if existing else "")).lower()
    if provider not in PROVIDERS:
        errors["provider"] = _l("Choose Cloudflare, HestiaCP or PowerDNS.")
        raise ZoneError(errors)
    name = normalize(values.get("name", existing.name if existing else ""))
    # A host name's labels, or RFC 2317's classless reverse zone (0/26.2.0.192.in-addr.arpa)
    if not name or not set(name) <= ZONE_NAME_CHARS or not is_host_name(name.replace("/", "-")):
        errors["name"] = _l("Not a valid zone name.")
    clean_settings: dict[str, str] = {}
    for key in FIELDS[provider]:
        raw = values.get(key, (existing.settings or {}).get(key, "") if existing else "")
        text = str(raw or "").strip() if not isinstance(raw, (list, dict)) else None
        if not text:
            errors[key] = _l("Required.")
            continue
        if key == "server_url":
            if not _url(text):
                errors[key] = _l("Must be an http:// or https:// URL.")
            elif provider == "hestiacp" and not text.endswith("/"):
                text += "/"  # HestiaCP's API lives under the URL's /api/
        clean_settings[key] = text
    secret_key = SECRET_FIELD[provider]
    secret = values.get(secret_key)
    if isinstance(secret, (list, dict)):
        errors[secret_key] = _l("Invalid value.")
        secret = None
    secret = str(secret or "")
    if not secret and (existing is None or existing.provider != provider or not existing.secret):
        errors[secret_key] = _l("Required.")
    elif not secret and clean_settings != (existing.settings or {}):
        # The stored secret goes only where it was entered for: a new server URL, user or zone id needs it
        # typed again.
        errors[secret_key] = _l("Enter the secret again: where it is sent has changed.")
    if errors:
        raise ZoneError(errors)
    return {"name": name, "provider": provider, "settings": clean_settings, "secret": secret}


def create_zone(values: dict[str, Any]) -> DnsZone:
    clean = validate_zone(values)
    zone = DnsZone(name=clean["name"], provider=clean["provider"], settings=clean["settings"],
                   secret=seal(clean["secret"]))
    db.session.add(zone)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ZoneError({"name": _l("This zone is already configured.")}) from None
    return zone


def update_zone(zone: DnsZone, values: dict[str, Any]) -> DnsZone:
    """Change a zone; an empty secret keeps the stored one, a typed one replaces it."""
    clean = validate_zone(values, existing=zone)
    zone.name, zone.provider, zone.settings = clean["name"], clean["provider"], clean["settings"]
    if clean["secret"]:
        zone.secret = seal(clean["secret"])
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ZoneError({"name": _l("This zone is already configured.")}) from None
    return zone


def delete_zone(zone: DnsZone) -> None:
    db.session.delete(zone)
    db.session.commit()


def zones() -> list[DnsZone]:
    return list(db.session.scalars(select(DnsZone).order_by(DnsZone.name)))


def public(zone: DnsZone) -> dict[str, Any]:
    """A zone for a page or an API answer: the secret only says whether it is set."""
    return {"id": zone.id, "name": zone.name, "provider": zone.provider, **(zone.settings or {}),
            SECRET_FIELD[zone.provider]: {"set": bool(zone.secret)}}


def client(zone: DnsZone) -> ProviderClient:
    timeout = settings.get("api_timeout")
    secret = unseal(zone.secret)
    s = zone.settings or {}
    if zone.provider == "powerdns":
        return PowerDns(zone.name, s["server_url"], secret, timeout)
    if zone.provider == "cloudflare":
        return Cloudflare(zone.name, s["zone_id"], secret, timeout,
                          current_app.config.get("CLOUDFLARE_API_URL") or DEFAULT_API)
    return HestiaCp(zone.name, s["server_url"], s["admin_user"], secret, s["owner_user"], timeout)


def test_zone(zone: DnsZone) -> str | None:
    """None when the provider answers, accepts the credentials and has the zone; else its error."""
    try:
        client(zone).check()
    except (DnsError, SecretUnreadable, KeyError) as exc:
        return str(exc) or type(exc).__name__
    return None


# ----------------------------------------------------------------------------- records

@dataclass
class Summary:
    zones: int = 0
    forward_ok: int = 0
    forward_err: int = 0
    reverse_ok: int = 0
    reverse_err: int = 0
    calls: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.forward_err + self.reverse_err

    @property
    def note(self) -> str:
        if not self.zones:
            return "skip - no DNS zone configured"
        return (f"fwd ok/err {self.forward_ok}/{self.forward_err}, "
                f"rev ok/err {self.reverse_ok}/{self.reverse_err}")


@dataclass
class Target:
    """A VM's DNS: its FQDN, its addresses and the admin-set reverse names."""

    service_id: int
    fqdn: str
    addresses: list[str]
    rev_dns: dict[str, str] = field(default_factory=dict)


def plan(target: Target, available: list[DnsZone]) -> list[tuple[DnsZone, list[RRSet], list[RRSet]]]:
    """For each zone that concerns the VM: its forward and its reverse record sets."""
    v4 = tuple(a for a in target.addresses if ipaddress.ip_address(a).version == 4)
    v6 = tuple(a for a in target.addresses if ipaddress.ip_address(a).version == 6)
    # An address in an RFC 2317 classless zone has its PTR there only: its /24's zone holds the CNAME to it.
    delegated = {a for a in v4 for zone in available
                 if classless_span(zone.name) and reverse_name_in(a, zone.name)}
    out = []
    for zone in available:
        forward = []
        if target.fqdn and in_zone(target.fqdn, zone.name):
            forward = [RRSet(target.fqdn, "A", v4), RRSet(target.fqdn, "AAAA", v6)]
        classless = classless_span(zone.name) is not None
        # An address with no name (no main domain, none set by hand) gets no PTR written; a delete still
        # removes whatever PTR it has.
        reverse = [RRSet(name, "PTR", tuple(n for n in (target.rev_dns.get(a) or target.fqdn,) if n))
                   for a in target.addresses
                   if (classless or a not in delegated) and (name := reverse_name_in(a, zone.name))]
        if forward or reverse:
            out.append((zone, forward, reverse))
    return out


def _apply(target: Target, mode: str, write: Callable[[str], None]) -> Summary:
    """mode "set": write the VM's record sets; "delete": remove them; "resync": write them and remove the
    forward sets that have no address any more, in one pass (one PATCH per zone on PowerDNS)."""
    summary = Summary()
    verb = "delete" if mode == "delete" else "set"
    for zone, forward, reverse in plan(target, zones()):
        summary.zones += 1
        label = f"{zone.name} ({PROVIDERS[zone.provider]})"
        sides = {id(r): "fwd" for r in forward} | {id(r): "rev" for r in reverse}
        if mode == "delete":
            replace, delete = [], forward + reverse
        else:
            replace = [r for r in forward + reverse if r.contents]  # no empty A or AAAA set is written
            delete = [r for r in forward if not r.contents] if mode == "resync" else []
        try:
            api = client(zone)
            outcomes = api.sync(replace, delete)
            summary.calls += api.calls
        except (DnsError, SecretUnreadable, KeyError) as exc:
            outcomes = [Outcome(r, str(exc) or type(exc).__name__) for r in replace + delete]
        except Exception as exc:  # noqa: BLE001 - a DNS provider must never hold a VM's pipeline back
            logging.getLogger("pkvm.dns").exception("DNS zone %s: unexpected failure", zone.name)
            outcomes = [Outcome(r, f"unexpected {type(exc).__name__}: {exc}"[:300]) for r in replace + delete]
        for outcome in outcomes:
            r, side = outcome.rrset, sides[id(outcome.rrset)]
            removed = mode == "delete" or not r.contents
            shown = f"{r.name} {r.rtype}" + ("" if removed else " " + " ".join(r.contents))
            action = "delete" if removed else "set"
            if outcome.error:
                write(f"    {side} ERR {action} {label}: {shown} - {outcome.error}")
                summary.messages.append(f"{zone.name}: {r.name} {r.rtype}: {outcome.error}")
            else:
                write(f"    {side} ok  {action} {label}: {shown}")
            key = ("forward" if side == "fwd" else "reverse") + ("_err" if outcome.error else "_ok")
            setattr(summary, key, getattr(summary, key) + 1)
    if summary.errors:
        db.session.add(ModuleLog(action=f"DNS {verb} records", service_id=target.service_id,
                                 request=json.dumps({"fqdn": target.fqdn, "addresses": target.addresses}),
                                 response=json.dumps({"summary": summary.note, "errors": summary.messages})))
        db.session.commit()
    return summary


def set_records(target: Target, write: Callable[[str], None] = lambda line: None) -> Summary:
    return _apply(target, "set", write)


def delete_records(target: Target, write: Callable[[str], None] = lambda line: None) -> Summary:
    return _apply(target, "delete", write)


def resync(target: Target, write: Callable[[str], None] = lambda line: None) -> Summary:
    """Set DNS records and change package: every record set of the VM rewritten whole (what it held before
    is gone), the forward sets without addresses deleted."""
    return _apply(target, "resync", write)
