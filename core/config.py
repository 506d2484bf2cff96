"""Configuration: class defaults, then FLASK_* / PKVM_* environment, then what the caller passes.

No secret has a built-in default: the Flask secret key, the bridge secret and the key that encrypts
secrets at rest are generated on first use and kept in the instance folder.
"""
from __future__ import annotations

import os
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path


class Config:
    SQLALCHEMY_DATABASE_URI: str | None = None  # set from DATABASE_URL or the instance SQLite file
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    REDIS_URL: str | None = None
    RQ_QUEUE = "pkvm"
    # Seconds a bridge call's timestamp may differ from ours.
    BRIDGE_MAX_SKEW = 300
    # The in-process ticker (no Redis): seconds between ticks; 0 turns it off.
    TICKER_SECONDS = 60
    # Seconds between polls of a running Proxmox task.
    TASK_POLL_SECONDS = 1.0
    # An RQ job waits this long for a Proxmox task before it re-queues itself JOB_REQUEUE_SECONDS later.
    JOB_MAX_WAIT = 5.0
    JOB_REQUEUE_SECONDS = 3.0
    WTF_CSRF_TIME_LIMIT = 3600
    # A panel login lasts this long from the moment it was made (the pages' polling does not extend it).
    PERMANENT_SESSION_LIFETIME = timedelta(hours=12)
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_HTTPONLY = True
    # Reverse proxies in front of the product whose X-Forwarded-For/-Proto/-Host are believed (0: none). Behind
    # one, set it to 1: login throttling then counts the client's address, not the proxy's.
    TRUSTED_PROXIES = 0
    # The largest request body taken (a WHMCS call's $params, a panel form): 1 MiB; larger is a 413.
    MAX_CONTENT_LENGTH = 1024 * 1024


def instance_secret(instance_path: str, name: str, nbytes: int = 32) -> str:
    """Read instance/<name>, creating it with a fresh random value (mode 0600) the first time."""
    path = Path(instance_path) / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(nbytes)
    # Written whole to a private file, then linked into place: two processes starting at once agree on
    # one value, and neither can read a file the other has created but not yet written.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_text().strip()
    finally:
        os.unlink(tmp)
    return value
