"""The admin panel: server-rendered pages over the core services, behind a login and access groups."""
from __future__ import annotations

from functools import wraps
from typing import Callable

from flask import Blueprint, abort, jsonify, redirect, request, url_for
from flask_login import current_user

bp = Blueprint("panel", __name__)
PUBLIC_ENDPOINTS = {"panel.login", "panel.language"}


def wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json" or request.headers.get("X-Requested-With") == \
        "fetch"


@bp.before_request
def require_login():
    if request.endpoint in PUBLIC_ENDPOINTS or current_user.is_authenticated:
        return None
    if wants_json() or request.method != "GET":
        return jsonify(error="login required"), 401
    return redirect(url_for("panel.login", next=request.full_path if request.query_string else request.path))


def section(name: str, change: bool = False) -> Callable:
    """Only admins whose access group includes the section (and, for changes, may change) get in."""
    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def guarded(*args, **kwargs):
            allowed = current_user.can_change(name) if change else current_user.can_see(name)
            if not allowed:
                abort(403)
            return view(*args, **kwargs)
        guarded.section = name
        return guarded
    return decorate


from . import auth, views  # noqa: E402,F401 - registers the routes
