"""System-disk detection and additional-disk format (seed 001, v3.3.1), and drive strings."""
from __future__ import annotations

import pytest

from core.proxmox import disks


@pytest.mark.parametrize(("config", "expected"), [
    ({"scsi0": "local-lvm:vm-1-disk-0,size=10G", "boot": "order=scsi0;ide2;net0"}, "scsi0"),
    ({"ide2": "local:iso/d.iso,media=cdrom", "sata0": "local:1/vm-1-disk-0.qcow2,size=8G",
      "boot": "order=ide2;sata0"}, "sata0"),
    ({"ide0": "local-lvm:vm-1-disk-0,size=8G", "ide2": "local-lvm:vm-1-cloudinit,media=cdrom",
      "bootdisk": "ide0"}, "ide0"),
    ({"virtio0": "local-lvm:vm-1-disk-0", "scsi1": "local-lvm:vm-1-disk-1", "bootdisk": "virtio0"}, "virtio0"),
    ({"scsi1": "local-lvm:vm-1-disk-1", "ide2": "none,media=cdrom", "net0": "virtio=AA:BB:CC:DD:EE:FF"},
     "scsi1"),
    ({"ide2": "local-lvm:vm-1-cloudinit,media=cdrom", "net0": "virtio", "boot": "order=net0;ide2"}, None),
    ({"scsi0": "local-lvm:vm-1-disk-0", "virtio1": "x:vm-1-disk-1", "boot": "order=net0;virtio1;scsi0"},
     "virtio1"),
    ({"boot": "cdn", "sata3": "s:vm-1-disk-0", "ide1": "s:vm-1-disk-1"}, "sata3"),
])
def test_system_disk(config, expected):
    assert disks.system_disk(config) == expected


@pytest.mark.parametrize(("volume", "fmt"), [
    ("local:100/vm-100-disk-0.qcow2", "qcow2"),
    ("my.nfs.store:100/vm-100-disk-0.vmdk", "vmdk"),
    ("qgqcow2/101/vm-101-disk-0", "raw"),
    ("local-lvm:vm-100-disk-0", "raw"),
    ("ceph.pool:base-9000-disk-0/vm-100-disk-0", "raw"),
    ("local:100/vm-100-disk-0.img", "raw"),
])
def test_additional_disk_format_from_trailing_extension(volume, fmt):
    assert disks.volume_format(volume) == fmt


def test_throttles_are_set_and_removed():
    value = "local-lvm:vm-1-disk-0,size=10G,iothread=1,mbps_rd=5"
    new = disks.with_throttles(value, {"mbps_rd": 0, "mbps_wr": 100, "iops_rd": 3000, "iops_wr": 0})
    assert new == "local-lvm:vm-1-disk-0,size=10G,iothread=1,mbps_wr=100,iops_rd=3000"
    assert disks.throttles_of(new) == {"mbps_rd": 0, "mbps_wr": 100, "iops_rd": 3000, "iops_wr": 0}


def test_sizes_and_nics():
    assert disks.size_bytes("10G") == 10 * 1024 ** 3 and disks.size_bytes("512M") == 512 * 1024 ** 2
    assert disks.size_bytes("4") == 4 and disks.size_bytes("junk") == 0
    assert disks.nic_mac("virtio=bc:24:11:aa:bb:cc,bridge=vmbr0") == "BC:24:11:AA:BB:CC"
    assert disks.nic_value("virtio", "BC:24:11:00:00:01", "vmbr1", 30, 25, True) == \
        "virtio=BC:24:11:00:00:01,bridge=vmbr1,tag=30,rate=25,firewall=1"
    assert disks.nic_value("e1000", "M", "vmbr0", 0, 0, False) == "e1000=M,bridge=vmbr0"
    assert disks.free_disk_key({"scsi0": "x", "scsi1": "y"}, "scsi") == "scsi2"
