"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with a key kept in the instance folder.

Encrypted values are stored as text prefixed with ``enc:v1:`` so a column can tell a sealed value from
an empty one. Nothing here ever logs a plaintext.
"""
from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from flask import current_app

PREFIX = "enc:v1:"


class SecretUnreadable(Exception):
    """A stored secret could not be decrypted with this instance's key."""


def _fernet() -> Fernet:
    raw = current_app.config["DATA_KEY"]
    key = base64.urlsafe_b64encode(hashlib.sha256(raw.encode()).digest())
    return Fernet(key)


def seal(plaintext: str | None) -> str | None:
    """Encrypt a secret for storage; None and "" are stored as they are."""
    if not plaintext:
        return plaintext
    return PREFIX + _fernet().encrypt(plaintext.encode()).decode()


def unseal(stored: str | None) -> str:
    """Decrypt a stored secret ("" for none)."""
    if not stored:
        return ""
    if not stored.startswith(PREFIX):
        raise SecretUnreadable("stored secret is not sealed")
    try:
        return _fernet().decrypt(stored[len(PREFIX):].encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable("stored secret cannot be decrypted with this instance's key") from exc
