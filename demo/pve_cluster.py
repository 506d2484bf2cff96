"""A two-node demo Proxmox VE cluster for development and tests.

`Cluster` is fakepve's FakePve, extended where fakepve 0.5 only answers generically: disk resize,
migration, new disks in config writes, vzdump and restore, RRD data, per-node memory and storages
limited to some nodes. Every extension follows what qemu-server, pve-storage and pve-manager do, with
their wording. `build_demo` fills a Cluster with two nodes, three storages and two cloud-init templates;
run this module to serve one over HTTPS:

    python -m demo.pve_cluster --port 0 --time-scale 0.05

It prints one JSON line (url, host, port, token_id, token_secret, ca_file) and serves until SIGTERM or
SIGINT. fakepve is a test tool (AGPL): only this module and the tests import it, never the product.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from typing import Any, Awaitable, Callable

from aiohttp import web
from fakepve import PORT, FakePve, FakeVm, PveError, TaskError
from fakepve.lxc import SIZE_UNITS, format_size, random_mac
from fakepve.qemu import CREATE_ONLY, DRIVE_KEY, NEW_DISK, drives_of, is_cdrom, join_drive, split_drive, \
    volume_ref, with_mac
from fakepve.routing import die, param_error, split_list
from fakepve.storage import spec_of

__all__ = ['Cluster', 'build_demo', 'main', 'rrd_series']

GIB = 1024 ** 3
MIB = 1024 ** 2
# PVE's RRD archives (pve-cluster RRD.pm): seconds per point for each timeframe, 70 points each.
RRD_STEPS = {'hour': 60, 'day': 30 * 60, 'week': 180 * 60, 'month': 720 * 60, 'year': 10080 * 60}
RRD_POINTS = 70
# Traffic in the synthetic RRD series grows linearly from this date (2024-01-01 UTC), doubling each year.
RRD_EPOCH = 1704067200
RRD_GROWTH_SECS = 365 * 86400
# vzdump: archive suffix and the share of the disks' size an archive takes, per `compress`.
COMPRESS_EXT = {'0': '', '1': '.lzo', 'lzo': '.lzo', 'gzip': '.gz', 'zstd': '.zst'}
COMPRESS_RATIO = {'0': 0.5, '1': 0.3, 'lzo': 0.3, 'gzip': 0.25, 'zstd': 0.2}
# A resize size: PUT .../resize (qemu-server resize_vm).
RESIZE_SIZE = re.compile(r'^(\+)?(\d+(?:\.\d+)?)([KMGT])?$')
STORAGE_ID = re.compile(r'^[a-z][a-z0-9\-_.]*[a-z0-9]$', re.I)
CLOUDINIT_NAME = re.compile(r'(?:^|[/:])(?:vm|base)-(\d+)-cloudinit(?:\.\w+)?$')
UNUSED_KEY = re.compile(r'^unused\d+$')
# Storage types whose local volumes PVE can copy to another node (QemuMigrate scan_local_volumes).
MIGRATABLE_LOCAL = ('dir', 'btrfs', 'zfspool', 'lvmthin', 'lvm')


def _on(value: Any) -> bool:
    """A PVE boolean parameter (1/0, after fakepve's schema checks) as a bool."""
    return str(value).lower() in ('1', 'true', 'yes', 'on') if value is not None else False


def _stamp() -> str:
    """The time prefix PVE's migration log lines carry."""
    return time.strftime('%Y-%m-%d %H:%M:%S ')


def _duration(secs: float) -> str:
    secs = int(secs)
    return '{0:02d}:{1:02d}:{2:02d}'.format(secs // 3600, secs // 60 % 60, secs % 60)


def _noise(vmid: int, stamp: int, salt: str) -> float:
    """A number in [0, 1) that depends only on the VM, the time and the salt."""
    digest = hashlib.sha256('{0}:{1}:{2}'.format(vmid, stamp, salt).encode()).digest()
    return int.from_bytes(digest[:8], 'big') / 2.0 ** 64


def rrd_series(vmid: int, timeframe: str, maxcpu: int, maxmem: int, maxdisk: int = 0, cf: str = 'AVERAGE',
               now: float | None = None, idle: bool = False) -> list[dict[str, Any]]:
    """The rrddata of a VM as PVE returns it: 70 points, `step` seconds apart, the last one aligned to the step.

    Each point has time, cpu (share of maxcpu), maxcpu, mem, maxmem, disk, maxdisk and the rates netin,
    netout, diskread and diskwrite in bytes per second. Values depend only on the VM id and the point's
    time, so two calls agree on the points they share; traffic follows the time of day and grows slowly
    over the months. cf=MAX gives peaks at or above the averages. idle (a template) gives zero usage.
    """
    step = RRD_STEPS[timeframe]
    now = time.time() if now is None else now
    last = int(now // step) * step

    def level(salt: str, low: float, high: float) -> float:
        return low + (high - low) * _noise(vmid, 0, salt)
    points = []
    for n in range(RRD_POINTS):
        stamp = last - (RRD_POINTS - 1 - n) * step
        point: dict[str, Any] = {'time': stamp, 'maxcpu': maxcpu, 'maxmem': maxmem, 'disk': 0, 'maxdisk': maxdisk}
        if idle:
            point.update(cpu=0, mem=0, netin=0, netout=0, diskread=0, diskwrite=0)
            points.append(point)
            continue

        def jitter(salt: str, spread: float) -> float:
            return 1 - spread + 2 * spread * _noise(vmid, stamp, salt)
        peak = 1.0 + (0.6 * _noise(vmid, stamp, 'max') if cf == 'MAX' else 0.0)
        daytime = 0.75 + 0.25 * math.sin(2 * math.pi * ((stamp % 86400) / 86400.0 - 0.25))
        growth = 1 + max(stamp - RRD_EPOCH, 0) / float(RRD_GROWTH_SECS)
        netin = level('netin', 2e4, 2e5) * growth * daytime * jitter('netin', 0.3) * peak
        point.update(
            cpu=round(min(1.0, level('cpu', 0.02, 0.3) * daytime * jitter('cpu', 0.4) * peak), 6),
            mem=int(maxmem * min(0.95, level('mem', 0.3, 0.65) * jitter('mem', 0.1) * (peak ** 0.2))),
            netin=round(netin, 2),
            netout=round(netin * level('ratio', 0.2, 0.8) * jitter('netout', 0.2), 2),
            diskread=round(level('read', 5e3, 1e5) * daytime * jitter('read', 0.5) * peak, 2),
            diskwrite=round(level('write', 5e3, 1e5) * daytime * jitter('write', 0.5) * peak, 2))
        points.append(point)
    return points


class _Abort(Exception):
    """A migration problem: the task logs the lines and ends with `migration aborted`."""

    def __init__(self, reason: str, lines: tuple[str, ...] = ()):
        super().__init__(reason)
        self.lines = lines


# qemu-server's cloud-init options ($confdesc_cloudinit).
CLOUDINIT_OPTION = re.compile(r'^(ipconfig\d+|nameserver|searchdomain|ciuser|cipassword|sshkeys|citype|ciupgrade|'
                              r'cicustom)$')


class Cluster(FakePve):
    """fakepve's FakePve with the parts of PVE a provisioning client needs and fakepve 0.5 lacks.

    Attributes (times are PVE seconds, scaled by `time_scale`):
      node_memory      {node: (used_bytes, total_bytes)} shown by GET /nodes, /cluster/resources and
                       /nodes/{node}/status; nodes without an entry keep fakepve's figures.
      migrate_secs     how long a qmigrate task holds the `migrate` lock (default 30).
      clone_secs       how long a qmclone task takes, the new VM holding its `clone` lock meanwhile, as in PVE
                       (default 0: the clone is done when the task starts, fakepve's behaviour).
      start_secs       how long starting a VM made by a clone takes (its FakeVm.start_secs; default 0).
      resize_secs      how long a resize task takes (default 1).
      vzdump_secs      how long backing up one VM takes, under the `backup` lock (default 20).
      restore_secs     how long a qmrestore task takes, under the `create` lock (default 20).
      vzdump_defaults  /etc/vzdump.conf: defaults for POST /nodes/{node}/vzdump (e.g. {'compress': 'zstd'});
                       empty means PVE's own defaults (compress 0, mode snapshot, storage local).
    """

    def __init__(self, user: str = 'root@pam', password: str = 'secret', host: str | None = None,
                 port: int = PORT):
        super().__init__(user, password, host, port)
        self.node_memory: dict[str, tuple[int, int]] = {}
        self.migrate_secs: float = 30
        self.resize_secs: float = 1
        self.vzdump_secs: float = 20
        self.restore_secs: float = 20
        self.clone_secs: float = 0
        self.start_secs: float = 0
        self.vzdump_defaults: dict[str, str] = {}
        self._pc_box: dict[str, str] | None = None

    # ------------------------------------------------------------------ routes

    def _routes_pvecluster(self):
        """The routes fakepve 0.5 answers only generically; registered ahead of its catch-all."""
        one = '/nodes/{node}/qemu/{vmid}'
        return [('PUT', one + '/resize', self._pc_resize),
                ('POST', one + '/migrate', self._pc_migrate),
                ('GET', one + '/rrddata', self._pc_rrddata),
                ('GET', one + '/cloudinit', self._pc_cloudinit),
                ('POST', '/nodes/{node}/vzdump', self._pc_vzdump),
                ('GET', '/nodes/{node}/status', self._pc_node_status)]

    # ------------------------------------------------------------------- tasks

    def _upid(self, node, ttype, tid, user):
        out = super()._upid(node, ttype, tid, user)
        if self._pc_box is not None:
            self._pc_box['upid'] = out[0]
            self._pc_box = None
        return out

    async def _pc_clone_timing(self, node, ttype, tid, user, body, vm=None, lock=True, log=()):
        """FakePve.task; a `qmclone` task (vm: the new VM, locked `clone`) lasts clone_secs and its VM gets
        start_secs."""
        if ttype == 'qmclone' and vm is not None:
            if self.start_secs:
                vm.start_secs = self.start_secs
            if self.clone_secs:
                copy_disks = body

                async def body():
                    await self.pause(self.clone_secs)
                    return await copy_disks()
        return await super().task(node, ttype, tid, user, body, vm=vm, lock=lock, log=log)

    async def _pc_task(self, node: str, ttype: str, tid: Any, user: str,
                       body: Callable[[Callable[[str], None]], Awaitable[str | None]], **kwargs: Any) -> str:
        """A fakepve task whose body writes log lines as it goes: body(emit) returns a last line or None.

        FakePve.task() makes the UPID before it runs or schedules the body, so the box is filled by
        this task's own _upid() call before the body needs it.
        """
        box: dict[str, str] = {}

        async def run():
            return await body(self.tasks[box['upid']]['log'].append)
        self._pc_box = box
        try:
            return await self.task(node, ttype, tid, user, run, **kwargs)
        finally:
            self._pc_box = None

    # ----------------------------------------------------------------- volumes

    def _qm_lock(self, vm, lock):
        """Set or clear the config lock; a finished clone also gets a cloud-init volume of its own.

        PVE clones a cloud-init drive like a disk (vm-<newid>-cloudinit); fakepve 0.5 copies the drive
        string, so the clone would point at the template's volume (and free it when destroyed).
        """
        finishing_clone = getattr(vm, 'lock', None) == 'clone' and lock is None
        super()._qm_lock(vm, lock)
        if finishing_clone:
            self._pc_own_cloudinit(vm)

    def _pc_own_cloudinit(self, vm: FakeVm) -> None:
        for key, volume, props in drives_of(vm.config):
            sid, name = volume_ref(volume)
            owner = CLOUDINIT_NAME.search(name or '')
            if sid is None or not owner or int(owner.group(1)) == vm.vmid or sid not in self.storages:
                continue
            try:
                vm.config[key] = join_drive(self._pc_alloc_cloudinit(sid, vm.vmid, vm.node), props)
            except PveError:
                pass

    def _qm_free(self, volid):
        """PVE::Storage::vdisk_free, for the guest's own disks only: ISOs, templates and backups stay.

        fakepve 0.5 frees every drive of a destroyed VM, so a VM with an ISO in its CD-ROM drive would
        take the ISO with it; PVE's destroy_vm skips CD-ROMs.
        """
        vol = self._qm_volume(volid)
        if vol is not None and vol.get('content') not in (None, 'images', 'rootdir'):
            return
        super()._qm_free(volid)

    def _pc_alloc_cloudinit(self, sid: str, vmid: int, node: str | None = None) -> str:
        """A cloud-init volume as PVE's create_disks makes it: vm-<vmid>-cloudinit, 4 MiB, qcow2 on file storages.

        With a node, the storage must be enabled and active there.
        """
        store = self._active_store(sid, node) if node else self._store(sid)
        spec = spec_of(store)
        fmt = 'qcow2' if spec and spec['files'] and 'qcow2' in (spec['formats'] or ()) else None
        volid, _fmt = self._qm_alloc(sid, vmid, fmt, 4 * MIB)
        volumes = store['volumes']
        old = volume_ref(volid)[1]
        new = re.sub(r'vm-(\d+)-disk-\d+', r'vm-\1-cloudinit', old)
        if new in self._volumes(sid):
            self._qm_free(volid)
            raise die("volume '{0}:{1}' already exists".format(sid, new))
        volumes[new] = volumes.pop(old)
        return '{0}:{1}'.format(sid, new)

    def _qm_new_drive(self, vmid, key, value, default):
        """A drive of a create or config request once its disk exists; `<storage>:cloudinit` becomes
        vm-<vmid>-cloudinit (fakepve 0.5 names it vm-<vmid>-disk-<n>)."""
        volume, props = split_drive(value)
        found = re.fullmatch(r'(?:([^/:\s]+):)?cloudinit', volume or '')
        if not found:
            return super()._qm_new_drive(vmid, key, value, default)
        sid = found.group(1) or default
        if not sid:
            raise die('no storage ID specified (and no default storage)')
        volid = self._pc_alloc_cloudinit(sid, vmid)
        props.pop('format', None)
        props.pop('size', None)
        return join_drive(volid, dict(props, media='cdrom')), [volid]

    def _pc_add_unused(self, vm: FakeVm, volid: str) -> str | None:
        """PVE's add_unused_volume: the first free unusedN, unless the volume is already one."""
        for key, value in vm.config.items():
            if UNUSED_KEY.match(key) and split_drive(value)[0] == volid:
                return key
        for n in range(256):
            key = 'unused{0}'.format(n)
            if key not in vm.config:
                vm.config[key] = volid
                return key
        return None

    def _pc_detach(self, vm: FakeVm, key: str, value: str, force: bool) -> None:
        """A drive deleted from the config (vmconfig_delete_or_detach_drive): unusedN, or freed."""
        volume, props = split_drive(value)
        if volume_ref(volume)[0] is None:
            return
        if UNUSED_KEY.match(key) or CLOUDINIT_NAME.search(volume):
            self._qm_free(volume)
        elif is_cdrom(volume, props):
            return
        elif force:
            self._qm_free(volume)
        else:
            self._pc_add_unused(vm, volume)

    def _pc_move_volume(self, volid: str, dest: str, vm: FakeVm, node: str) -> str:
        """storage_migrate of one volume to storage dest: the same format when dest can hold it."""
        sid, name = volume_ref(volid)
        if CLOUDINIT_NAME.search(name):
            new = self._pc_alloc_cloudinit(dest, vm.vmid, node)
        else:
            vol = self._volumes(sid).get(name) or {}
            spec = spec_of(self.storages[dest])
            fmt = vol.get('format')
            if fmt not in ((spec or {}).get('formats') or ['raw']):
                fmt = None
            new, _fmt = self._qm_alloc(dest, vm.vmid, fmt, int(vol.get('size') or 0))
            if re.search(r'(?:^|/)base-', name):
                new = self._qm_rename_volume(new)
        self._qm_free(volid)
        return new

    # ------------------------------------------------------------------ clone

    async def _qm_clone(self, v, user):
        """qemu-server's clone_vm, two details fakepve 0.5 leaves out: a `storage` must be enabled on the
        source node (storage_check_enabled: "storage 'x' is not available on node 'y'"), and while the clone
        runs the new VM's config holds no name yet (cluster/resources shows "VM <vmid>"); the name is
        written when the copy is done."""
        if v.get('storage') and v['storage'] in self.storages:
            self._check_enabled(v['storage'], v['node'])
        return await super()._qm_clone(v, user)

    async def task(self, node, ttype, tid, user, body, vm=None, lock=True, log=()):
        if ttype == 'qmclone' and vm is not None:
            name, copy = vm.name, body
            vm.config.pop('name', None)
            vm.name = 'VM {0}'.format(vm.vmid)

            async def body():
                try:
                    return await copy()
                finally:
                    vm.config['name'] = vm.name = name
        return await self._pc_clone_timing(node, ttype, tid, user, body, vm=vm, lock=lock, log=log)

    # ------------------------------------------------------------------ cloud-init

    async def _config_get(self, request):
        """GET /nodes/{node}/qemu/{vmid}/config: as qemu-server, the configuration with its pending changes
        applied (what the next start gets), unless `current` asks for what the VM runs with now (fakepve
        0.5 always answers the latter)."""
        from fakepve.server import ok
        vm = self._vm(request, 'VM.Audit')
        cfg = dict(vm.config)
        if not _on(request.query.get('current')):
            for key, value in vm.pending.items():
                if value is None:
                    cfg.pop(key, None)
                else:
                    cfg[key] = value
        if 'memory' in cfg:
            cfg['memory'] = str(cfg['memory'])  # PVE sends it as a string
        cfg['digest'] = vm.digest()
        return ok(cfg)

    async def _pc_cloudinit(self, v, user):
        """GET /nodes/{node}/qemu/{vmid}/cloudinit: each cloud-init option with its value on the drive and,
        when it differs, what the next start will write (``pending``, or ``delete``)."""
        vm = self.find(v['node'], v['vmid'])
        applied = vm.__dict__.get('pc_cloudinit', {})
        out = []
        for key in sorted({k for k in vm.config if CLOUDINIT_OPTION.match(k)} | set(applied)):
            item = {'key': key}
            old, new = applied.get(key, vm.config.get(key)), vm.config.get(key)
            if old is not None:
                item['value'] = old
            if old != new:
                if new is None:
                    item['delete'] = 1
                else:
                    item['pending'] = new
            out.append(item)
        return out

    # ------------------------------------------------------------------ power

    async def _do_start(self, vm, user, p):
        vm.__dict__.pop('pc_cloudinit', None)  # the start regenerates the cloud-init drive
        return await super()._do_start(vm, user, p)

    async def _do_stop(self, vm, user, p):
        """qemu-server's vm_stop API: skiplock is for root@pam alone (an API token is refused it)."""
        if p.get('skiplock') and user != 'root@pam':
            raise param_error(skiplock='Only root may use this option.')
        return await super()._do_stop(vm, user, p)

    async def _do_shutdown(self, vm, user, p):
        if p.get('skiplock') and user != 'root@pam':
            raise param_error(skiplock='Only root may use this option.')
        return await super()._do_shutdown(vm, user, p)

    # ------------------------------------------------------------------ resize

    async def _pc_resize(self, v, user):
        """PUT /nodes/{node}/qemu/{vmid}/resize: a `resize` task (PVE 8+ returns its UPID).

        As qemu-server's resize_vm, every check runs in the worker under the config lock, so problems end
        the task: digest, VM lock (unless skiplock), unknown disk, CD-ROM, shrinking. `+10G` adds to the
        current size; otherwise the size is absolute; units K, M, G, T, none for bytes. The new size goes
        into the drive's size= and the volume on its storage.
        """
        vm = self.find(v['node'], v['vmid'])
        if v.get('skiplock') and user != 'root@pam':
            raise param_error(skiplock='Only root may use this option.')
        self.need_quorum()
        disk, sizestr = v['disk'], str(v['size'])

        async def body():
            await self.pause(self.resize_secs)
            try:
                return self._pc_apply_resize(vm, user, disk, sizestr, v.get('digest'), _on(v.get('skiplock')))
            except PveError as e:
                raise TaskError(e.message) from e
        return await self.task(vm.node, 'resize', vm.vmid, user, body, vm=vm)

    def _pc_apply_resize(self, vm: FakeVm, user: str, disk: str, sizestr: str, digest: str | None,
                         skiplock: bool) -> str | None:
        if digest and digest != vm.digest():
            raise die('checksum mismatch (file change by other user?)')
        if not skiplock:
            self._check_lock(vm)
        value = vm.config.get(disk)
        if value is None:
            raise die("disk '{0}' does not exist".format(disk))
        volume, props = split_drive(value)
        if not volume:
            raise die("disk '{0}' has no associated volume".format(disk))
        if is_cdrom(volume, props):
            raise die("you can't resize a cdrom")
        sid, name = volume_ref(volume)
        if sid is None:
            raise die("unable to parse volume ID '{0}'".format(volume))
        store = self._store(sid)
        if vm.snapshots and name.endswith('.qcow2'):
            raise die("can't resize volume: {0} if snapshot exists".format(disk))
        self.require(user, '/storage/' + sid, 'Datastore.AllocateSpace')
        vol = self._volumes(sid).get(name)
        size = int((vol or {}).get('size') or 0)
        if not size:
            raise die("Could not determine current size of volume '{0}'".format(volume))
        found = RESIZE_SIZE.match(sizestr)
        if not found:
            raise die('internal error')
        newsize = float(found.group(2)) * SIZE_UNITS.get(found.group(3) or '', 1)
        if found.group(1):
            newsize += size
        newsize = int(newsize)
        if newsize < size:
            raise die('shrinking disks is not supported')
        if newsize == size:
            return None
        grow = newsize - size
        if 'avail' in store:
            if grow > store['avail']:
                raise die("unable to write to storage '{0}': No space left on device".format(sid))
            store['avail'] -= grow
        volumes = store.setdefault('volumes', {})
        volumes.setdefault(name, dict(vol))['size'] = newsize
        props['size'] = format_size(newsize)
        vm.config[disk] = join_drive(volume, props)
        return 'update VM {0}: resize --disk {1} --size {2}'.format(vm.vmid, disk, sizestr)

    # ----------------------------------------------------------------- migrate

    def _pc_storage_map(self, text: str | None, user: str, target: str) -> dict[str, Any] | None:
        """The targetstorage parameter (PVE's storage-pair-list): `1` (same ids), `sid`, `src:dst,...`."""
        if not text:
            return None
        smap: dict[str, Any] = {'identity': False, 'default': None, 'entries': {}}
        for item in split_list(text):
            src, colon, dst = item.partition(':')
            if not colon and item == '1':
                smap['identity'] = True
                continue
            for sid in (src, dst) if colon else (item,):
                if not STORAGE_ID.match(sid):
                    raise param_error(targetstorage="failed to parse storage map: invalid format - "
                                                    "storage ID '{0}' is not valid".format(sid))
            if not colon:
                if smap['default']:
                    raise param_error(targetstorage='failed to parse storage map: default target specified '
                                                    'multiple times')
                smap['default'] = item
            elif src in smap['entries']:
                raise param_error(targetstorage="failed to parse storage map: duplicate mapping for source "
                                                "'{0}'".format(src))
            else:
                smap['entries'][src] = dst
        if smap['identity'] and (smap['default'] or smap['entries']):
            raise param_error(targetstorage='failed to parse storage map: identity mapping cannot be combined '
                                            'with other mappings')
        for dest in sorted(set(smap['entries'].values()) | ({smap['default']} - {None})):
            # $check_storage_access_migrate
            self._check_enabled(dest, target)
            self.require(user, '/storage/' + dest, 'Datastore.AllocateSpace')
            if 'images' not in split_list(self.storages[dest].get('content')):
                raise die("storage '{0}' does not support vm images".format(dest))
        return smap

    @staticmethod
    def _pc_map(smap: dict[str, Any] | None, sid: str) -> str:
        if not smap:
            return sid
        return smap['entries'].get(sid) or smap['default'] or sid

    def _pc_volumes(self, vm: FakeVm):
        """(key, volume, props) of the drives and unused disks that live on a storage."""
        out = []
        for key, volume, props in drives_of(vm.config):
            if volume_ref(volume)[0] is not None:
                out.append((key, volume, props))
        for key in sorted(k for k in vm.config if UNUSED_KEY.match(k)):
            volume, props = split_drive(vm.config[key])
            if volume_ref(volume)[0] is not None:
                out.append((key, volume, props))
        return out

    def _pc_check_availability(self, vm: FakeVm, target: str) -> None:
        """check_storage_availability: every volume's storage is enabled on the target and takes its content."""
        for _key, volume, _props in self._pc_volumes(vm):
            sid, name = volume_ref(volume)
            store = self._check_enabled(sid, vm.node)
            self._check_enabled(sid, target)
            vtype = self._parse_volname(store, name)[0]
            if vtype not in split_list(store.get('content')):
                raise die("{0}: content type '{1}' is not available on storage '{2}'".format(volume, vtype, sid))

    async def _pc_migrate(self, v, user):
        """POST /nodes/{node}/qemu/{vmid}/migrate: a `qmigrate` task on the source node.

        Checked at once, as PVE's migrate_vm does: the target is not this node (400, `target is local
        node.`), quorum, the node exists (`no such cluster node '...'`), root-only options, the VM and its
        lock, a running VM needs online=1 (`can't migrate running VM without --online`), the targetstorage
        map, and that the VM's storages are enabled on the target when there is no map. The worker sets the
        `migrate` lock for migrate_secs, copies the local (non-shared) volumes to the mapped storage (live
        only with with-local-disks), then the VM lives on the target. Problems found by the worker end the
        task with `migration aborted`; the reason is in the log.
        """
        node, target = v['node'], v['target']
        if target == node:
            raise param_error(target='target is local node.')
        self.need_quorum()
        if target not in self.nodes:
            raise die("no such cluster node '{0}'".format(target))
        for opt in ('force', 'migration_type', 'migration_network'):
            if v.get(opt) and user != 'root@pam':
                raise param_error(**{opt: 'Only root may use this option.'})
        vm = self.find(node, v['vmid'])
        self._check_lock(vm)
        online = _on(v.get('online'))
        if vm.status == 'running' and not online:
            raise die("can't migrate running VM without --online")
        smap = self._pc_storage_map(v.get('targetstorage'), user, target)
        if smap is None or smap['identity']:
            self._pc_check_availability(vm, target)
        with_local = _on(v.get('with-local-disks'))
        ip = '192.0.2.{0}'.format(10 + sorted(self.nodes).index(target) + 1)

        async def body(emit):
            emit(_stamp() + "starting migration of VM {0} to node '{1}' ({2})".format(vm.vmid, target, ip))
            try:
                await self._pc_do_migrate(vm, node, target, smap, online, with_local, emit)
            except _Abort as e:
                for line in e.lines:
                    emit(_stamp() + line)
                emit(_stamp() + 'ERROR: migration aborted (duration 00:00:00): {0}'.format(e))
                raise TaskError('migration aborted') from e
            return _stamp() + 'migration finished successfully (duration {0})'.format(_duration(self.migrate_secs))
        if vm.ha_managed:
            async def ha(emit):
                emit('Requesting HA migration for VM {0} to node {1}'.format(vm.vmid, target))
                await self.pause(self.ha_delay)
                return await body(emit)
            return await self._pc_task(node, 'hamigrate', vm.vmid, user, ha, lock=False)
        return await self._pc_task(node, 'qmigrate', vm.vmid, user, body, lock=False)

    async def _pc_do_migrate(self, vm, node, target, smap, online, with_local, emit):
        # prepare
        if vm.lock:
            raise _Abort('VM is locked ({0})'.format(vm.lock))
        running = vm.status == 'running'
        if running and not online:
            raise _Abort("can't migrate running VM without --online")
        if not self.nodes.get(target, {}).get('online', True):
            raise _Abort("Can't connect to destination address using public key")
        moves = {}
        try:
            for _key, volume, _props in self._pc_volumes(vm):
                sid, name = volume_ref(volume)
                store = self._check_enabled(sid, node)
                dest = sid if store.get('shared') else self._pc_map(smap, sid)
                dest_store = self._check_enabled(dest, target)
                vtype = self._parse_volname(store, name)[0]
                if vtype not in split_list(dest_store.get('content')):
                    raise die("{0}: content type '{1}' is not available on storage '{2}'".format(volume, vtype, dest))
                if not store.get('shared'):
                    moves[volume] = dest
        except PveError as e:
            raise _Abort(e.message) from e
        # phase 1: the migrate lock, then the local volumes
        self._qm_lock(vm, 'migrate')
        try:
            problems, found = [], []
            for key, volume, props in self._pc_volumes(vm):
                if volume not in moves:
                    continue
                store = self.storages[volume_ref(volume)[0]]
                cloudinit = bool(CLOUDINIT_NAME.search(volume))
                if is_cdrom(volume, props) and not cloudinit:
                    problems.append("can't migrate local disk '{0}': local cdrom image".format(volume))
                elif store.get('type', 'dir') not in MIGRATABLE_LOCAL:
                    problems.append("can't migrate '{0}' - storage type '{1}' not supported".format(
                        volume, store.get('type')))
                elif running and not with_local and not cloudinit and not UNUSED_KEY.match(key):
                    problems.append("can't migrate local disk '{0}': can't live migrate attached local disks "
                                    "without with-local-disks option".format(volume))
                elif cloudinit:
                    found.append("found generated disk '{0}' (in current VM config)".format(volume))
                else:
                    where = 'via storage' if UNUSED_KEY.match(key) else 'in current VM config'
                    found.append("found local disk '{0}' ({1})".format(volume, where))
            for line in found:
                emit(_stamp() + line)
            if problems:
                raise _Abort('Problem found while scanning volumes - can\'t migrate VM - check log',
                             tuple('WARN: ' + p for p in problems) + ('aborting phase 1 - cleanup resources',))
            await self.pause(self.migrate_secs)
            if moves:
                emit(_stamp() + 'copying local disk images')
            renamed = {}
            for volume, dest in sorted(moves.items()):
                if dest != volume_ref(volume)[0]:
                    try:
                        renamed[volume] = self._pc_move_volume(volume, dest, vm, target)
                    except PveError as e:
                        raise _Abort("storage migration for '{0}' to storage '{1}' failed - {2}".format(
                            volume, dest, e.message)) from e
                    emit(_stamp() + "volume '{0}' is '{1}' on the target".format(volume, renamed[volume]))
            for key, volume, props in self._pc_volumes(vm):
                if volume in renamed:
                    vm.config[key] = join_drive(renamed[volume], props) if not UNUSED_KEY.match(key) \
                        else renamed[volume]
            vm.node = target
        finally:
            self._qm_lock(vm, None)

    # ------------------------------------------------------------------ config

    async def _apply_config(self, vm, user, p):
        """PUT/POST .../config with PVE's disk handling on top of fakepve's (pending, locks, digest).

        A drive value `<storage>:<GiB>[,options]` allocates a new volume (vm-<vmid>-disk-<n>, size=<n>G);
        `<storage>:cloudinit` allocates vm-<vmid>-cloudinit. A disk replaced or deleted on a stopped VM
        becomes unusedN, unless force=1 or it is a cloud-init drive; deleting an unusedN frees the volume.
        """
        p = dict(p)
        force = _on(p.pop('force', None))
        p.pop('background_delay', None)
        old = dict(vm.config)
        made = []
        try:
            for key in sorted(k for k in p if DRIVE_KEY.match(k)):
                value = str(p[key])
                volume, props = split_drive(value)
                new_disk = NEW_DISK.match(volume or '')
                cloudinit = re.fullmatch(r'(?:([^/:\s]+):)?cloudinit', volume or '')
                if (not new_disk or is_cdrom(volume, props)) and not cloudinit:
                    continue
                sid = (new_disk or cloudinit).group(1)
                if not sid:
                    raise die('no storage ID specified (and no default storage)')
                if new_disk:
                    self._qm_image_store(sid, user)
                self._active_store(sid, vm.node)
                p[key], volids = self._qm_new_drive(vm.vmid, key, value, None)
                made.extend(volids)
            cloudinit_keys = [k for k in list(p) + split_list(p.get('delete')) if CLOUDINIT_OPTION.match(k)]
            before = {k: vm.config.get(k) for k in cloudinit_keys}
            await super()._apply_config(vm, user, p)
        except BaseException:
            for volid in made:
                self._qm_free(volid)
            raise
        if vm.status == 'running':
            # qemu-server treats every cloud-init option as fast-plug: on a running VM it goes straight into
            # the config (not /pending); the values the guest's drive was made from are kept aside (the
            # config's [special:cloudinit]) until the next start regenerates the drive (see /cloudinit).
            applied = vm.__dict__.setdefault('pc_cloudinit', {})
            for key in cloudinit_keys:
                applied.setdefault(key, before[key])
                new = vm.pending.pop(key, vm.config.get(key))
                if new is None:
                    vm.config.pop(key, None)
                else:
                    vm.config[key] = new
            return
        for key in split_list(p.get('delete')):
            if key in old and key not in vm.config and (DRIVE_KEY.match(key) or UNUSED_KEY.match(key)):
                self._pc_detach(vm, key, old[key], force)
        for key in [k for k in p if DRIVE_KEY.match(k)]:
            if vm.config.get(key) != p[key]:
                continue
            now = split_drive(p[key])[0]
            # Attaching an unused disk takes it out of the unusedN list.
            for unused in [k for k in vm.config if UNUSED_KEY.match(k) and split_drive(vm.config[k])[0] == now]:
                del vm.config[unused]
            if key in old and split_drive(old[key])[0] != now:
                self._pc_detach(vm, key, old[key], False)

    # ------------------------------------------------------------------ vzdump

    async def _pc_vzdump(self, v, user):
        """POST /nodes/{node}/vzdump: a `vzdump` task that backs up this node's guests to a storage.

        Options default from vzdump_defaults (/etc/vzdump.conf), then PVE's own. Guests on other nodes are
        skipped; unknown ids fail visibly. Each VM is locked `backup` for vzdump_secs; the archive becomes
        the volume <storage>:backup/vzdump-qemu-<vmid>-<YYYY_MM_DD-HH_MM_SS>.vma[.zst|.gz|.lzo] (content
        backup, subtype qemu), with notes from notes-template and the protected flag. A storage without
        backup content fails the task; a failed VM ends it with `job errors`.
        """
        node = v['node']
        opts = dict(self.vzdump_defaults)
        opts.update((k, x) for k, x in v.items() if x is not None)
        for flag in ('stdout',):
            if v.get(flag):
                raise param_error(**{flag: 'option is only allowed on the command line interface.'})
        for other in ('all', 'pool', 'exclude'):
            if v.get(other) and v.get('vmid'):
                raise param_error(**{other: "option conflicts with option 'vmid'"})
        if not (v.get('vmid') or v.get('all') or v.get('pool') or v.get('stop') or v.get('exclude')):
            raise param_error(vmid='property is missing')
        if v.get('pool') and v['pool'] not in self.pools:
            raise die("pool '{0}' does not exist".format(v['pool']))
        ids = self._pc_backup_ids(v)
        local = [i for i in ids if self.vm(i) is None or self.vm(i).node == node]
        skipped = sorted(i for i in ids if i not in local)
        storage = opts.get('storage')
        if not storage and not opts.get('dumpdir') and 'local' in self.storages:
            storage = 'local'
        compress = str(opts.get('compress', '0'))
        mode = opts.get('mode', 'snapshot')
        cmdline = ' '.join(['vzdump'] + [str(i) for i in local] + ['--{0} {1}'.format(k, opts[k]) for k in sorted(
            opts) if k not in ('node', 'vmid')])

        async def body(emit):
            emit('INFO: starting new backup job: ' + cmdline)
            if skipped:
                emit('INFO: skip external VMs: ' + ', '.join(str(i) for i in skipped))
            if storage and opts.get('dumpdir'):
                raise TaskError("cannot use options 'storage' and 'dumpdir' at the same time")
            if storage:
                try:
                    store = self._active_store(storage, node)
                    if 'backup' not in split_list(store.get('content')):
                        raise die("can't use storage '{0}' for backups - wrong content type".format(storage))
                except PveError as e:
                    raise TaskError("could not get storage information for '{0}': {1}".format(
                        storage, e.message)) from e
            errors = 0
            for vmid in sorted(local):
                try:
                    await self._pc_backup_one(vmid, node, storage, opts, compress, mode, emit)
                except TaskError as e:
                    errors += 1
                    emit('ERROR: Backup of VM {0} failed - {1}'.format(vmid, e))
            emit('INFO: Backup job finished with errors' if errors else 'INFO: Backup job finished successfully')
            if errors:
                raise TaskError('job errors')
            return None
        tid = local[0] if len(local) == 1 else ''
        return await self._pc_task(node, 'vzdump', tid, user, body, lock=False)

    def _pc_backup_ids(self, v) -> list[int]:
        if v.get('vmid'):
            try:
                return sorted(set(int(x) for x in split_list(v['vmid'])))
            except ValueError:
                raise die("ERROR: strange VM ID '{0}'".format(v['vmid'])) from None
        if v.get('pool'):
            return sorted(self.pools.get(v['pool'], ()))
        exclude = set(int(x) for x in split_list(v.get('exclude')) if x.isdigit())
        return sorted(vm.vmid for vm in self.vms if vm.vmid not in exclude)

    async def _pc_backup_one(self, vmid, node, storage, opts, compress, mode, emit):
        vm = self.vm(vmid)
        emit('INFO: Starting Backup of VM {0} (qemu)'.format(vmid))
        emit('INFO: Backup started at ' + time.strftime('%Y-%m-%d %H:%M:%S'))
        if vm is None:
            raise TaskError("unable to find VM '{0}'".format(vmid))
        if vm.lock:
            raise TaskError('VM is locked ({0})'.format(vm.lock))
        running = vm.status == 'running'
        emit('INFO: status = {0}'.format(vm.status))
        emit('INFO: backup mode: {0}'.format(mode if running else 'stop'))
        self._qm_lock(vm, 'backup')
        try:
            await self.pause(self.vzdump_secs)
        finally:
            self._qm_lock(vm, None)
        started = time.time()
        disks, total = {}, 0
        for key, volume, props in drives_of(vm.config, skip_cdrom=True):
            sid, name = volume_ref(volume)
            if sid is None or sid not in self.storages:
                continue
            vol = self._volumes(sid).get(name) or {}
            size = int(vol.get('size') or 0)
            disks[key] = {'storage': sid, 'size': size, 'format': vol.get('format') or 'raw'}
            total += size
        ext = '.vma' + COMPRESS_EXT.get(compress, '')
        if not storage:
            emit("INFO: creating vzdump archive '{0}/vzdump-qemu-{1}-{2}{3}'".format(
                opts.get('dumpdir'), vmid, time.strftime('%Y_%m_%d-%H_%M_%S', time.localtime(started)), ext))
            emit('INFO: Finished Backup of VM {0} ({1})'.format(vmid, _duration(self.vzdump_secs)))
            return
        store = self.storages[storage]
        volumes = store.setdefault('volumes', {})
        stamp = int(started)
        while True:
            volname = 'backup/vzdump-qemu-{0}-{1}{2}'.format(vmid, time.strftime('%Y_%m_%d-%H_%M_%S',
                                                                               time.localtime(stamp)), ext)
            if volname not in volumes:
                break
            stamp += 1
        size = max(MIB, int(total * COMPRESS_RATIO.get(compress, 0.5)))
        if size > store.get('avail', float('inf')):
            raise TaskError('vma_queue_write: write error - No space left on device')
        if 'avail' in store:
            store['avail'] -= size
        config = dict((k, x) for k, x in vm.config.items() if k != 'lock' and not UNUSED_KEY.match(k))
        vol = {'content': 'backup', 'format': ext.lstrip('.'), 'size': size, 'vmid': vmid, 'ctime': stamp,
               'subtype': 'qemu', 'archive': {'config': copy.deepcopy(config), 'disks': disks,
                                              'template': bool(vm.template)}}
        if not store.get('shared'):
            vol['node'] = node
        notes = opts.get('notes-template')
        if notes:
            for name, value in (('guestname', vm.name), ('vmid', vmid), ('node', node),
                                ('cluster', self.cluster_name)):
                notes = notes.replace('{{' + name + '}}', str(value))
            vol['notes'] = notes
        if _on(opts.get('protected')):
            vol['protected'] = True
        volumes[volname] = vol
        emit("INFO: creating vzdump archive '{0}'".format(self._volume_path(storage, volname, 'backup')))
        emit('INFO: archive file size: {0:.2f}GB'.format(size / GIB))
        emit('INFO: Finished Backup of VM {0} ({1})'.format(vmid, _duration(self.vzdump_secs)))

    def _item(self, name, volname, vol):
        """A content entry; backups also carry their subtype (qemu), as PVE lists them."""
        item = super()._item(name, volname, vol)
        if vol.get('subtype'):
            item['subtype'] = vol['subtype']
        return item

    async def _content_list(self, v, user):
        """Storage content; a backup on a node-local storage is listed on the node that wrote it only."""
        items = await super()._content_list(v, user)
        store = self.storages[v['storage']]
        if store.get('shared'):
            return items
        volumes = store.get('volumes', {})
        return [item for item in items
                if volumes.get(item['volid'].split(':', 1)[1], {}).get('node') in (None, v['node'])]

    # ----------------------------------------------------------------- restore

    async def _qm_create(self, v, user):
        """POST /nodes/{node}/qemu: create as fakepve does, or restore with `archive` (a `qmrestore` task).

        A restore checks, as PVE's create_vm: quorum, pool, permissions, the archive (a backup volume that
        exists on this node), and an existing VMID: refused unless force=1 (`unable to restore VM <id> -
        VM <id> already exists on node '<node>'`), and never over a running or protected VM or one on
        another node. The worker frees the old VM's disks, allocates the archived disks (on `storage`, or
        their original storage), and writes the archived config with the other parameters as overrides;
        unique=1 gives new MAC addresses.
        """
        if not v.get('archive'):
            return await super()._qm_create(v, user)
        return await self._pc_restore(v, user)

    async def _pc_restore(self, v, user):
        node, vmid, archive = v['node'], int(v['vmid']), str(v['archive'])
        emsg = 'unable to restore VM {0} -'.format(vmid)
        force, storage, pool = _on(v.get('force')), v.get('storage'), v.get('pool')
        self.need_quorum()
        self._qm_check_pool(pool)
        if storage:
            self.require(user, '/storage/' + storage, 'Datastore.AllocateSpace')
        existing = self.guest(vmid)
        if not (self.allowed(user, '/vms/{0}'.format(vmid), 'VM.Allocate')
                or (pool and self.allowed(user, '/pool/' + pool, 'VM.Allocate'))
                or (force and existing is not None and self.allowed(user, '/vms/{0}'.format(vmid), 'VM.Backup'))):
            raise PveError(403, 'Permission check failed')
        if archive == '-':
            raise die('pipe requires cli environment')
        overrides = dict((k, x) for k, x in v.items() if k not in CREATE_ONLY)
        drives = sorted(k for k in overrides if DRIVE_KEY.match(k) or UNUSED_KEY.match(k))
        if drives:
            raise param_error(archive='option conflicts with other options ({0})'.format(' '.join(drives)))
        sid, volname, volid, store, vtype, owner, _fmt = self._volume_target({'volume': archive})
        self._check_access(user, sid, vtype, owner, volid)
        if vtype != 'backup':
            raise die("unable to use volume {0} - content type needs to be 'backup'".format(volid))
        self._active_store(sid, node)
        vol = self._volumes(sid).get(volname)
        if vol is None or (not store.get('shared') and vol.get('node') not in (None, node)):
            raise die("can't find file '{0}'".format(volid))
        if not vol.get('archive'):
            raise die("ERROR: file '{0}' does not look like a QemuServer vzdump backup".format(
                self._volume_path(sid, volname, 'backup')))
        if existing is not None:
            kind = 'VM' if self.vm(vmid) is existing else 'CT'
            if kind != 'VM' or existing.node != node or not force:
                raise die("{0} {1} {2} already exists on node '{3}'".format(emsg, kind, vmid, existing.node))
            self._qm_check_protection(existing, 'unable to restore VM {0}'.format(vmid))
            if existing.status == 'running':
                raise die('{0} vm is running'.format(emsg))
            if existing.lock:
                raise die('{0} VM is locked ({1})'.format(emsg, existing.lock))
            vm = existing
        else:
            vm = FakeVm(vmid, 'VM {0}'.format(vmid), node=node)
            vm.config.pop('name', None)
            self.vms.append(vm)
        self._qm_lock(vm, 'create')
        archived = copy.deepcopy(vol['archive'])

        async def body(emit):
            emit("restore vma archive: zstd -q -d -c {0} | vma extract -v -r /var/tmp/vzdumptmp{1}.fifo - "
                 "/var/tmp/vzdumptmp{1}".format(self._volume_path(sid, volname, 'backup'), vmid))
            made = []
            try:
                await self.pause(self.restore_secs)
                if vm is existing:
                    for _key, volume, _props in self._pc_volumes(vm):
                        found = re.search(r'(?:^|/)(?:vm|base)-(\d+)-', volume_ref(volume)[1])
                        if found and int(found.group(1)) == vmid:
                            self._qm_free(volume)
                    # destroy_vm(..., keep_empty_config): only the lock is left.
                    vm.config, vm.snapshots, vm.pending = {}, {}, {}
                    self._qm_lock(vm, 'create')
                conf = self._pc_restored_config(vm, archived, storage, node, made, emit, v)
                conf.update(overrides)
                vm.config = conf
            except (PveError, TaskError) as e:
                for volid_made in made:
                    self._qm_free(volid_made)
                if vm is not existing and vm in self.vms:
                    self.vms.remove(vm)
                self._qm_lock(vm, None)
                raise TaskError('{0} {1}'.format(emsg, getattr(e, 'message', None) or str(e))) from e
            vm.template = bool(archived.get('template'))
            vm.name = conf.get('name') or 'VM {0}'.format(vmid)
            vm.status = vm.qmpstatus = 'stopped'
            self._qm_lock(vm, None)
            if pool:
                self._pool_join(pool, vmid)
            if _on(v.get('start')) and not vm.template:
                vm.status = vm.qmpstatus = 'running'
                vm.started_at = time.time()
            return 'rescan volumes...'
        return await self._pc_task(node, 'qmrestore', vmid, user, body, lock=False)

    def _pc_restored_config(self, vm, archived, storage, node, made, emit, v):
        conf = {}
        for key, value in archived['config'].items():
            if DRIVE_KEY.match(key):
                continue
            conf[key] = with_mac(value, fresh=True) if _on(v.get('unique')) and re.fullmatch(r'net\d+', key) \
                else value
        for key, volume, props in drives_of(archived['config']):
            src, _name = volume_ref(volume)
            if src is None or (is_cdrom(volume, props) and not CLOUDINIT_NAME.search(volume)):
                conf[key] = join_drive(volume, props)
                continue
            dest = storage or src
            if dest not in self.storages:
                raise die("storage '{0}' does not exist".format(dest))
            if CLOUDINIT_NAME.search(volume):
                new = self._pc_alloc_cloudinit(dest, vm.vmid, node)
                made.append(new)
                conf[key] = join_drive(new, props)
                continue
            self._qm_image_store(dest, 'root@pam')
            self._active_store(dest, node)
            info = archived['disks'].get(key, {})
            size = int(info.get('size') or 0)
            fmt = info.get('format')
            if fmt not in ((spec_of(self.storages[dest]) or {}).get('formats') or ['raw']):
                fmt = None
            emit('DEV: dev_id={0} size: {1} devname: drive-{2}'.format(len(made) + 1, size, key))
            new, _fmt = self._qm_alloc(dest, vm.vmid, fmt, size)
            if archived.get('template'):
                new = self._qm_rename_volume(new)
            made.append(new)
            emit("new volume ID is '{0}'".format(new))
            conf[key] = join_drive(new, dict(props, size=format_size(size)) if size else props)
        return conf

    # -------------------------------------------------------------------- rrd

    async def _pc_rrddata(self, v, user):
        """GET /nodes/{node}/qemu/{vmid}/rrddata: 70 points at the timeframe's step (hour: 60 s)."""
        vm = self.find(v['node'], v['vmid'])
        use = self._vm_usage(vm)
        return rrd_series(vm.vmid, v['timeframe'], use['maxcpu'], use['maxmem'], use['maxdisk'],
                          v.get('cf') or 'AVERAGE', idle=bool(vm.template))

    # ------------------------------------------------------------------ nodes

    def _pc_patch_nodes(self, response: web.StreamResponse) -> web.StreamResponse:
        """Put node_memory into the node entries of a /nodes or /cluster/resources answer."""
        if not isinstance(response, web.Response) or response.status != 200 or not self.node_memory:
            return response
        data = json.loads(response.text)['data']
        for item in data:
            figures = self.node_memory.get(item.get('node'))
            if item.get('type') == 'node' and figures and 'mem' in item:
                item['mem'], item['maxmem'] = int(figures[0]), int(figures[1])
        return web.json_response({'data': data})

    async def _nodes(self, request):
        return self._pc_patch_nodes(await super()._nodes(request))

    async def _resources(self, request):
        return self._pc_patch_nodes(await super()._resources(request))

    async def _pc_node_status(self, v, user):
        """GET /nodes/{node}/status: memory from node_memory (used, total, free, available)."""
        stats = self._node_stats(True)
        used, total = self.node_memory.get(v['node'], (stats['mem'], stats['maxmem']))
        data = {'memory': {'used': int(used), 'total': int(total), 'free': int(total - used),
                           'available': int(total - used)},
                'cpu': stats['cpu'], 'uptime': stats['uptime'], 'pveversion': 'pve-manager/{0}'.format(self.version),
                'cpuinfo': {'cpus': stats['maxcpu'], 'cores': stats['maxcpu'], 'sockets': 1, 'model': 'QEMU Virtual CPU'},
                'rootfs': {'total': stats['maxdisk'], 'used': stats['disk'], 'avail': stats['maxdisk'] - stats['disk'],
                           'free': stats['maxdisk'] - stats['disk']}}
        return self._complete('/nodes/{node}/status', data, node=v['node'])

    # ---------------------------------------------------------------- storage

    def _storage_resource(self, node, name):
        """The /cluster/resources entry of a storage on a node, with its real usage (disk, maxdisk)."""
        item = super()._storage_resource(node, name)
        if item:
            total, used, _avail = self._space(self.storages[name])
            item.update(disk=used, maxdisk=total)
        return item

    async def _ns_list(self, v, user):
        """GET /nodes/{node}/storage. As PVE, a storage not configured for the node is listed (enabled 0,
        active 0) unless `content` or `enabled=1` is given; fakepve 0.5 keeps it with enabled=1."""
        items = await super()._ns_list(v, user)
        if _on(v.get('enabled')):
            items = [item for item in items if item.get('enabled')]
        return items


# ------------------------------------------------------------------------- demo


def _token_secret() -> str:
    """A secret shaped like PVE's API token values (a UUID)."""
    raw = secrets.token_hex(16)
    return '{0}-{1}-{2}-{3}-{4}'.format(raw[:8], raw[8:12], raw[12:16], raw[16:20], raw[20:])


def _make_template(pve: Cluster, vmid: int, name: str, node: str = 'pve1', storage: str = 'local-lvm',
                   size: int = 2 * GIB) -> dict[str, Any]:
    """A cloud-init template as `qm template` leaves it: base-<vmid>-disk-0 and vm-<vmid>-cloudinit."""
    volid, _fmt = pve._qm_alloc(storage, vmid, 'raw', size)
    base = pve._qm_rename_volume(volid)
    cloudinit = pve._pc_alloc_cloudinit(storage, vmid, node)
    config = {
        'name': name, 'template': 1, 'ostype': 'l26', 'cores': 1, 'memory': 1024, 'agent': '1',
        'scsihw': 'virtio-scsi-pci', 'scsi0': join_drive(base, {'size': format_size(size)}),
        'ide2': join_drive(cloudinit, {'media': 'cdrom', 'size': '4M'}), 'boot': 'order=scsi0;ide2;net0',
        'net0': 'virtio={0},bridge=vmbr0'.format(random_mac()), 'smbios1': 'uuid={0}'.format(uuid.uuid4()),
    }
    pve.add_vm(vmid, name, node=node, template=True, config=config)
    return {'vmid': vmid, 'node': node, 'disk': base}


def build_demo(pve: Cluster, token_id: str = 'root@pam!pkvm', token_secret: str | None = None) -> dict[str, Any]:
    """Fill a fresh Cluster with the demo cluster; returns its token, templates and nodes.

    Nodes pve1 (12 of 32 GiB used) and pve2 (8 of 64 GiB used: the most free memory); storages `local`
    (dir: iso, vztmpl, backup), `local-lvm` (lvmthin: images, rootdir) on both nodes and the shared
    `nfs-vm` (nfs: images, backup, qcow2 by default); templates 9000 debian-12-cloud and 9001
    ubuntu-24.04-cloud on pve1 (2 GiB base disk and a cloud-init drive on local-lvm); backups default to
    zstd (vzdump.conf); an API token with a fresh secret unless one is given. Returns
    {'token_id', 'token_secret', 'templates': {name: {'vmid', 'node', 'disk'}}, 'nodes': [...]}.
    """
    if not isinstance(pve, Cluster):
        raise TypeError('build_demo needs a Cluster, not {0}'.format(type(pve).__name__))
    pve.cluster_name = 'demo'
    for node in ('pve1', 'pve2'):
        pve.add_node(node)
    pve.node_memory.update(pve1=(12 * GIB, 32 * GIB), pve2=(8 * GIB, 64 * GIB))
    pve.storages = {
        'local': {'type': 'dir', 'path': '/var/lib/vz', 'content': 'iso,vztmpl,backup', 'active': 1,
                  'files': set(), 'volumes': {}, 'total': 100 * GIB, 'avail': 100 * GIB},
        'local-lvm': {'type': 'lvmthin', 'vgname': 'pve', 'thinpool': 'data', 'content': 'images,rootdir',
                      'active': 1, 'files': set(), 'volumes': {}, 'total': 400 * GIB, 'avail': 400 * GIB},
        'nfs-vm': {'type': 'nfs', 'server': '192.0.2.50', 'export': '/srv/nfs/vm', 'path': '/mnt/pve/nfs-vm',
                   'content': 'images,backup', 'format': 'qcow2', 'options': 'vers=4.2', 'shared': 1,
                   'active': 1, 'files': set(), 'volumes': {}, 'total': 2048 * GIB, 'avail': 2048 * GIB},
    }
    pve.vzdump_defaults.setdefault('compress', 'zstd')
    templates = {}
    for vmid, name in ((9000, 'debian-12-cloud'), (9001, 'ubuntu-24.04-cloud')):
        templates[name] = _make_template(pve, vmid, name)
    secret = token_secret or _token_secret()
    pve.apitokens[token_id] = secret
    return {'token_id': token_id, 'token_secret': secret, 'templates': templates, 'nodes': sorted(pve.nodes)}


# -------------------------------------------------------------------------- CLI


def _write_state(path: str, info: dict[str, Any]) -> None:
    tmp = '{0}.{1}.tmp'.format(path, os.getpid())
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w') as out:
        json.dump(info, out)
    os.replace(tmp, path)


async def _serve(args: argparse.Namespace) -> None:
    pve = Cluster(password=args.password, host=args.host, port=args.port)
    pve.time_scale = args.time_scale
    pve.clone_secs = args.clone_secs
    pve.start_secs = args.start_secs
    if args.migrate_secs is not None:
        pve.migrate_secs = args.migrate_secs
    demo = build_demo(pve, args.token_id, args.token_secret)
    tmp = None if args.pki_dir else tempfile.mkdtemp(prefix='pve-cluster-')
    pki = args.pki_dir or tmp
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        from fakepve.certs import make_cert
        os.makedirs(pki, exist_ok=True)
        certfile, keyfile, _der = make_cert(pki, name='pve-cluster', hosts=(args.host,))
        await pve.start(certfile, keyfile)
        try:
            info = {'url': pve.url, 'host': pve.host, 'port': pve.port, 'token_id': demo['token_id'],
                    'token_secret': demo['token_secret'], 'ca_file': certfile}
            if args.state_file:
                _write_state(args.state_file, dict(info, pid=os.getpid()))
            print(json.dumps(info), flush=True)
            await stop.wait()
        finally:
            await pve.stop()
            if args.state_file:
                try:
                    os.unlink(args.state_file)
                except FileNotFoundError:
                    pass
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Serve the demo cluster; see the module docstring."""
    parser = argparse.ArgumentParser(prog='python -m demo.pve_cluster',
                                     description='Serve a two-node demo Proxmox VE cluster (fakepve) over HTTPS.')
    parser.add_argument('--host', default='127.0.0.1', help='address to listen on (default 127.0.0.1)')
    parser.add_argument('--port', type=int, default=0, help='port; 0 lets the system pick one (default 0)')
    parser.add_argument('--time-scale', type=float, default=0.05,
                        help='real seconds per PVE second; 0 finishes tasks at once (default 0.05)')
    parser.add_argument('--clone-secs', type=float, default=0,
                        help='PVE seconds a clone task takes, under the new VM\'s clone lock (default 0)')
    parser.add_argument('--migrate-secs', type=float, default=None,
                        help='PVE seconds a migration holds the migrate lock (default 30)')
    parser.add_argument('--start-secs', type=float, default=0,
                        help='PVE seconds starting a VM made by a clone takes (default 0)')
    parser.add_argument('--state-file', help='also write the JSON line (and the pid) to this file while serving')
    parser.add_argument('--pki-dir', help='directory for the certificate and key (kept); default: a temporary one')
    parser.add_argument('--token-id', default='root@pam!pkvm', help='API token id (default root@pam!pkvm)')
    parser.add_argument('--token-secret', default=os.environ.get('PVE_TOKEN_SECRET'),
                        help='API token secret (default: $PVE_TOKEN_SECRET or a random one)')
    parser.add_argument('--password', default=os.environ.get('PVE_PASS', 'secret'),
                        help='root@pam password (default: $PVE_PASS or "secret")')
    args = parser.parse_args(argv)
    from fakepve.__main__ import warn_if_exposed
    warn_if_exposed(args.host, args.password)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
