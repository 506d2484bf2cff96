"""The 25 catalogs: messages.pot is up to date with the code, and no catalog misses a msgid, has an empty
or fuzzy entry, or breaks a placeholder; right-to-left languages render right to left."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from babel.messages.pofile import read_po

from core.i18n import LANGUAGES, RTL
from core.i18n_check import check_catalogs

ROOT = Path(__file__).resolve().parent.parent


def test_twenty_five_languages_three_of_them_right_to_left():
    assert len(LANGUAGES) == 25 and RTL == {"ar", "he", "fa"}
    assert {p.parent.parent.name for p in (ROOT / "translations").glob("*/LC_MESSAGES/messages.po")} == set(LANGUAGES)


def test_messages_pot_is_up_to_date(tmp_path):
    fresh = tmp_path / "fresh.pot"
    from panel.cli import EXTRACT_KEYWORDS
    keywords = [arg for keyword in EXTRACT_KEYWORDS for arg in ("-k", keyword)]
    subprocess.run([sys.executable, "-m", "babel.messages.frontend", "extract", "-F", "babel.cfg", *keywords,
                    "--no-location", "--omit-header", "-o", str(fresh), "."],
                   cwd=ROOT, check=True, capture_output=True)
    with open(fresh, "rb") as fh:
        wanted = {m.id if isinstance(m.id, str) else m.id[0] for m in read_po(fh) if m.id}
    with open(ROOT / "translations" / "messages.pot", "rb") as fh:
        committed = {m.id if isinstance(m.id, str) else m.id[0] for m in read_po(fh) if m.id}
    assert wanted - committed == set(), "run: flask translate extract && flask translate update, then translate"
    assert committed - wanted == set(), "messages.pot holds strings the code no longer has: flask translate extract"


def test_every_catalog_is_complete():
    problems = check_catalogs(ROOT / "translations")
    assert problems == [], "\n".join(problems[:50])


def test_check_catches_what_it_should(tmp_path):
    import shutil
    folder = tmp_path / "translations"
    shutil.copytree(ROOT / "translations", folder)
    po = folder / "de" / "LC_MESSAGES" / "messages.po"
    text = po.read_text(encoding="utf-8")
    text = text.replace('msgstr "IP-Pool hinzugefügt."', 'msgstr ""', 1)
    import re
    text = re.sub(r'(msgid "Log out %\(name\)s"\nmsgstr ")[^"]*(")', r"\1Abmelden %(nom)s\2", text)
    po.write_text(text, encoding="utf-8")
    problems = check_catalogs(folder)
    assert any(p.startswith("de: placeholders of 'Log out %(name)s'") for p in problems), problems
    assert "de: empty 'IP pool added.'" in problems


def test_compile_says_one_line_unless_asked_for_more(app):
    """The README's first command compiles the catalogs: one line, not fifty (found in a fresh-clone run)."""
    quiet = app.test_cli_runner().invoke(args=["translate", "compile"])
    assert quiet.exit_code == 0 and quiet.output.strip() == "25 catalogs compiled"
