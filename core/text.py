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


def unstorable(value: Any) -> dict[str, str]:
    """Every string in a JSON value (object keys too) that cannot be stored, by its path (``a.b.0``). Walked
    without recursion: a value nested as deep as the JSON parser goes is walked too."""
    found: dict[str, str] = {}
    pending = [("", value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, str):
            reason = problem(item)
            if reason:
                found[where or "body"] = reason
        elif isinstance(item, dict):
            for key, inner in item.items():
                reason = problem(key) if isinstance(key, str) else None
                name = ascii(key)[1:-1] if reason else str(key)
                at = f"{where}.{name}" if where else name
                if reason:
                    found[at] = "the name " + reason
                pending.append((at, inner))
        elif isinstance(item, list):
            pending.extend((f"{where}.{index}" if where else str(index), inner) for index, inner in enumerate(item))
    return dict(sorted(found.items()))


def unstorable_fields(*multidicts) -> dict[str, str]:
    """unstorable() for form fields or query arguments (werkzeug MultiDicts), by the field's name: a field
    given more than once is named by the first of its values that cannot be stored."""
    found: dict[str, str] = {}
    for fields in multidicts:
        for key in fields:
            found.update(unstorable({key: next((v for v in fields.getlist(key) if problem(v)), "")}))
    return found
