"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with a key kept in the instance folder.

Encrypted values are stored as text prefixed with ``enc:v1:`` so a column can tell a sealed value from
an empty one. Nothing here ever logs a plaintext.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from flask import current_app

PREFIX = "enc:v1:"


class SecretUnreadable(Exception):
    """A stored secret could not be decrypted with this instance's key."""


def _fernet() -> Fernet:
    return _fernet_for(current_app.config["DATA_KEY"])


@lru_cache(maxsize=4)
def _fernet_for(raw: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw.encode()).digest()))


def seal(plaintext: str | None) -> str | None:
    """Encrypt a secret for storage; None and "" are stored as they are."""
    if not plaintext:
        return plaintext
    return PREFIX + _fernet().encrypt(plaintext.encode()).decode()


def unseal(stored: str | None) -> str:
    """Decrypt a stored secret ("" for none)."""
    if not stored:
        return ""
    return _decrypt(current_app.config["DATA_KEY"], stored)


def _decrypt(raw_key: str, stored: str) -> str:
    if not stored.startswith(PREFIX):
        raise SecretUnreadable("stored secret is not sealed")
    try:
        return _fernet_for(raw_key).decrypt(stored[len(PREFIX):].encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable("stored secret cannot be decrypted with this instance's key (every process, "
                               "web and workers, must use the same data_key: the same instance folder, or "
                               "PKVM_DATA_KEY)") from exc


def seals(stored: str | None, plaintext: str) -> bool:
    """Whether a stored value is this plaintext, sealed (False for one that cannot be read). Every bridge
    call asks this of the server's token secret: the answer is remembered per ciphertext as a digest of
    the plaintext, never the plaintext itself."""
    if not stored or not plaintext:
        return False
    digest = _sealed_digest(current_app.config["DATA_KEY"], stored)
    return digest is not None and hmac.compare_digest(digest, hashlib.sha256(plaintext.encode()).digest())


@lru_cache(maxsize=1024)
def _sealed_digest(raw_key: str, stored: str) -> bytes | None:
    try:
        return hashlib.sha256(_decrypt(raw_key, stored).encode()).digest()
    except SecretUnreadable:
        return None
