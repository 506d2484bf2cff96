"""The WHMCS external API (includes/api.php): emails, service updates and activity log entries.

Credentials (identifier and secret) come from the settings; the secret is sealed at rest and never logged.
"""
from __future__ import annotations

import base64
from typing import Any

import requests

from . import settings


class WhmcsError(Exception):
    pass


class WhmcsNotConfigured(WhmcsError):
    pass


def php_serialize(values: dict[str, Any]) -> str:
    """A flat string map as PHP's serialize() writes it (what SendEmail's customvars expects, base64'd)."""
    def s(text: str) -> str:
        raw = str(text)
        return f's:{len(raw.encode())}:"{raw}";'
    return f"a:{len(values)}:{{" + "".join(s(k) + s(v) for k, v in values.items()) + "}"


def call(action: str, **params: Any) -> dict:
    url = settings.get("whmcs_api_url")
    identifier = settings.get("whmcs_api_identifier")
    secret = settings.get("whmcs_api_secret")
    if not (url and identifier and secret):
        raise WhmcsNotConfigured("the WHMCS API URL, identifier and secret are not set in the settings")
    data = {"action": action, "identifier": identifier, "secret": secret, "responsetype": "json", **params}
    try:
        answer = requests.post(url, data=data, timeout=settings.get("api_timeout"))
    except requests.RequestException as exc:
        raise WhmcsError(f"WHMCS API unreachable: {type(exc).__name__}") from exc
    try:
        body = answer.json()
    except ValueError:
        raise WhmcsError(f"WHMCS API answered HTTP {answer.status_code} without JSON") from None
    if not isinstance(body, dict):
        raise WhmcsError(f"WHMCS API answered HTTP {answer.status_code} with no JSON object")
    if body.get("result") != "success":
        raise WhmcsError(f"WHMCS API {action}: {body.get('message') or 'error'}")
    return body


def send_email(template: str, service_id: int, customvars: dict[str, Any] | None = None) -> None:
    params: dict[str, Any] = {"messagename": template, "id": service_id}
    if customvars:
        params["customvars"] = base64.b64encode(php_serialize(customvars).encode()).decode()
    call("SendEmail", **params)
