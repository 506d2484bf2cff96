"""Cluster-wide decisions: a free VMID, the node a new VM should live on, and the connection check."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from ..extensions import db
from ..models import VM
from .client import ProxmoxError, Pve

# What the token needs for the whole lifecycle (deploy, change package, snapshots, backups, terminate).
REQUIRED_PRIVILEGES = (
    "VM.Allocate", "VM.Clone", "VM.Audit", "VM.PowerMgmt", "VM.Migrate", "VM.Snapshot", "VM.Backup",
    "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Disk", "VM.Config.Network", "VM.Config.Options",
    "VM.Config.Cloudinit", "Datastore.AllocateSpace", "Datastore.Audit", "Sys.Audit",
)


def choose_vmid(pve: Pve, server_id: int, first_vmid: int, exclude: set[int] | None = None,
                resources: list[dict] | None = None) -> int:
    """The lowest VMID at or above first_vmid that neither our records nor the cluster use (``resources``:
    its /cluster/resources, if read already: only guests there carry a vmid), confirmed by PVE's own
    /cluster/nextid check (which also knows IDs reserved by running tasks)."""
    if resources is None:
        resources = pve.get("cluster", "resources", type="vm") or []
    taken = {int(item["vmid"]) for item in resources if "vmid" in item} | set(exclude or ())
    taken |= set(db.session.scalars(select(VM.vmid).where(VM.server_id == server_id, VM.vmid >= first_vmid)))
    candidate = max(first_vmid, 100)
    for _ in range(1000):
        while candidate in taken:
            candidate += 1
        try:
            confirmed = int(pve.get("cluster", "nextid", vmid=candidate))
        except ProxmoxError as exc:
            if exc.status == 400:  # "VM <id> already exists"
                taken.add(candidate)
                continue
            raise
        if confirmed == candidate:
            return candidate
        taken.add(candidate)
    raise ProxmoxError(f"no free VMID found from {first_vmid}")


@dataclass(frozen=True)
class NodeChoice:
    node: str | None
    reason: str


def choose_target_node(resources: list[dict], storage: str, wanted: str = "") -> NodeChoice:
    """The node a new VM should run on: the product's target node if it is online and has the storage,
    otherwise (automatic) the online node with the storage and the most free RAM. ``resources``: the
    cluster's /cluster/resources."""
    online = {r["node"]: int(r.get("maxmem", 0)) - int(r.get("mem", 0))
              for r in resources if r.get("type") == "node" and r.get("status") == "online"}
    with_storage = {r["node"] for r in resources if r.get("type") == "storage" and r.get("storage") == storage
                    and r.get("status") == "available"}
    if wanted:
        if wanted not in online:
            return NodeChoice(None, f"target node {wanted} is not online")
        if storage and wanted not in with_storage:
            return NodeChoice(None, f"target node {wanted} has no storage {storage}")
        return NodeChoice(wanted, "product target node")
    candidates = [n for n in online if not storage or n in with_storage]
    if not candidates:
        return NodeChoice(None, f"no online node has storage {storage}")
    best = max(candidates, key=lambda n: (online[n], n))
    return NodeChoice(best, "most free RAM")


def storage_on_node(resources: list[dict], storage: str, node: str) -> bool:
    """Whether the storage is enabled and available on the node (``resources``: /cluster/resources)."""
    return any(r.get("type") == "storage" and r.get("storage") == storage and r.get("node") == node
               and r.get("status") == "available" for r in resources)


def vm_location(pve: Pve, vmid: int, resources: list[dict] | None = None) -> dict | None:
    """The VM's /cluster/resources entry (node, name, status, lock, template), or None; from ``resources``
    when the caller has read them already."""
    if resources is None:
        resources = pve.get("cluster", "resources", type="vm") or []
    for item in resources:
        if item.get("type") in ("qemu", "lxc") and int(item.get("vmid", -1)) == vmid:
            return item
    return None


def is_ours(found: dict | None, name: str, vmid: int) -> bool:
    """Whether the VM found on a VMID we reserved (its vm_location entry) is the one we made: it carries our
    name, or it is still being cloned. Proxmox writes a clone's name only when the copy is done; until then
    its config holds the clone lock and no name (cluster/resources shows "VM <vmid>")."""
    if found is None:
        return False
    if found.get("name") == name:
        return True
    return found.get("lock") == "clone" and found.get("name") in (None, "", f"VM {vmid}")


def check_connection(pve: Pve) -> str | None:
    """None when the API answers and the token holds every privilege we need; otherwise what to fix."""
    try:
        pve.get("version")
        perms = pve.get("access", "permissions") or {}
    except ProxmoxError as exc:
        return exc.message
    held: set[str] = set()
    for path in ("/", "/vms", "/storage", "/nodes"):
        held |= {name for name, flag in (perms.get(path) or {}).items() if flag}
    missing = [p for p in REQUIRED_PRIVILEGES if p not in held]
    if missing:
        return ("the API token lacks privileges: " + ", ".join(missing) +
                ". Give the token (or, with privilege separation off, its user) the PVEVMAdmin and "
                "PVEDatastoreUser roles on /, or a custom role with these privileges")
    return None
