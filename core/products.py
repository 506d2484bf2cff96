"""Product module settings: every field with its default, their validation, and the package a service gets.

A product works with no configurable options at all: every resource has a default here (seed 001, v3.3
"Module Settings defaults"). ``resolve_package`` is the one place where a service's configurable options
will override these values (deploy, change package, reinstall and backup restore all call it).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from typing import Any

from flask_babel import lazy_gettext as _l

from .dns.names import is_host_name

BRIDGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")
NODE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
STORAGE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
OS_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # a Linux user name, as cloud-init creates it
FIREWALL_POLICIES = ("ACCEPT", "REJECT", "DROP")
LOG_LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug", "nolog")
NET_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3")


@dataclass(frozen=True)
class ProductSettings:
    # VM
    template_vmid: int = 0
    template_node: str = ""
    target_node: str = ""  # "" = automatic: a node with the storage and the most free RAM
    clone_mode: str = "full"  # full or linked
    cpu_cores: int = 1
    cpu_sockets: int = 1
    ram_mb: int = 1024
    backups: int = 0
    snapshots: int = 0
    vm_name_prefix: str = "vps"
    vm_name_rule: str = "{prefix}-{client_id}-{service_id}"
    first_vmid: int = 100
    os_username: str = "root"
    # Storage
    system_disk_storage: str = "local-lvm"
    system_disk_gb: int = 10
    system_disk_mbps_rd: int = 0
    system_disk_mbps_wr: int = 0
    system_disk_iops_rd: int = 0
    system_disk_iops_wr: int = 0
    additional_disk_storage: str = ""
    additional_disk_gb: int = 0
    additional_disk_mbps_rd: int = 0
    additional_disk_mbps_wr: int = 0
    additional_disk_iops_rd: int = 0
    additional_disk_iops_wr: int = 0
    # Network
    auto_bridge_vlan: bool = True  # take bridge and VLAN from the IP pool the main address came from
    network_bridge: str = "vmbr0"
    network_vlan: int = 0
    network_model: str = "virtio"
    network_rate_mbs: int = 0  # MB/s, 0 = unlimited
    ipv4_count: int = 1
    ipv6_count: int = 0
    dhcp: bool = False
    # Integrations
    main_domain: str = ""
    # Firewall
    firewall_enable: bool = True
    firewall_dhcp: bool = True
    firewall_ndp: bool = True
    firewall_macfilter: bool = True
    firewall_ipfilter: bool = True
    firewall_log_level_in: str = "nolog"
    firewall_log_level_out: str = "nolog"
    firewall_policy_in: str = "ACCEPT"
    firewall_policy_out: str = "ACCEPT"
    # Email templates (WHMCS template names; "" sends nothing)
    email_welcome: str = "puqProxmoxKVM Welcome Email"
    email_vm_ready: str = "puqProxmoxKVM VM Ready"
    email_upgrade: str = "puqProxmoxKVM Upgrade Email"
    email_reset_password: str = "puqProxmoxKVM Reset Password"

    @classmethod
    def from_stored(cls, stored: dict[str, Any] | None) -> "ProductSettings":
        """Stored settings over the defaults; unknown keys are ignored, bad values fall back to defaults.
        (Read on every bridge call and pipeline step: the result is remembered per stored value.)"""
        try:
            return _from_stored(cls, tuple(sorted((stored or {}).items())))
        except TypeError:  # a value that cannot be a key (a list): nothing to remember, it is ignored anyway
            return _from_stored.__wrapped__(cls, tuple((stored or {}).items()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@lru_cache(maxsize=256)
def _from_stored(cls: type[ProductSettings], items: tuple[tuple[str, Any], ...]) -> ProductSettings:
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in items:
        if key in known:
            try:
                values[key] = _coerce(known[key].type, value)
            except ValueError:
                continue
    return cls(**values)


class ProductSettingsError(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _coerce(type_name: Any, value: Any) -> Any:
    if isinstance(value, (list, dict)):
        raise ValueError(value)
    kind = {"int": int, "str": str, "bool": bool}.get(type_name, type_name)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(str(int(value)) if isinstance(value, float) else str(value).strip() or 0)
    return "" if value is None else str(value).strip()


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """Check a full or partial set of module settings; returns them coerced, or raises with every error."""
    known = {f.name: f for f in fields(ProductSettings)}
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            errors[key] = _l("Unknown setting.")
            continue
        try:
            clean[key] = _coerce(known[key].type, value)
        except ValueError:
            errors[key] = _l("Must be a whole number.") if known[key].type == "int" else _l("Invalid value.")
    for key in ("template_vmid", "first_vmid"):
        if key in clean and not (0 <= clean[key] <= 999_999_999):
            errors[key] = _l("Must be between %(min)s and %(max)s.", min=0, max=999999999)
    if clean.get("first_vmid", 100) < 100:
        errors["first_vmid"] = _l("Must be at least 100 (Proxmox reserves lower IDs).")
    if 0 < clean.get("template_vmid", 0) < 100:  # 0: not set yet
        errors["template_vmid"] = _l("Must be at least 100 (Proxmox reserves lower IDs).")
    for key in ("ipv4_count", "ipv6_count"):  # what one VM can sensibly be given at once
        if key in clean and not 0 <= clean[key] <= 256:
            errors[key] = _l("Must be between %(min)s and %(max)s.", min=0, max=256)
    for key in ("cpu_cores", "cpu_sockets"):
        if key in clean and not 1 <= clean[key] <= 512:
            errors[key] = _l("Must be between %(min)s and %(max)s.", min=1, max=512)
    if "ram_mb" in clean and not 16 <= clean["ram_mb"] <= 16 * 1024 * 1024:
        errors["ram_mb"] = _l("Must be between %(min)s and %(max)s.", min=16, max=16777216)
    for key, value in clean.items():
        if known[key].type == "int" and value < 0 and key not in errors:
            errors[key] = _l("Must not be negative.")
        elif known[key].type == "int" and value > 2**31 - 1 and key not in errors:
            errors[key] = _l("Must be between %(min)s and %(max)s.", min=0, max=2**31 - 1)
    if clean.get("clone_mode", "full") not in ("full", "linked"):
        errors["clone_mode"] = _l("Must be one of: %(choices)s.", choices="full, linked")
    for key in ("template_node", "target_node"):
        if clean.get(key) and not NODE_NAME.match(clean[key]):
            errors[key] = _l("Not a valid node name.")
    for key in ("system_disk_storage", "additional_disk_storage"):
        if clean.get(key) and not STORAGE_ID.match(clean[key]):
            errors[key] = _l("Not a valid storage ID.")
    if clean.get("network_bridge") and not BRIDGE_NAME.match(clean["network_bridge"]):
        errors["network_bridge"] = _l("Not a valid bridge name (for example vmbr0).")
    if "network_vlan" in clean and not 0 <= clean["network_vlan"] <= 4094:
        errors["network_vlan"] = _l("VLAN must be between 0 (untagged) and 4094.")
    if clean.get("network_model", "virtio") not in NET_MODELS:
        errors["network_model"] = _l("Must be one of: %(choices)s.", choices=", ".join(NET_MODELS))
    for key in ("firewall_policy_in", "firewall_policy_out"):
        if clean.get(key, "ACCEPT") not in FIREWALL_POLICIES:
            errors[key] = _l("Must be one of: %(choices)s.", choices=", ".join(FIREWALL_POLICIES))
    for key in ("firewall_log_level_in", "firewall_log_level_out"):
        if clean.get(key, "nolog") not in LOG_LEVELS:
            errors[key] = _l("Must be one of: %(choices)s.", choices=", ".join(LOG_LEVELS))
    if clean.get("main_domain") and not (is_host_name(clean["main_domain"]) and
                                         re.match(r"^[A-Za-z0-9]", clean["main_domain"])):
        errors["main_domain"] = _l("Not a valid domain name.")
    if clean.get("os_username") and not OS_USER.match(clean["os_username"]):  # "": the service's username
        errors["os_username"] = _l("Not a valid user name: lower-case letters, digits, '_' and '-', at most 32, "
                                   "starting with a letter or '_'.")
    for key in ("vm_name_prefix", "vm_name_rule", "email_welcome", "email_vm_ready", "email_upgrade",
                "email_reset_password"):
        if len(clean.get(key, "")) > 255 and key not in errors:
            errors[key] = _l("At most %(count)s characters.", count=255)
    if errors:
        raise ProductSettingsError(errors)
    return clean


@dataclass(frozen=True)
class Package:
    """What one service gets: the product's settings with the service's configurable options applied."""

    settings: ProductSettings
    options: tuple[str, ...] = ()  # which settings came from configurable options

    def __getattr__(self, name: str) -> Any:
        return getattr(self.settings, name)


class PackageError(ValueError):
    """A configurable option's value cannot be read; the message names the option and the value."""


# The 18 configurable options of v3.3 (plain names) and the legacy prefixes, with the setting each sets
# and how its value reads.
OPTIONS: dict[str, tuple[str, str]] = {
    "cpu cores": ("cpu_cores", "count"), "ram": ("ram_mb", "mb"),
    "system disk": ("system_disk_gb", "gb"), "additional disk": ("additional_disk_gb", "gb"),
    "system disk read bandwidth": ("system_disk_mbps_rd", "rate"),
    "system disk write bandwidth": ("system_disk_mbps_wr", "rate"),
    "system disk read iops": ("system_disk_iops_rd", "count"),
    "system disk write iops": ("system_disk_iops_wr", "count"),
    "additional disk read bandwidth": ("additional_disk_mbps_rd", "rate"),
    "additional disk write bandwidth": ("additional_disk_mbps_wr", "rate"),
    "additional disk read iops": ("additional_disk_iops_rd", "count"),
    "additional disk write iops": ("additional_disk_iops_wr", "count"),
    "network bandwidth": ("network_rate_mbs", "rate"), "ipv4 addresses": ("ipv4_count", "count"),
    "ipv6 addresses": ("ipv6_count", "count"), "backups": ("backups", "count"), "snapshots": ("snapshots", "count"),
    "operating system": ("template_vmid", "count"),
}
LEGACY = {"b": "backups", "s": "snapshots", "cpu": "cpu cores", "ram": "ram", "ipv4": "ipv4 addresses",
          "ipv6": "ipv6 addresses", "os": "operating system"}
_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z/]*)\s*$", re.I)
# Bandwidths are MB/s to Proxmox; an option may name megabits (100 Mbps: 12.5, rounded to 13 MB/s).
RATE_UNITS = {"": 1, "mb/s": 1, "mbyte/s": 1, "gb/s": 1024, "mbps": 1 / 8, "mbit": 1 / 8, "mbit/s": 1 / 8,
              "gbps": 125, "gbit": 125, "gbit/s": 125}
# The least a resource can be: Proxmox refuses 0 cores, less than 16 MB of memory, a VMID under 100.
MINIMUM = {"cpu_cores": 1, "ram_mb": 16, "system_disk_gb": 1, "template_vmid": 100}


def _read(name: str, value: Any, kind: str) -> int:
    """An option value as a number: WHMCS sends the sub-option's name (``4``, ``2 GB``, ``2048 MB``) or,
    for quantity options, the quantity."""
    text = str(value).split("|")[0] if value is not None else ""
    found = _UNIT.match(text)
    if not found:
        raise PackageError(f"configurable option {name!r}: cannot read {text!r} as a number")
    number, unit = float(found.group(1)), found.group(2).lower()
    if kind == "mb":
        factor = {"": 1, "m": 1, "mb": 1, "mib": 1, "g": 1024, "gb": 1024, "gib": 1024}.get(unit)
    elif kind == "gb":
        factor = {"": 1, "g": 1, "gb": 1, "gib": 1, "t": 1024, "tb": 1024, "tib": 1024}.get(unit)
    elif kind == "rate":
        factor = RATE_UNITS.get(unit)
        if factor is not None and factor < 1:
            return max(1, int(number * factor + 0.5)) if number else 0
    else:
        factor = 1 if unit in ("", "x", "iops", "core", "cores") else None
    if factor is None:
        raise PackageError(f"configurable option {name!r}: unknown unit {unit!r} in {text!r}")
    result = number * factor
    if result != int(result) or result < 0:
        raise PackageError(f"configurable option {name!r}: {text!r} is not a whole, non-negative amount")
    return int(result)


def resolve_package(product_settings: dict[str, Any] | None, configoptions: dict[str, Any] | None) -> Package:
    """The package of a service: the product's module settings, overridden by the service's configurable
    options (plain names win over the legacy prefixes). Raises PackageError for a value it cannot read."""
    settings = ProductSettings.from_stored(product_settings)
    given = {str(k).split("|")[0].strip().lower(): v for k, v in (configoptions or {}).items()}
    chosen: dict[str, tuple[str, Any]] = {}
    for key, value in given.items():
        plain = LEGACY.get(key) if key not in OPTIONS else key
        if plain is None or value in (None, ""):
            continue
        if plain in chosen and key in LEGACY and LEGACY[key] != key:
            continue  # the plain name was given too: it wins
        chosen[plain] = (key, value)
    changed = {}
    for plain, (key, value) in chosen.items():
        field_name, kind = OPTIONS[plain]
        changed[field_name] = _read(key, value, kind)
        if changed[field_name] < MINIMUM.get(field_name, 0):
            raise PackageError(f"configurable option {key!r}: {value!r} is less than the least a VM can have "
                               f"({MINIMUM[field_name]}{' MB' if field_name == 'ram_mb' else ''})")
    if not changed:
        return Package(settings)
    return Package(replace(settings, **changed), tuple(sorted(changed)))
