"""The catalog check behind ``flask translate check`` and its test."""
from __future__ import annotations

import re
from pathlib import Path

from babel.messages.pofile import read_po

from .i18n import LANGUAGES

PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]|%[sd]|\{\w*\}")


def _placeholders(text: str) -> list[str]:
    return sorted(PLACEHOLDER.findall(text) and [m.group(0) for m in PLACEHOLDER.finditer(text)])


def check_catalogs(folder: Path) -> list[str]:
    with open(folder / "messages.pot", "rb") as fh:
        template = read_po(fh)
    wanted = {m.id for m in template if m.id}
    problems: list[str] = []
    for code in LANGUAGES:
        path = folder / code / "LC_MESSAGES" / "messages.po"
        if not path.exists():
            problems.append(f"{code}: catalog missing")
            continue
        with open(path, "rb") as fh:
            catalog = read_po(fh, locale=code)
        have = {m.id: m for m in catalog if m.id}
        for msgid in sorted(wanted - set(have)):
            problems.append(f"{code}: missing {msgid!r}")
        for msgid, message in have.items():
            if msgid not in wanted:
                continue
            texts = message.string if isinstance(message.string, (list, tuple)) else [message.string]
            ids = msgid if isinstance(msgid, (list, tuple)) else [msgid]
            if message.fuzzy:
                problems.append(f"{code}: fuzzy {ids[0]!r}")
            if any(not t or not t.strip() for t in texts):
                problems.append(f"{code}: empty {ids[0]!r}")
                continue
            expected = _placeholders(ids[-1])
            for text in texts:
                if _placeholders(text) != expected:
                    problems.append(f"{code}: placeholders of {ids[0]!r} are {expected}, translation has "
                                    f"{_placeholders(text)}")
    return problems
