"""The module's data, as opposed to the product's own: what the addon's "Delete all database tables when module
is deactivated" setting removes when WHMCS deactivates the addon (the original drops its tables then).

Removed: the servers, clients, products and services WHMCS told us about, the VM records with their logs, the
IP pools with their addresses, the DNS zones, the module log, the cron state and the module settings (back to
their defaults). Kept: the panel's admins, access groups and API tokens, and the bridge's nonces (a call seen
before stays refused). Proxmox, the DNS servers and WHMCS are not touched.
"""
from __future__ import annotations

from sqlalchemy import delete

from .extensions import db
from .models import (VM, Client, CronLock, CronTask, DnsZone, IPAddress, IPPool, ModuleLog, Product, Server,
                     Service, Setting, VMRun)

# Children before parents (foreign keys).
MODULE_TABLES = (VMRun, IPAddress, VM, Service, IPPool, DnsZone, Client, Product, Server, ModuleLog, CronTask,
                 CronLock, Setting)


def delete_module_data() -> dict[str, int]:
    """Delete every row of the module's tables in one transaction; returns the rows removed per table."""
    removed = {}
    try:
        for model in MODULE_TABLES:
            table = model.__table__
            removed[table.name] = db.session.execute(delete(table)).rowcount
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return removed
