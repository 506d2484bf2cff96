"""The application factory. ``flask`` finds this file without FLASK_APP."""
from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from flask.cli import with_appcontext
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import configure_mappers

from core.config import Config, instance_secret
from core.extensions import babel, csrf, db, login, migrate


def _database_url(app: Flask) -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        # Plain scheme names pick the drivers we ship with.
        for plain, driver in (("postgres://", "postgresql+psycopg://"), ("postgresql://", "postgresql+psycopg://"),
                              ("mysql://", "mysql+pymysql://"), ("mariadb://", "mysql+pymysql://")):
            if url.startswith(plain):
                return driver + url[len(plain):]
        return url
    return "sqlite:///" + str(Path(app.instance_path) / "pkvm.sqlite3")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    instance_path = (config or {}).get("INSTANCE_PATH") or os.environ.get("PKVM_INSTANCE_PATH")
    app = Flask(__name__, instance_relative_config=True, instance_path=instance_path)
    app.config.from_object(Config)
    app.config.from_prefixed_env()  # FLASK_REDIS_URL, FLASK_TICKER_SECONDS, ...
    app.config.from_prefixed_env("PKVM")
    if os.environ.get("REDIS_URL") and not app.config.get("REDIS_URL"):
        app.config["REDIS_URL"] = os.environ["REDIS_URL"]
    if config:
        app.config.update(config)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        app.config["SQLALCHEMY_DATABASE_URI"] = _database_url(app)
    options = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
    # A database error's message leaves the statement's parameters out: they would carry customers' data
    # into the logs (and into RQ's stored tracebacks).
    options.setdefault("hide_parameters", True)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # Many threads and processes write at once: wait for the lock instead of failing.
        options.setdefault("connect_args", {"timeout": 60, "check_same_thread": False})
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    for key, name in (("SECRET_KEY", "secret_key"), ("DATA_KEY", "data_key"), ("BRIDGE_SECRET", "bridge_secret")):
        if not app.config.get(key):
            app.config[key] = instance_secret(app.instance_path, name)

    db.init_app(app)
    migrate.init_app(app, db, directory=str(Path(__file__).parent / "migrations"), render_as_batch=True,
                     compare_type=True)
    csrf.init_app(app)
    _init_panel_support(app)

    from bridge import bp as bridge_bp
    app.register_blueprint(bridge_bp)
    csrf.exempt(bridge_bp)  # the bridge authenticates every call with its own HMAC signature
    app.session_interface = PanelSessions()
    from bridge.legacy import legacy
    app.register_blueprint(legacy)

    from panel import bp as panel_bp
    from panel.api import api as api_bp
    from panel.api import json_for_unrouted
    app.register_blueprint(panel_bp)
    app.register_blueprint(api_bp)
    json_for_unrouted(app)
    csrf.exempt(api_bp)  # bearer tokens, no cookies: nothing for a cross-site request to ride on
    app.add_url_rule("/healthz", "healthz", _healthz)

    from bridge.cli import bridge_cli
    from demo.cli import demo_command
    from jobs.cli import cron_command
    from panel.cli import admin_cli, pool_cli, product_cli, translate_cli
    app.cli.add_command(bridge_cli)
    app.cli.add_command(cron_command)
    app.cli.add_command(demo_command)
    app.cli.add_command(serve_command)
    app.cli.add_command(product_cli)
    app.cli.add_command(pool_cli)
    app.cli.add_command(admin_cli)
    app.cli.add_command(translate_cli)

    proxies = int(app.config.get("TRUSTED_PROXIES") or 0)
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)

    logging.getLogger("pkvm").setLevel(app.config.get("LOG_LEVEL", "INFO"))
    import core.models  # noqa: F401
    configure_mappers()  # once, here, rather than inside the first request of every worker process
    if not app.testing:
        # What start-up built (modules, the app, the mappers, the catalogs) lives as long as the process: out of
        # the garbage collector's sight, so that its full collections, which a large page or a burst of calls
        # sets off, no longer walk all of it (a 200-row VM page: p95 about 100 ms -> 45 ms here).
        gc.collect()
        gc.freeze()
    return app


def _healthz():
    """For a load balancer or a monitor, no login: 200 when calls are taken and worked off ("ok") or taken
    but not worked off ("degraded": no tick lately, no worker), 503 when they cannot be taken ("down": the
    database or Redis does not answer). Counts and times only, nothing secret."""
    from flask import jsonify

    from core.health import health, verdict
    report = health()
    status = verdict(report)
    last_tick = report["last_tick"]
    return jsonify(status=status, database=report["database"], mode=report["mode"], redis=report["redis"],
                   workers=report["workers"], workers_dead=report["workers_dead"], tick_late=report["tick_late"],
                   clock_skew=report["clock_skew"],
                   last_tick=last_tick.isoformat() if last_tick else None), 503 if status == "down" else 200


def _init_panel_support(app: Flask) -> None:
    """Logins, languages and what every template needs."""
    from core.admins import load_admin
    from core.i18n import LANGUAGES, direction, select_locale

    app.config.setdefault("BABEL_TRANSLATION_DIRECTORIES", str(Path(__file__).parent / "translations"))
    babel.init_app(app, locale_selector=select_locale)
    login.init_app(app)
    login.user_loader(load_admin)
    login.session_protection = "strong"

    @app.before_request
    def ids_within_the_database_range():
        """An id no column can hold (beyond 32-bit) names nothing: 404, not a database overflow."""
        from flask import abort, request
        for value in (request.view_args or {}).values():
            if isinstance(value, int) and not 0 <= value <= 2**31 - 1:
                abort(404)

    @app.template_filter("parse_iso")
    def parse_iso(value: str):
        from datetime import datetime
        return datetime.fromisoformat(value)

    @app.template_filter("translated")
    def translated(value: str) -> str:
        """A stored English text the catalogs know (a step's label) in the admin's language: a plain
        string, which the template escapes (Jinja's _() would mark it safe)."""
        from flask_babel import gettext
        return gettext(value) if value else ""

    @app.context_processor
    def globals_for_templates():
        from flask_babel import get_locale
        locale = str(get_locale() or "en")
        from flask import request
        view = app.view_functions.get(request.endpoint or "")
        return {"LANGUAGES": LANGUAGES, "current_locale": locale, "text_direction": direction(locale),
                "active_section": getattr(view, "section", None)}


class PanelSessions(SecureCookieSessionInterface):
    """The panel's signed-cookie sessions. The bridge has none: a WHMCS call is authenticated by its signature
    alone, so no cookie is read for it (one may not stand in for a signature) and none is ever set. Nor has
    the health check, which anyone may ask."""

    def open_session(self, app: Flask, request):
        if request.path.startswith("/bridge/") or request.path == "/healthz":
            return self.make_null_session(app)
        return super().open_session(app, request)


def print_progress() -> None:
    """Send the product's log lines (a worker's or the in-process ticker's cron output and pipeline steps,
    in the original's format, warnings) to standard output, once per process. Without it Python drops
    everything below a warning: a worker would run silently."""
    logger = logging.getLogger("pkvm")
    if not any(getattr(handler, "pkvm_progress", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.pkvm_progress = True
        logger.addHandler(handler)
        logger.propagate = False  # once, in the original's format (not again through a root handler)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@with_appcontext
def serve_command(host: str, port: int) -> None:
    """Bring the database schema up to date, then serve the panel and the bridge; without REDIS_URL an
    in-process ticker runs the cron tasks and the VM pipelines."""
    from flask import current_app
    from flask_migrate import upgrade
    from werkzeug.serving import run_simple

    from jobs.ticker import Ticker

    app = current_app._get_current_object()
    upgrade()
    if not app.config.get("REDIS_URL") and app.config["TICKER_SECONDS"]:
        print_progress()
        Ticker(app).start()
        click.echo("In-process ticker started (no REDIS_URL set)")
    click.echo(f"Serving on http://{host}:{port}/")
    run_simple(host, port, app, threaded=True, use_reloader=False)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record):  # pragma: no cover - per-connection setup
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL syncs at checkpoints rather than on every commit: no corruption on a crash,
        # at most the last commits lost on a power cut; the default FULL costs an fsync per commit.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()
