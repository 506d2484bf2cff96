"""The demo Proxmox VE cluster (demo.pve_cluster), driven with proxmoxer over real HTTPS on 127.0.0.1."""

import asyncio
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fakepve.certs import make_cert
from fakepve.server import settle
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from demo.pve_cluster import Cluster, build_demo
from tests.conftest import hold_migrations

HOST = '127.0.0.1'
GIB = 1024 ** 3
ROOT = Path(__file__).resolve().parents[1]
BACKUP_VOLID = re.compile(r'^local:backup/vzdump-qemu-100-\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2}\.vma\.zst$')


class Served:
    """A Cluster served on its own event loop in a daemon thread."""

    def __init__(self, pve, certfile, keyfile):
        self.pve = pve
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name='pve-cluster', daemon=True)
        self.thread.start()
        try:
            self.call(pve.start(certfile, keyfile))
        except BaseException:
            self.halt()
            raise

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def halt(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        if not self.thread.is_alive():
            self.loop.close()

    def stop(self):
        try:
            self.call(settle())
            self.call(self.pve.stop())
        finally:
            self.halt()


@pytest.fixture(scope='session')
def pki(tmp_path_factory):
    certfile, keyfile, _der = make_cert(str(tmp_path_factory.mktemp('pki')), name='pve-cluster', hosts=(HOST,))
    return certfile, keyfile


@pytest.fixture
def start_cluster(pki):
    """start_cluster(time_scale=0) -> (cluster, proxmoxer api logged in with the demo token)."""
    served = []

    def start(time_scale=0.0):
        pve = Cluster(host=HOST, port=0)
        pve.time_scale = time_scale
        demo = build_demo(pve)
        served.append(Served(pve, *pki))
        api = ProxmoxAPI(HOST, port=pve.port, user='root@pam', token_name='pkvm',
                         token_value=demo['token_secret'], verify_ssl=pki[0], timeout=10)
        return pve, api
    yield start
    for one in served:
        one.stop()


@pytest.fixture
def cluster(start_cluster):
    return start_cluster()


def wait(api, upid, timeout=10.0):
    """The final status of a task, polling every 0.05 s."""
    node = upid.split(':')[1]
    deadline = time.monotonic() + timeout
    while True:
        status = api.nodes(node).tasks(upid).status.get()
        if status['status'] == 'stopped':
            return status
        assert time.monotonic() < deadline, 'task {0} still running'.format(upid)
        time.sleep(0.05)


def task_log(api, upid):
    node = upid.split(':')[1]
    return '\n'.join(line['t'] for line in api.nodes(node).tasks(upid).log.get(limit=500))


def ok(api, upid):
    status = wait(api, upid)
    assert status['exitstatus'] == 'OK', task_log(api, upid)
    return status


def clone(api, newid=100, name='web1', template=9000):
    ok(api, api.nodes('pve1').qemu(template).clone.post(newid=newid, name=name, full=1))
    return api.nodes('pve1').qemu(newid)


def content(api, node, storage, **query):
    return {item['volid']: item for item in api.nodes(node).storage(storage).content.get(**query)}


def error_of(call, *args, **kwargs):
    with pytest.raises(ResourceException) as info:
        call(*args, **kwargs)
    return info.value


# ----------------------------------------------------------------- clone, resize


def test_clone_then_resize_grows_and_refuses_to_shrink(cluster):
    pve, api = cluster
    vm = clone(api)
    cfg = vm.config.get()
    assert cfg['scsi0'] == 'local-lvm:vm-100-disk-0,size=2G'
    # The clone has its own cloud-init volume, not the template's.
    assert cfg['ide2'].startswith('local-lvm:vm-100-cloudinit,')

    upid = vm.resize.put(disk='scsi0', size='+3G')
    assert upid.split(':')[5:7] == ['resize', '100']
    ok(api, upid)
    assert vm.config.get()['scsi0'] == 'local-lvm:vm-100-disk-0,size=5G'
    assert content(api, 'pve1', 'local-lvm', vmid=100)['local-lvm:vm-100-disk-0']['size'] == 5 * GIB
    assert pve.storages['local-lvm']['volumes']['vm-100-disk-0']['size'] == 5 * GIB

    ok(api, vm.resize.put(disk='scsi0', size='8G'))  # absolute
    assert vm.config.get()['scsi0'] == 'local-lvm:vm-100-disk-0,size=8G'

    shrink = wait(api, vm.resize.put(disk='scsi0', size='4G'))
    assert shrink['exitstatus'] == 'shrinking disks is not supported'
    assert vm.config.get()['scsi0'].endswith('size=8G')
    assert pve.storages['local-lvm']['volumes']['vm-100-disk-0']['size'] == 8 * GIB

    assert wait(api, vm.resize.put(disk='scsi7', size='+1G'))['exitstatus'] == "disk 'scsi7' does not exist"
    assert wait(api, vm.resize.put(disk='ide2', size='+1G'))['exitstatus'] == "you can't resize a cdrom"
    pve.snapshot_lock(100, 'backup')
    assert wait(api, vm.resize.put(disk='scsi0', size='+1G'))['exitstatus'] == 'VM is locked (backup)'
    pve.unlock(100)
    assert vm.config.get()['scsi0'].endswith('size=8G')


# ------------------------------------------------------------------------ migrate


def test_offline_migrate_with_targetstorage_moves_node_and_disks(cluster):
    pve, api = cluster
    vm = clone(api)
    upid = vm.migrate.post(target='pve2', targetstorage='nfs-vm')
    assert upid.split(':')[1] == 'pve1' and upid.split(':')[5] == 'qmigrate'
    ok(api, upid)
    assert "volume 'local-lvm:vm-100-disk-0' is 'nfs-vm:100/vm-100-disk-0.raw' on the target" in task_log(api, upid)

    cfg = api.nodes('pve2').qemu(100).config.get()
    assert cfg['scsi0'] == 'nfs-vm:100/vm-100-disk-0.raw,size=2G'
    assert cfg['ide2'].startswith('nfs-vm:100/vm-100-cloudinit.qcow2,')
    assert 'lock' not in cfg
    assert error_of(vm.config.get).status_code == 500  # no longer on pve1
    where = {r['vmid']: r['node'] for r in api.cluster.resources.get(type='vm')}
    assert where[100] == 'pve2'
    assert 'nfs-vm:100/vm-100-disk-0.raw' in content(api, 'pve2', 'nfs-vm', vmid=100)
    assert content(api, 'pve1', 'local-lvm', vmid=100) == {}

    # Without a storage map, a disk on local-lvm (configured on both nodes) keeps its volume id.
    other = clone(api, 101, 'web2')
    ok(api, other.migrate.post(target='pve2'))
    assert api.nodes('pve2').qemu(101).config.get()['scsi0'] == 'local-lvm:vm-101-disk-0,size=2G'


def test_migrate_refuses_local_node_and_unknown_node(cluster):
    pve, api = cluster
    vm = clone(api)
    err = error_of(vm.migrate.post, target='pve1')
    assert err.status_code == 400
    assert err.errors == {'target': 'target is local node.'}
    err = error_of(vm.migrate.post, target='pve9')
    assert err.status_code == 500 and err.content == "no such cluster node 'pve9'"
    assert pve.vm(100).node == 'pve1'


def test_running_vm_needs_online_and_local_disks_need_with_local_disks(cluster):
    pve, api = cluster
    vm = clone(api)
    ok(api, vm.status.start.post())
    err = error_of(vm.migrate.post, target='pve2')
    assert err.status_code == 500 and err.content == "can't migrate running VM without --online"

    upid = vm.migrate.post(target='pve2', online=1)
    assert wait(api, upid)['exitstatus'] == 'migration aborted'
    assert "can't live migrate attached local disks without with-local-disks option" in task_log(api, upid)
    assert vm.status.current.get()['status'] == 'running'
    assert pve.vm(100).node == 'pve1' and pve.vm(100).lock is None

    ok(api, vm.migrate.post(target='pve2', online=1, **{'with-local-disks': 1}))
    assert api.nodes('pve2').qemu(100).status.current.get()['status'] == 'running'


def test_migrate_task_is_running_before_it_stops(start_cluster):
    pve, api = start_cluster(time_scale=0.01)
    migration_done = hold_migrations(pve)
    vm = clone(api)
    upid = vm.migrate.post(target='pve2')
    first = api.nodes('pve1').tasks(upid).status.get()
    assert first['status'] == 'running' and 'exitstatus' not in first
    assert vm.status.current.get()['lock'] == 'migrate'
    err = error_of(vm.config.put, description='busy')
    assert err.content == 'VM is locked (migrate)'
    migration_done.set()
    final = wait(api, upid)
    assert final['exitstatus'] == 'OK'
    assert api.nodes('pve2').qemu(100).status.current.get().get('lock') is None


# ------------------------------------------------------------------------- config


def test_config_allocates_detaches_and_frees_disks(cluster):
    pve, api = cluster
    vm = clone(api)
    vm.config.put(scsi1='local-lvm:5')
    assert vm.config.get()['scsi1'] == 'local-lvm:vm-100-disk-1,size=5G'
    assert content(api, 'pve1', 'local-lvm', vmid=100)['local-lvm:vm-100-disk-1']['size'] == 5 * GIB

    ok(api, vm.config.post(scsi2='nfs-vm:1'))  # the asynchronous form; nfs-vm defaults to qcow2
    assert vm.config.get()['scsi2'] == 'nfs-vm:100/vm-100-disk-0.qcow2,size=1G'

    vm.config.put(delete='scsi1')
    cfg = vm.config.get()
    assert 'scsi1' not in cfg and cfg['unused0'] == 'local-lvm:vm-100-disk-1'
    assert 'local-lvm:vm-100-disk-1' in content(api, 'pve1', 'local-lvm', vmid=100)
    vm.config.put(delete='unused0')
    assert 'unused0' not in vm.config.get()
    assert 'local-lvm:vm-100-disk-1' not in content(api, 'pve1', 'local-lvm', vmid=100)

    before = set(pve.storages['local-lvm']['volumes'])
    err = error_of(vm.config.put, scsi3='local-lvm:1,format=qcow2')
    assert err.content == "unsupported format 'qcow2'"
    err = error_of(vm.config.put, scsi3='local:1')
    assert err.status_code == 400 and err.errors == {'storage': "storage 'local' does not support vm images"}
    assert set(pve.storages['local-lvm']['volumes']) == before
    assert 'scsi3' not in vm.config.get()


def test_create_names_cloudinit_volumes_and_destroy_keeps_isos(cluster):
    pve, api = cluster
    pve.store_file('local', 'debian-12.iso', 600 * 1024 ** 2)
    ok(api, api.nodes('pve1').qemu.post(vmid=300, name='plain', scsi0='local-lvm:4', ide2='local-lvm:cloudinit',
                                        ide0='local:iso/debian-12.iso,media=cdrom', net0='virtio,bridge=vmbr0'))
    cfg = api.nodes('pve1').qemu(300).config.get()
    assert cfg['scsi0'] == 'local-lvm:vm-300-disk-0,size=4G'
    assert cfg['ide2'] == 'local-lvm:vm-300-cloudinit,media=cdrom'
    assert set(content(api, 'pve1', 'local-lvm', vmid=300)) == {'local-lvm:vm-300-disk-0',
                                                                 'local-lvm:vm-300-cloudinit'}
    ok(api, api.nodes('pve1').qemu(300).delete(purge=1))
    assert content(api, 'pve1', 'local-lvm', vmid=300) == {}
    assert content(api, 'pve1', 'local', content='iso')['local:iso/debian-12.iso']['size'] == 600 * 1024 ** 2


# ------------------------------------------------------------------ backup, restore


def test_vzdump_then_restore_to_a_new_vmid(cluster):
    pve, api = cluster
    vm = clone(api)
    upid = api.nodes('pve1').vzdump.post(vmid=100, storage='local', compress='zstd', mode='snapshot')
    assert upid.split(':')[5:7] == ['vzdump', '100']
    ok(api, upid)
    backups = api.nodes('pve1').storage('local').content.get(content='backup')
    assert len(backups) == 1
    backup = backups[0]
    assert BACKUP_VOLID.match(backup['volid']), backup['volid']
    assert backup['vmid'] == 100 and backup['content'] == 'backup' and backup['format'] == 'vma.zst'
    assert backup['size'] > 0 and abs(backup['ctime'] - time.time()) < 120
    # local is not shared: pve2's local holds no such backup.
    assert api.nodes('pve2').storage('local').content.get(content='backup') == []

    upid = api.nodes('pve1').qemu.post(vmid=200, archive=backup['volid'], storage='local-lvm')
    assert upid.split(':')[5:7] == ['qmrestore', '200']
    ok(api, upid)
    cfg = api.nodes('pve1').qemu(200).config.get()
    assert cfg['name'] == vm.config.get()['name'] == 'web1'
    assert cfg['scsi0'] == 'local-lvm:vm-200-disk-0,size=2G'
    assert cfg['ide2'].startswith('local-lvm:vm-200-cloudinit,')
    assert {'local-lvm:vm-200-disk-0', 'local-lvm:vm-200-cloudinit'} == set(content(api, 'pve1', 'local-lvm',
                                                                                 vmid=200))

    err = error_of(api.nodes('pve1').qemu.post, vmid=200, archive=backup['volid'])
    assert err.status_code == 500
    assert err.content == "unable to restore VM 200 - VM 200 already exists on node 'pve1'"
    ok(api, api.nodes('pve1').qemu.post(vmid=200, archive=backup['volid'], force=1, name='restored'))
    assert api.nodes('pve1').qemu(200).config.get()['name'] == 'restored'
    # The old disks were replaced, not kept beside the new ones.
    assert len(content(api, 'pve1', 'local-lvm', vmid=200)) == 2

    failed = wait(api, api.nodes('pve1').vzdump.post(vmid=100, storage='local-lvm'))
    assert failed['exitstatus'] == ("could not get storage information for 'local-lvm': "
                                    "can't use storage 'local-lvm' for backups - wrong content type")


# --------------------------------------------------------------------------- rrd


def test_rrddata_is_a_deterministic_series_at_pve_steps(cluster):
    pve, api = cluster
    vm = clone(api)
    clone(api, 101, 'web2')
    hour = vm.rrddata.get(timeframe='hour')
    assert len(hour) == 70
    times = [p['time'] for p in hour]
    assert all(b - a == 60 for a, b in zip(times, times[1:]))
    assert time.time() - 120 < times[-1] <= time.time()
    for point in hour:
        assert {'time', 'cpu', 'maxcpu', 'mem', 'maxmem', 'netin', 'netout', 'diskread', 'diskwrite'} <= set(point)
        assert 0 <= point['cpu'] <= 1 and 0 < point['mem'] <= point['maxmem'] == 1024 ** 3
        assert point['netin'] > 0 and point['netout'] > 0
    again = {p['time']: p for p in vm.rrddata.get(timeframe='hour')}
    assert all(again[p['time']] == p for p in hour if p['time'] in again)
    other = api.nodes('pve1').qemu(101).rrddata.get(timeframe='hour')
    assert [p['netin'] for p in other] != [p['netin'] for p in hour]

    peaks = vm.rrddata.get(timeframe='hour', cf='MAX')
    assert all(m['netin'] >= a['netin'] for m, a in zip(peaks, hour) if m['time'] == a['time'])

    year = vm.rrddata.get(timeframe='year')
    assert len(year) == 70 and year[1]['time'] - year[0]['time'] == 10080 * 60
    first, last = year[:35], year[35:]
    assert sum(p['netin'] for p in last) > sum(p['netin'] for p in first)  # traffic grows
    template = api.nodes('pve1').qemu(9000).rrddata.get(timeframe='day')
    assert len(template) == 70 and all(p['cpu'] == 0 and p['netin'] == 0 for p in template)


# ------------------------------------------------------------------ nodes, storage


def test_node_memory_differs_per_node(cluster):
    pve, api = cluster
    nodes = {n['node']: n for n in api.nodes.get()}
    assert (nodes['pve1']['mem'], nodes['pve1']['maxmem']) == (12 * GIB, 32 * GIB)
    assert (nodes['pve2']['mem'], nodes['pve2']['maxmem']) == (8 * GIB, 64 * GIB)
    assert max(nodes.values(), key=lambda n: n['maxmem'] - n['mem'])['node'] == 'pve2'
    resources = {r['node']: r for r in api.cluster.resources.get(type='node')}
    assert resources['pve2']['maxmem'] - resources['pve2']['mem'] == 56 * GIB
    assert api.nodes('pve1').status.get()['memory']['free'] == 20 * GIB

    pve.node_memory['pve1'] = (2 * GIB, 128 * GIB)
    nodes = {n['node']: n for n in api.nodes.get()}
    assert max(nodes.values(), key=lambda n: n['maxmem'] - n['mem'])['node'] == 'pve1'


def test_storage_limited_to_a_node(cluster):
    pve, api = cluster
    pve.storages['fast-pve1'] = {'type': 'zfspool', 'pool': 'rpool/fast', 'content': 'images,rootdir',
                                 'nodes': 'pve1', 'active': 1, 'files': set(), 'volumes': {}}
    ids = {r['id'] for r in api.cluster.resources.get(type='storage')}
    assert 'storage/pve1/fast-pve1' in ids and 'storage/pve2/fast-pve1' not in ids
    assert 'storage/pve2/local-lvm' in ids
    usage = {r['id']: r for r in api.cluster.resources.get(type='storage')}['storage/pve1/local-lvm']
    assert usage['maxdisk'] == 400 * GIB and usage['disk'] == 2 * (2 * GIB + 4 * 1024 ** 2)  # the templates

    def names(node, **query):
        return {s['storage']: s for s in api.nodes(node).storage.get(**query)}
    assert 'fast-pve1' in names('pve1', enabled=1)
    assert 'fast-pve1' not in names('pve2', enabled=1)
    assert 'fast-pve1' not in names('pve2', content='images')
    listed = names('pve2')['fast-pve1']  # PVE lists it, but neither enabled nor active there
    assert (listed['enabled'], listed['active']) == (0, 0)
    err = error_of(api.nodes('pve2').storage('fast-pve1').content.get)
    assert err.content == "storage 'fast-pve1' is not available on node 'pve2'"

    vm = clone(api)
    vm.config.put(scsi1='fast-pve1:1')
    assert vm.config.get()['scsi1'] == 'fast-pve1:vm-100-disk-0,size=1G'
    err = error_of(vm.migrate.post, target='pve2')
    assert err.content == "storage 'fast-pve1' is not available on node 'pve2'"
    ok(api, vm.migrate.post(target='pve2', targetstorage='local-lvm'))
    cfg = api.nodes('pve2').qemu(100).config.get()
    assert cfg['scsi1'] == 'local-lvm:vm-100-disk-1,size=1G'
    assert 'vm-100-disk-0' not in pve.storages['fast-pve1']['volumes']


# --------------------------------------------------------------------------- CLI


def _read_line(stream, timeout):
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    data = b''
    deadline = time.monotonic() + timeout
    while b'\n' not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, 'no line from the CLI: {0!r}'.format(data)
        if selector.select(min(remaining, 0.2)):
            chunk = os.read(stream.fileno(), 4096)
            assert chunk, 'the CLI exited: {0!r}'.format(data)
            data += chunk
    return data.split(b'\n', 1)[0].decode()


def test_cli_prints_its_address_and_serves_until_sigterm(tmp_path):
    state = tmp_path / 'state.json'
    proc = subprocess.Popen([sys.executable, '-m', 'demo.pve_cluster', '--port', '0', '--time-scale', '0',
                             '--state-file', str(state)], cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        info = json.loads(_read_line(proc.stdout, 30))
        assert set(info) == {'url', 'host', 'port', 'token_id', 'token_secret', 'ca_file'}
        assert info['url'] == 'https://127.0.0.1:{0}'.format(info['port']) and info['port'] > 0
        assert json.loads(state.read_text())['url'] == info['url']
        api = ProxmoxAPI(info['host'], port=info['port'], user='root@pam', token_name=info['token_id'].split('!')[1],
                         token_value=info['token_secret'], verify_ssl=info['ca_file'], timeout=10)
        assert api.version.get()['version']
        assert [n['node'] for n in api.nodes.get()] == ['pve1', 'pve2']
        assert os.path.exists(info['ca_file'])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
    assert proc.returncode == 0, proc.stderr.read()
    assert not os.path.exists(info['ca_file'])  # the temporary PKI directory is gone
    assert not state.exists()


def test_the_ca_file_is_never_read_half_written(tmp_path):
    """Found while testing: threads that needed a server's CA file at once could find it created but not yet
    written, and their TLS verification failed; the file now appears whole or not at all."""
    import hashlib
    import threading
    from types import SimpleNamespace

    from core.proxmox.client import endpoint_for
    pem = "-----BEGIN CERTIFICATE-----\n" + "A" * 200_000 + "\n-----END CERTIFICATE-----\n"
    server = SimpleNamespace(id=1, ca_pem=pem, address="127.0.0.1", port=8006, token_id="root@pam!t",
                             verify_tls=True)
    seen, start = [], threading.Barrier(16)

    def read():
        start.wait()
        path = endpoint_for(server, "secret", str(tmp_path)).ca_file
        with open(path) as handle:
            seen.append(handle.read() == pem)
    threads = [threading.Thread(target=read) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [True] * 16
    digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
    assert [p.name for p in (tmp_path / "ca").iterdir()] == [f"server-1-{digest}.pem"]  # no partial file left
