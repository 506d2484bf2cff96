"""Admins, access groups, login throttling and API tokens."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from .extensions import db
from .models import AccessGroup, Admin, ApiToken, LoginAttempt, id_from_text, utcnow

SECTIONS = ("dashboard", "ip_pools", "dns_zones", "vms", "products", "settings")
# Failed logins allowed per user name, and per client address, within the window.
MAX_FAILURES = 5
MAX_FAILURES_PER_ADDRESS = 20
FAILURE_WINDOW = timedelta(minutes=15)
MIN_PASSWORD = 10
# scrypt with Werkzeug's parameters: memory-hard, the modern default
PASSWORD_METHOD = "scrypt"


class AdminError(ValueError):
    pass


def create_admin(username: str, password: str, group: AccessGroup | None = None, locale: str | None = None) -> Admin:
    username = username.strip()
    if not username or len(username) > 64:
        raise AdminError("the user name must be 1 to 64 characters")
    if len(password) < MIN_PASSWORD:
        raise AdminError(f"the password must be at least {MIN_PASSWORD} characters")
    admin = Admin(username=username, password_hash=generate_password_hash(password, method=PASSWORD_METHOD),
                  group=group, locale=locale)
    db.session.add(admin)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise AdminError(f"an admin named {username!r} already exists") from None
    return admin


def set_password(admin: Admin, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AdminError(f"the password must be at least {MIN_PASSWORD} characters")
    admin.password_hash = generate_password_hash(password, method=PASSWORD_METHOD)
    admin.session_version += 1  # every open session ends
    db.session.commit()


def end_sessions(admin: Admin) -> None:
    """End every open session of the admin (logging out: a copied cookie stops working too)."""
    admin.session_version += 1
    db.session.commit()


def _attempt_key(username: str) -> str:
    """The name failures are counted under: as the login looks it up (stripped), in any case."""
    return username.strip().lower()[:64]


def throttled(username: str, remote_addr: str) -> bool:
    since = utcnow() - FAILURE_WINDOW
    by_name = db.session.scalar(select(func.count()).select_from(LoginAttempt).where(
        LoginAttempt.username == _attempt_key(username), LoginAttempt.at >= since)) or 0
    by_addr = db.session.scalar(select(func.count()).select_from(LoginAttempt).where(
        LoginAttempt.remote_addr == remote_addr, LoginAttempt.at >= since)) or 0
    return by_name >= MAX_FAILURES or by_addr >= MAX_FAILURES_PER_ADDRESS


def authenticate(username: str, password: str, remote_addr: str) -> Admin | None:
    """The admin, or None for a wrong name or password. Raises AdminError when logins are throttled."""
    if throttled(username, remote_addr):
        raise AdminError("throttled")
    admin = db.session.scalar(select(Admin).where(Admin.username == username.strip()))
    # Compare against a dummy hash for unknown names, so timing does not tell which names exist.
    valid = check_password_hash(admin.password_hash if admin else _DUMMY, password)
    if admin is None or not valid or not admin.active:
        db.session.add(LoginAttempt(username=_attempt_key(username), remote_addr=remote_addr[:64]))
        db.session.execute(delete(LoginAttempt).where(LoginAttempt.at < utcnow() - 4 * FAILURE_WINDOW))
        db.session.commit()
        return None
    db.session.execute(delete(LoginAttempt).where(LoginAttempt.username == _attempt_key(username)))
    admin.last_login_at = utcnow()
    db.session.commit()
    return admin


def load_admin(session_id: str) -> Admin | None:
    """Flask-Login's loader: the id carries the session version, so a password change ends old sessions."""
    admin_id, _, version = session_id.partition(":")
    number = id_from_text(admin_id)
    if number is None or not version.isdecimal():
        return None
    admin = db.session.get(Admin, number)
    if admin is None or not admin.active or admin.session_version != int(version):
        return None
    return admin


_DUMMY = generate_password_hash(secrets.token_hex(8), method=PASSWORD_METHOD)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(name: str, group: AccessGroup | None = None) -> str:
    """A new API token; only its digest is stored, so this is the one time it can be shown."""
    token = "pkvm_" + secrets.token_urlsafe(32)
    db.session.add(ApiToken(name=name, token_hash=token_digest(token), prefix=token[:12], group=group))
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise AdminError(f"a token named {name!r} already exists") from None
    return token


def revoke_token(name: str) -> bool:
    row = db.session.scalar(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None)))
    if row is None:
        return False
    row.revoked_at = utcnow()
    db.session.commit()
    return True


def token_owner(token: str) -> ApiToken | None:
    row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(token),
                                                   ApiToken.revoked_at.is_(None)))
    if row is not None and (row.last_used_at is None or utcnow() - row.last_used_at > timedelta(minutes=1)):
        row.last_used_at = utcnow()
        db.session.commit()
    return row


def groups() -> list[AccessGroup]:
    return list(db.session.scalars(select(AccessGroup).order_by(AccessGroup.name)))


def create_group(name: str, sections: list[str], can_change: bool) -> AccessGroup:
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise AdminError("unknown sections: " + ", ".join(unknown))
    group = AccessGroup(name=name, sections=list(sections), can_change=can_change)
    db.session.add(group)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise AdminError(f"a group named {name!r} already exists") from None
    return group


