"""Log in, log out, and the language picker."""
from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from core import admins
from core.extensions import db
from core.i18n import LANGUAGES

from . import bp, home_url


class LoginForm(FlaskForm):
    username = StringField(_l("User name"), validators=[DataRequired(), Length(max=64)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=1024)])


def _safe_next(target: str | None) -> str:
    if target and not urlsplit(target).netloc and target.startswith("/") and not target.startswith("//"):
        return target
    return home_url()


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(home_url())
    form = LoginForm()
    if form.validate_on_submit():
        try:
            admin = admins.authenticate(form.username.data, form.password.data, request.remote_addr or "")
        except admins.AdminError:
            flash(_("Too many failed logins. Wait a few minutes and try again."), "error")
            return render_template("login.html", form=form), 429
        if admin is None:
            flash(_("Wrong user name or password."), "error")
            return render_template("login.html", form=form), 401
        # A fresh session for the login: nothing from before it (a CSRF token planted with a cookie) carries
        # over; the language picked on the login page does.
        locale = session.get("locale")
        session.clear()
        if locale:
            session["locale"] = locale
        session.permanent = True
        session["login_at"] = time.time()
        login_user(admin)
        return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", form=form)


@bp.post("/logout")
def logout():
    """The panel's sessions live in a signed cookie: logging out ends every session of this admin (its
    session version moves on), so that a copy of the cookie stops working too."""
    if current_user.is_authenticated:
        admins.end_sessions(current_user)
    logout_user()
    session.clear()
    return redirect(url_for("panel.login"))


class LanguageForm(FlaskForm):
    pass


@bp.post("/language")
def language():
    form = LanguageForm()
    code = request.form.get("locale", "")
    if form.validate_on_submit() and code in LANGUAGES:
        session["locale"] = code
        if current_user.is_authenticated:
            current_user.locale = code
            db.session.commit()
    return redirect(_safe_next(request.form.get("next")))
