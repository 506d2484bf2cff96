"""The database server's clock, as this process sees it: leases, the cron lock and next runs are written by
several machines and compared by others, so they all take their time from one clock, the database's.

Each process measures its offset to the database server (one query) and measures it again every few
minutes; ``now()`` is this machine's time plus that offset. SQLite has no server: the offset is 0.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from sqlalchemy import text

REMEASURE_SECONDS = 300
_DB_EPOCH = {"postgresql": "SELECT EXTRACT(EPOCH FROM clock_timestamp())",
             "mysql": "SELECT UNIX_TIMESTAMP(NOW(6))", "mariadb": "SELECT UNIX_TIMESTAMP(NOW(6))"}
_offsets: dict[str, tuple[float, float]] = {}  # database URL -> (offset seconds, when measured: monotonic)
_lock = threading.Lock()


def skew() -> float | None:
    """The database server's clock minus this machine's, in seconds, measured now (None on SQLite)."""
    from .extensions import db
    query = _DB_EPOCH.get(db.engine.dialect.name)
    if query is None:
        return None
    with db.engine.connect() as connection:  # its own connection: no transaction of the caller's is touched
        before = time.time()
        theirs = float(connection.execute(text(query)).scalar())
        after = time.time()
    return theirs - (before + after) / 2


def offset() -> float:
    """The offset to add to this machine's time, measured at most REMEASURE_SECONDS ago; 0 without an app
    context, on SQLite, or when the database cannot be asked (the last measurement is kept then)."""
    from flask import has_app_context
    if not has_app_context():
        return 0.0
    from .extensions import db
    key = str(db.engine.url)
    with _lock:
        known = _offsets.get(key)
        if known is not None and time.monotonic() - known[1] < REMEASURE_SECONDS:
            return known[0]
    try:
        measured = skew() or 0.0
    except Exception:  # noqa: BLE001 - a database that does not answer fails the caller's own query anyway
        return known[0] if known else 0.0
    with _lock:
        _offsets[key] = (measured, time.monotonic())
    return measured


def forget() -> None:
    """Measure again at the next now() (tests, or after the machine's clock was set)."""
    with _lock:
        _offsets.clear()


def now() -> datetime:
    """The database server's time, as naive UTC (as the datetime columns keep it)."""
    return datetime.fromtimestamp(time.time() + offset(), timezone.utc).replace(tzinfo=None)
