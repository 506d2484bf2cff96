"""The 25 languages of the original, which are written right to left, and how a request picks one."""
from __future__ import annotations

from flask import has_request_context, request, session
from flask_login import current_user

LANGUAGES: dict[str, str] = {
    "ar": "العربية", "az": "Azərbaycan dili", "ca": "Català", "zh": "中文", "hr": "Hrvatski",
    "cs": "Čeština", "da": "Dansk", "nl": "Nederlands", "en": "English", "et": "Eesti", "fa": "فارسی",
    "fr": "Français", "de": "Deutsch", "he": "עברית", "hu": "Magyar", "it": "Italiano", "mk": "Македонски",
    "nb": "Norsk bokmål", "pl": "Polski", "ro": "Română", "ru": "Русский", "es": "Español", "sv": "Svenska",
    "tr": "Türkçe", "uk": "Українська",
}
RTL = frozenset({"ar", "he", "fa"})
# What browsers send for the languages whose codes differ from ours.
ALIASES = {"no": "nb", "nn": "nb", "zh-cn": "zh", "zh-hans": "zh", "zh-tw": "zh", "iw": "he"}


def select_locale() -> str:
    """The admin's own choice, else the one picked on the login page, else the browser's, else English
    (also for the command line and the workers, which have no request)."""
    if not has_request_context():
        return "en"
    chosen = getattr(current_user, "locale", None) if getattr(current_user, "is_authenticated", False) else None
    chosen = chosen or session.get("locale")
    if chosen in LANGUAGES:
        return chosen
    for value, _quality in request.accept_languages:
        code = ALIASES.get(value.lower(), value.lower())
        if code in LANGUAGES:
            return code
        if code.split("-")[0] in LANGUAGES:
            return code.split("-")[0]
    return "en"


def direction(locale: str) -> str:
    return "rtl" if str(locale).split("_")[0] in RTL else "ltr"
