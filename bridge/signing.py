"""Bridge call signatures: HMAC-SHA256 over timestamp, nonce, method, path and raw body.

    X-Bridge-Timestamp: unix seconds
    X-Bridge-Nonce:     16+ hex characters, never reused
    X-Bridge-Signature: hex(HMAC-SHA256(secret, ts "\\n" nonce "\\n" METHOD "\\n" path "\\n" body))

A call is refused when its timestamp is more than BRIDGE_MAX_SKEW seconds away from ours, its nonce was
seen before, or its signature does not match (compared in constant time). Nonces are kept as long as their
timestamp could still be accepted.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Callable

from sqlalchemy import bindparam, delete, insert
from sqlalchemy.exc import IntegrityError, OperationalError

from core.extensions import db
from core.models import BridgeNonce

NONCE = re.compile(r"^[0-9a-fA-F]{16,128}$")
TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
SIGNATURE = re.compile(r"^[0-9a-fA-F]{64}$")
# Old nonces are purged on about one accepted call in this many.
PURGE_ONE_IN = 50
_INSERT_NONCE = insert(BridgeNonce.__table__)
_PURGE_NONCES = delete(BridgeNonce.__table__).where(BridgeNonce.__table__.c.seen_at < bindparam("older_than"))


class SignatureError(Exception):
    pass


def canonical(timestamp: str, nonce: str, method: str, path: str, body: bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n{method.upper()}\n{path}\n".encode() + body


def sign(secret: str, timestamp: str, nonce: str, method: str, path: str, body: bytes) -> str:
    return hmac.new(secret.encode(), canonical(timestamp, nonce, method, path, body), hashlib.sha256).hexdigest()


def signed_headers(secret: str, method: str, path: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The headers the shim sends (used by ``flask bridge call`` and the tests)."""
    timestamp = str(int(now if now is not None else time.time()))
    nonce = secrets.token_hex(16)
    return {"X-Bridge-Timestamp": timestamp, "X-Bridge-Nonce": nonce,
            "X-Bridge-Signature": sign(secret, timestamp, nonce, method, path, body),
            "Content-Type": "application/json"}


def verify(secret: str, headers, method: str, path: str, body: bytes | Callable[[], bytes], max_skew: int,
           now: float | None = None, record: bool = True) -> tuple[str, int]:
    """Raise SignatureError unless the call is signed, fresh and not replayed; records the nonce in the
    session's transaction (uncommitted) unless told not to: the caller then records it with its own
    writes, and a replay is refused there. ``body`` may be a function that reads it: it is called only for
    a call whose headers are well formed and fresh, so a stranger cannot make us read a body first."""
    timestamp = headers.get("X-Bridge-Timestamp", "")
    nonce = headers.get("X-Bridge-Nonce", "")
    signature = headers.get("X-Bridge-Signature", "")
    if not (timestamp and nonce and signature):
        raise SignatureError("missing signature headers (X-Bridge-Timestamp, X-Bridge-Nonce, X-Bridge-Signature)")
    if not TIMESTAMP.match(timestamp):
        raise SignatureError("X-Bridge-Timestamp must be unix seconds")
    if not NONCE.match(nonce):
        raise SignatureError("X-Bridge-Nonce must be 16 to 128 hex characters")
    if not SIGNATURE.match(signature):
        raise SignatureError("X-Bridge-Signature must be 64 hex characters (HMAC-SHA256)")
    now = int(now if now is not None else time.time())
    if abs(now - int(timestamp)) > max_skew:
        raise SignatureError("stale or future timestamp: check the clocks of WHMCS and this server")
    expected = sign(secret, timestamp, nonce, method, path, body() if callable(body) else body)
    if not hmac.compare_digest(expected, signature.lower()):
        raise SignatureError("bad signature: check the shared secret")
    if secrets.randbelow(PURGE_ONE_IN) == 0:
        purge_nonces(now - 2 * max_skew)
    if record:
        record_nonce(nonce, now)
    return nonce, now


def record_nonce(nonce: str, seen_at: int, connection=None) -> None:
    """Write the nonce into the session's transaction, or that of ``connection`` (not committed: the caller
    commits it, with the call's own writes or before them). A nonce already stored, or being stored by a
    concurrent call (which the database makes this one wait for), is a replay: SignatureError, and the
    session's transaction is rolled back (the caller's, given a connection, when the error leaves it)."""
    try:
        (connection or db.session.connection()).execute(_INSERT_NONCE, {"nonce": nonce.lower(), "seen_at": seen_at})
    except IntegrityError:
        if connection is None:
            db.session.rollback()
        raise SignatureError("replayed call: this nonce was already used") from None


def purge_nonces(older_than: int) -> None:
    """Forget nonces whose timestamps can no longer be accepted. Best effort: a range delete can meet
    concurrent inserts (InnoDB gap locks); it simply runs again on a later call."""
    try:
        db.session.connection().execute(_PURGE_NONCES, {"older_than": older_than})
        db.session.commit()
    except OperationalError:
        db.session.rollback()
