"""The Proxmox VE API client: proxmoxer with API-token auth, our timeouts, TLS choices and error wording.

Every call goes through ``Pve`` so that booleans are sent as 1/0 (real PVE rejects "True"), None values
are dropped, and failures of any kind (HTTP error, refused connection, timeout, bad TLS) arrive as one
``ProxmoxError`` whose message an admin can act on.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

# proxmoxer logs every request body at INFO, cloud-init passwords included: never let it.
logging.getLogger("proxmoxer").setLevel(logging.WARNING)


class ProxmoxError(Exception):
    """A Proxmox call failed; ``status`` is the HTTP status (0 when there was no answer)."""

    def __init__(self, message: str, status: int = 0, errors: dict | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.errors = errors or {}


@dataclass(frozen=True)
class Endpoint:
    """How to reach one cluster: host, port, API token, TLS verification."""

    host: str
    port: int
    token_id: str  # user@realm!tokenid
    token_secret: str
    verify_tls: bool = True
    ca_file: str | None = None

    def cache_key(self, timeout: float) -> tuple:
        digest = hashlib.sha256(self.token_secret.encode()).hexdigest()
        return (self.host, self.port, self.token_id, digest, self.verify_tls, self.ca_file, timeout)


def split_token_id(token_id: str) -> tuple[str, str]:
    """("user@realm", "tokenid") of "user@realm!tokenid"; raises ValueError with what is wrong."""
    user, sep, name = (token_id or "").partition("!")
    if not sep or "@" not in user or not name:
        raise ValueError("API token ID must look like user@realm!tokenid (for example root@pam!whmcs)")
    return user, name


def wire(value: Any) -> Any:
    """A parameter as PVE wants it: booleans as 1/0."""
    if isinstance(value, bool):
        return 1 if value else 0
    return value


def clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: wire(v) for k, v in params.items() if v is not None}


def _utf8(text: str) -> str:
    """Proxmox puts its error in the HTTP status line, which clients decode as Latin-1: its UTF-8 back."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def _describe(exc: Exception) -> ProxmoxError:
    if isinstance(exc, ResourceException):
        errors = exc.errors if isinstance(exc.errors, dict) else {}
        text = _utf8(str(exc.content or exc.status_message or "").strip())
        if errors:
            text += " " + "; ".join(f"{k}: {v}" for k, v in errors.items())
        if exc.status_code == 401:
            text = "authentication failure: check the API token ID and secret"
        return ProxmoxError(f"HTTP {exc.status_code}: {text}".strip(), exc.status_code, errors)
    if isinstance(exc, requests.exceptions.SSLError):
        return ProxmoxError("TLS verification failed: install the cluster's CA certificate on the server "
                            "entry, or turn verification off for a self-signed certificate")
    if isinstance(exc, requests.exceptions.Timeout):
        return ProxmoxError("Proxmox API did not answer in time (timeout)")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return ProxmoxError("cannot connect to the Proxmox API: check the host, port 8006 and firewalls")
    return ProxmoxError(f"{type(exc).__name__}: {exc}")


_local = threading.local()


class Pve:
    """A thin façade over proxmoxer: ``pve.get('nodes', node, 'qemu', vmid, 'config')``."""

    def __init__(self, endpoint: Endpoint, timeout: float = 10):
        self.endpoint = endpoint
        self.timeout = timeout
        self.calls = 0
        cache = getattr(_local, "apis", None)
        if cache is None:
            cache = _local.apis = {}
        key = endpoint.cache_key(timeout)
        api = cache.get(key)
        if api is None:
            user, name = split_token_id(endpoint.token_id)
            verify: bool | str = endpoint.ca_file if (endpoint.verify_tls and endpoint.ca_file) else \
                endpoint.verify_tls
            # The environment (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE) is read once here rather than by
            # requests on every call, where it cost more CPU than the rest of the request.
            probe = requests.Session()
            env = probe.merge_environment_settings(f"https://{endpoint.host}:{endpoint.port}/", {}, None,
                                                   verify, None)
            probe.close()
            api = ProxmoxAPI(endpoint.host, port=endpoint.port, user=user, token_name=name,
                             token_value=endpoint.token_secret, verify_ssl=env["verify"], timeout=timeout,
                             service="PVE", proxies=env["proxies"] or None)
            session = getattr(api, "_store", {}).get("session")
            if session is not None:
                session.trust_env = False
            cache[key] = api
        self.api = api

    def _call(self, method: str, path: tuple, params: dict[str, Any]) -> Any:
        resource = self.api([quote(str(part), safe="@!:.-_") for part in path])
        self.calls += 1
        try:
            return getattr(resource, method)(**clean(params))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ProxmoxError
            error = _describe(exc)
            # An unexpected error may quote the Authorization header (with the secret escaped, as in a
            # repr): its core, stripped of what was around it, never shows.
            secret = (self.endpoint.token_secret or "").strip()
            if secret and secret in error.message:
                error = ProxmoxError(error.message.replace(secret, "********"), error.status, error.errors)
            raise error from None

    def get(self, *path: Any, **params: Any) -> Any:
        return self._call("get", path, params)

    def post(self, *path: Any, **params: Any) -> Any:
        return self._call("post", path, params)

    def put(self, *path: Any, **params: Any) -> Any:
        return self._call("put", path, params)

    def delete(self, *path: Any, **params: Any) -> Any:
        return self._call("delete", path, params)

    # ------------------------------------------------------------------ tasks

    def task_status(self, upid: str) -> dict:
        node = upid.split(":")[1]
        return self.get("nodes", node, "tasks", upid, "status") or {}


def task_outcome(status: dict) -> tuple[bool, str | None]:
    """(finished, error) of a task status: error None when it ended OK."""
    if status.get("status") != "stopped":
        return False, None
    exit_status = status.get("exitstatus") or "unknown"
    return True, None if exit_status == "OK" else exit_status


def endpoint_for(server: Any, secret: str, instance_path: str) -> Endpoint:
    """The endpoint of a Server row; a custom CA is written to the instance folder for requests to read."""
    ca_file = None
    if server.ca_pem:
        digest = hashlib.sha256(server.ca_pem.encode()).hexdigest()[:16]
        path = Path(instance_path) / "ca" / f"server-{server.id}-{digest}.pem"
        if not path.exists():
            # Written whole, then renamed into place: a thread that finds the file never reads it half-written
            # (which failed that thread's TLS verification).
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            partial.write_text(server.ca_pem)
            os.replace(partial, path)
        ca_file = str(path)
    return Endpoint(host=server.address, port=server.port or 8006, token_id=server.token_id,
                    token_secret=secret, verify_tls=server.verify_tls, ca_file=ca_file)
