"""Reading and writing a VM's disk and NIC config strings.

System-disk detection follows seed 001 (v3.3.1): SCSI/SATA/IDE/VirtIO disks, the legacy ``bootdisk`` key,
a boot order that lists a CD-ROM or the NIC first, and templates with no ``boot`` line at all. A disk is a
data disk when it is not a CD-ROM, not a cloud-init drive and not ``none``.
"""
from __future__ import annotations

import re

DISK_KEY = re.compile(r"^(ide|sata|scsi|virtio)(\d+)$")
BUS_ORDER = ("scsi", "virtio", "sata", "ide")
BUS_LIMITS = {"ide": 4, "sata": 6, "scsi": 31, "virtio": 16}
DISK_FORMATS = ("raw", "qcow2", "vmdk")
SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)$")
UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
THROTTLES = ("mbps_rd", "mbps_wr", "iops_rd", "iops_wr")


def split_value(value: str) -> tuple[str, dict[str, str]]:
    """(volume, options) of a drive string ``local-lvm:vm-100-disk-0,size=10G,iothread=1``."""
    parts = str(value).split(",")
    volume, options = "", {}
    for index, part in enumerate(parts):
        key, sep, val = part.partition("=")
        if index == 0 and not sep:
            volume = part
        elif key == "file" and not volume:
            volume = val
        elif sep:
            options[key] = val
    return volume, options


def join_value(volume: str, options: dict[str, str]) -> str:
    return ",".join([volume] + [f"{k}={v}" for k, v in options.items()])


def is_data_disk(value: str) -> bool:
    volume, options = split_value(value)
    if options.get("media") == "cdrom" or volume in ("", "none", "cdrom"):
        return False
    return "cloudinit" not in volume


def _natural(key: str) -> tuple[int, int]:
    found = DISK_KEY.match(key)
    return (BUS_ORDER.index(found.group(1)), int(found.group(2))) if found else (99, 0)


def data_disks(config: dict) -> list[str]:
    """Keys of the data disks, in bus order (scsi, virtio, sata, ide) then number."""
    return sorted((k for k, v in config.items() if DISK_KEY.match(k) and is_data_disk(v)), key=_natural)


def system_disk(config: dict) -> str | None:
    """The key of the disk the VM boots from, or None when it has no data disk."""
    disks = data_disks(config)
    boot = str(config.get("boot") or "")
    if boot.startswith("order=") or ("=" not in boot and ";" in boot):
        for device in boot.partition("=")[2].split(";") if "=" in boot else boot.split(";"):
            if device in disks:
                return device
    bootdisk = str(config.get("bootdisk") or "")
    if bootdisk in disks:
        return bootdisk
    return disks[0] if disks else None


def size_bytes(text: str | None) -> int:
    """Bytes of a PVE size such as ``10G``, ``512M`` or ``32``  (bytes); 0 when unknown."""
    found = SIZE.match(str(text or "").strip())
    if not found:
        return 0
    return int(float(found.group(1)) * UNITS[found.group(2)])


def disk_size(config: dict, key: str) -> int:
    return size_bytes(split_value(config.get(key, ""))[1].get("size"))


def volume_format(volume: str) -> str:
    """The format of a new disk beside this volume: its trailing extension when it is one PVE knows,
    otherwise raw (block storages and volumes without an extension)."""
    name = volume.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    stem, dot, extension = name.rpartition(".")
    if dot and stem and extension in DISK_FORMATS:
        return extension
    return "raw"


def free_disk_key(config: dict, bus: str) -> str:
    """The first unused key on a bus (scsi1, virtio2, ...)."""
    for number in range(BUS_LIMITS[bus]):
        key = f"{bus}{number}"
        if key not in config:
            return key
    raise ValueError(f"no free {bus} slot on the VM")


def bus_of(key: str) -> str:
    found = DISK_KEY.match(key)
    if not found:
        raise ValueError(f"{key} is not a disk")
    return found.group(1)


def with_throttles(value: str, throttles: dict[str, int]) -> str:
    """The drive string with mbps_rd/mbps_wr/iops_rd/iops_wr set (0 removes a limit)."""
    volume, options = split_value(value)
    for key in THROTTLES:
        amount = int(throttles.get(key) or 0)
        if amount > 0:
            options[key] = str(amount)
        else:
            options.pop(key, None)
    return join_value(volume, options)


def throttles_of(value: str) -> dict[str, int]:
    options = split_value(value)[1]
    return {key: int(float(options.get(key, 0) or 0)) for key in THROTTLES}


# --------------------------------------------------------------------- NICs

NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3", "e1000-82540em", "e1000-82544gc",
              "e1000-82545em", "i82551", "i82557b", "i82559er", "ne2k_isa", "ne2k_pci", "pcnet")


def nic_mac(value: str | None) -> str | None:
    """The MAC of a net0 string ``virtio=BC:24:11:..,bridge=vmbr0``."""
    for part in str(value or "").split(","):
        key, _, val = part.partition("=")
        if key in NIC_MODELS and val:
            return val.upper()
        if key == "macaddr" and val:
            return val.upper()
    return None


def nic_value(model: str, mac: str, bridge: str, vlan: int, rate_mbs: int, firewall: bool) -> str:
    parts = [f"{model}={mac}", f"bridge={bridge}"]
    if vlan:
        parts.append(f"tag={vlan}")
    if rate_mbs:
        parts.append(f"rate={rate_mbs}")
    if firewall:
        parts.append("firewall=1")
    return ",".join(parts)
