"""Module settings: one typed table of every setting with its default and allowed range.

Values live in the ``settings`` table; anything not stored reads as its default. Secret settings are
sealed at rest and never returned by ``public()``.
"""
from __future__ import annotations

import ipaddress
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator

from sqlalchemy import bindparam, select

from flask_babel import lazy_gettext as _l

from .extensions import db
from .models import Setting
from .vault import seal, unseal


@dataclass(frozen=True)
class Spec:
    default: Any
    kind: type
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] | None = None
    secret: bool = False
    url: bool = False  # empty, or an http:// or https:// address
    # A secret setting: the settings that say where it is sent. Changing one of them needs the secret typed
    # again, so that nobody can have the stored secret sent to an address of their choosing.
    sent_to: tuple[str, ...] = ()


# Cron task intervals are minutes; 0 disables a task (seed 002, "Cron Settings").
TASK_DEFAULTS = {
    "processVirtualMachines": 1,
    "removeOldSnapshots": 5,
    "restoreBackupStatus": 1,
    "nowBackupStatus": 1,
    "scheduleBackup": 5,
    "collectingStatistics": 60,
}

# Title and description of each cron task (seed 002, "Cron Settings").
TASK_INFO = {
    "processVirtualMachines": (_l("Process Virtual Machines"), _l(
        "Continues VM provisioning (deploy, clone, set IP, CPU/RAM, disk, network, cloudinit). Also handles "
        "package changes and DNS record updates for VMs not yet in \"ready\" state.")),
    "removeOldSnapshots": (_l("Remove Old Snapshots"), _l(
        "Removes snapshots that have exceeded their configured lifetime. Only processes VMs with existing "
        "snapshots.")),
    "restoreBackupStatus": (_l("Restore Backup Status"), _l(
        "Monitors progress of backup restore operations. Sends confirmation email when restore completes "
        "successfully.")),
    "nowBackupStatus": (_l("Now Backup Status"), _l(
        "Monitors progress of on-demand backup operations. Clears tracking when backup completes or fails.")),
    "scheduleBackup": (_l("Schedule Backup"), _l(
        "Triggers scheduled backups based on per-VM daytime configuration. Automatically rotates old backups "
        "when limit is reached.")),
    "collectingStatistics": (_l("Collecting Statistics"), _l(
        "Collects network traffic statistics (in/out) from Proxmox RRD data. Runs once per hour per VM. "
        "Auto-cleans records older than 35 days.")),
}

SPECS: dict[str, Spec] = {
    "api_timeout": Spec(10, int, 1, 300),
    "api_heavy_timeout": Spec(60, int, 1, 600),
    "migration_enabled": Spec(True, bool),
    "migration_timeout": Spec(300, int, 1, 3600),
    "delete_data_on_uninstall": Spec(False, bool),
    "cron_mode": Spec("hook", str, choices=("hook", "standalone")),
    "cron_lock_timeout": Spec(600, int, 10, 86400),
    "whmcs_api_url": Spec("", str, url=True),
    "whmcs_admin_url": Spec("", str, url=True),
    "whmcs_api_identifier": Spec("", str),
    "whmcs_api_secret": Spec("", str, secret=True, sent_to=("whmcs_api_url", "whmcs_api_identifier")),
    "dns_json_allowlist": Spec("", str),
    **{f"interval_{name}": Spec(minutes, int, 0, 10080) for name, minutes in TASK_DEFAULTS.items()},
}


class SettingError(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def coerce(key: str, value: Any) -> Any:
    """The value as the setting's type, within its range; raises SettingError."""
    spec = SPECS.get(key)
    if spec is None:
        raise SettingError({key: _l("Unknown setting.")})
    try:
        if value is None or isinstance(value, (list, dict)):
            raise ValueError
        if spec.kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
                    raise ValueError
                value = value.lower() in ("1", "true", "yes", "on")
            else:
                value = bool(value)
        elif spec.kind is int:
            if isinstance(value, bool):
                raise ValueError
            value = int(str(value).strip())
        else:
            value = "" if value is None else str(value).strip()
    except ValueError:
        kind = {bool: _l("Must be yes or no."), int: _l("Must be a whole number.")}.get(spec.kind, _l("Invalid value."))
        raise SettingError({key: kind}) from None
    if spec.minimum is not None and value < spec.minimum or spec.maximum is not None and value > spec.maximum:
        raise SettingError({key: _l("Must be between %(min)s and %(max)s.", min=spec.minimum, max=spec.maximum)})
    if spec.url and value and not _is_web_address(value):
        raise SettingError({key: _l("Must be an http:// or https:// address.")})
    if spec.choices and value not in spec.choices:
        raise SettingError({key: _l("Must be one of: %(choices)s.", choices=", ".join(spec.choices))})
    if key == "dns_json_allowlist":
        wrong = [item for item in value.replace(",", " ").split() if not _is_network(item)]
        if wrong:
            raise SettingError({key: _l("Not an IP address or network: %(list)s.", list=", ".join(wrong[:5]))})
    return value


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


# An http(s) address with a host, no spaces; WEB_ADDRESS_PATTERN is the same rule for the API's schema
# (which also allows the empty value and the spaces around a value that coerce() strips).
WEB_ADDRESS = re.compile(r"https?://[^\s/?#]+(?:[/?#]\S*)?")
WEB_ADDRESS_PATTERN = r"^\s*(?:" + WEB_ADDRESS.pattern + r")?\s*$"


def _is_web_address(value: str) -> bool:
    return WEB_ADDRESS.fullmatch(value) is not None


# The stored values read once for a stretch of work (a VM's pipeline pass), in this thread only.
_snapshot: ContextVar[dict[str, Any] | None] = ContextVar("pkvm_settings_snapshot", default=None)


@contextmanager
def snapshot() -> Iterator[None]:
    """Within the block, get() answers from the values as they were when it began (one query instead of
    one per call); a change saved meanwhile applies to the next block."""
    token = _snapshot.set({row.key: row.value for row in db.session.scalars(select(Setting))})
    try:
        yield
    finally:
        _snapshot.reset(token)


_VALUE = select(Setting.__table__.c.value).where(Setting.__table__.c.key == bindparam("key"))


def get(key: str, connection=None) -> Any:
    """A setting's value (its default when unset). ``connection``: read it in that connection's transaction
    rather than through the session (a caller that has one open saves the session its own)."""
    spec = SPECS[key]
    stored = _snapshot.get()
    if stored is not None:
        value = stored.get(key)
    elif connection is not None:
        value = connection.execute(_VALUE, {"key": key}).scalar()
    else:
        row = db.session.get(Setting, key)
        value = None if row is None else row.value
    if value is None:
        return spec.default
    return unseal(value) if spec.secret else value


def update(values: dict[str, Any]) -> None:
    """Validate every value first, then store them all (nothing is written if one is wrong).

    A secret given as "" or None keeps its stored value."""
    errors, clean = {}, {}
    for key, value in values.items():
        spec = SPECS.get(key)
        if spec is not None and spec.secret and value in ("", None):
            continue
        try:
            clean[key] = coerce(key, value)
        except SettingError as exc:
            errors.update(exc.errors)
    for key, spec in SPECS.items():
        moved = [name for name in spec.sent_to if name in clean and clean[name] != get(name)]
        if moved and key not in clean and get(key):
            errors[key] = _l("Enter the secret again: where it is sent has changed.")
    if errors:
        raise SettingError(errors)
    for key, value in clean.items():
        stored = seal(value) if SPECS[key].secret else value
        row = db.session.get(Setting, key)
        if row is None:
            db.session.add(Setting(key=key, value=stored))
        else:
            row.value = stored
    db.session.commit()


def public() -> dict[str, Any]:
    """Every setting for display: secrets only say whether they are set."""
    out = {}
    for key, spec in SPECS.items():
        if spec.secret:
            out[key] = {"set": bool(get(key))}
        else:
            out[key] = get(key)
    return out
