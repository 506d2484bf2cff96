"""Text that no database column can hold: a NUL character (PostgreSQL's text types refuse it) or one half of a
UTF-16 surrogate pair (a lone ``"\\ud800"`` in JSON, which no UTF-8 encodes). Input carrying either is
refused field by field before anything is written, rather than fail in the database with a 500."""
from __future__ import annotations

from typing import Any


def problem(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None."""
    if "\x00" in text:
        return "must not contain a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid text (it holds half of a UTF-16 surrogate pair)"
    return None


def unstorable(value: Any, path: str = "") -> dict[str, str]:
    """Every string in a JSON value (object keys too) that cannot be stored, by its path (``a.b.0``)."""
    found: dict[str, str] = {}
    if isinstance(value, str):
        reason = problem(value)
        if reason:
            found[path or "body"] = reason
    elif isinstance(value, dict):
        for key, item in value.items():
            name = ascii(key)[1:-1] if isinstance(key, str) and problem(key) else str(key)
            where = f"{path}.{name}" if path else name
            if isinstance(key, str) and problem(key):
                found[where] = "the name " + problem(key)
            found.update(unstorable(item, where))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.update(unstorable(item, f"{path}.{index}" if path else str(index)))
    return found


def unstorable_fields(*multidicts) -> dict[str, str]:
    """unstorable() for form fields or query arguments (werkzeug MultiDicts), by the field's name."""
    found: dict[str, str] = {}
    for fields in multidicts:
        for key in fields:
            reason = problem(key)
            if reason:
                found[ascii(key)[1:-1]] = "the name " + reason
                continue
            reason = next(filter(None, map(problem, fields.getlist(key))), None)
            if reason:
                found[key] = reason
    return found
