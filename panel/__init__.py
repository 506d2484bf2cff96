"""The admin panel: server-rendered pages over the core services, behind a login and access groups."""
from __future__ import annotations

from functools import wraps
from typing import Callable

import time

from flask import (Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request, session,
                   url_for)
from flask_babel import gettext as _
from flask_login import current_user, logout_user

from core.text import unstorable_fields

bp = Blueprint("panel", __name__)
PUBLIC_ENDPOINTS = {"panel.login", "panel.language"}


def wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json" or request.headers.get("X-Requested-With") == \
        "fetch"


def login_expired() -> bool:
    """Whether the logged-in admin's login is older than PERMANENT_SESSION_LIFETIME. The cookie's own
    expiry moves with every request (VM Management polls every few seconds); the login time does not."""
    lifetime = current_app.permanent_session_lifetime.total_seconds()
    login_at = session.get("login_at")
    return not isinstance(login_at, (int, float)) or not 0 <= time.time() - login_at <= lifetime


@bp.before_request
def require_login():
    if current_user.is_authenticated and login_expired():
        logout_user()
        session.clear()
        flash(_("Your session has expired. Log in again."), "error")
    if request.endpoint in PUBLIC_ENDPOINTS or current_user.is_authenticated:
        return None
    if wants_json() or request.method != "GET":
        return jsonify(error="login required"), 401
    return redirect(url_for("panel.login", next=request.full_path if request.query_string else request.path))


@bp.before_request
def refuse_unstorable_text():
    """A form or query value no database column can hold (a NUL character, which no one types but a crafted
    request carries) is refused before any view stores it or searches with it: 400, nothing changed."""
    bad = unstorable_fields(request.args, *([request.form] if request.method != "GET" else []))
    if not bad:
        return None
    if wants_json():
        return jsonify(error="text that cannot be stored", errors=bad), 400
    return render_template("error.html", code=400, message=_(
        "What was sent holds a character that cannot be stored (a NUL): nothing was changed.")), 400


# Where each section starts, in the navigation's order.
SECTION_HOME = {"dashboard": "panel.dashboard", "ip_pools": "panel.pools", "dns_zones": "panel.dns_zones",
                "vms": "panel.vms", "products": "panel.products", "settings": "panel.settings_general"}


def home_url() -> str:
    """The first page the logged-in admin's access group may see (the dashboard for most, and for a group
    that may see nothing, whose every page is then a 403); the login page for nobody logged in."""
    if not current_user.is_authenticated:
        return url_for("panel.login")
    for name, endpoint in SECTION_HOME.items():
        if current_user.can_see(name):
            return url_for(endpoint)
    return url_for("panel.dashboard")


def section(name: str, change: bool = False) -> Callable:
    """Only admins whose access group includes the section (and, for changes, may change) get in."""
    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def guarded(*args, **kwargs):
            allowed = current_user.can_change(name) if change else current_user.can_see(name)
            if not allowed:
                home = home_url() if name == "dashboard" and request.method == "GET" else request.path
                if home != request.path:
                    return redirect(home)  # "/" is home: an admin without the dashboard starts elsewhere
                abort(403)
            return view(*args, **kwargs)
        guarded.section = name
        return guarded
    return decorate


from . import auth, views  # noqa: E402,F401 - registers the routes
