"""The Alembic migrations build exactly the schema the models describe, on every backend."""
from __future__ import annotations

from contextlib import contextmanager

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from core.extensions import db
from tests.conftest import database_url, make_app

import pytest


@contextmanager
def migrated(tmp_path, kind: str):
    """An app on a fresh database of that kind, built by the migrations (not by create_all)."""
    url, drop = database_url(kind, tmp_path)
    app = make_app(tmp_path, url)
    try:
        with app.app_context():
            db.drop_all()
            upgrade()
            yield app
            db.session.remove()
            db.engine.dispose()
    finally:
        drop()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_upgrade_matches_models_and_downgrades(tmp_path, kind):
    with migrated(tmp_path, kind):
        tables = set(inspect(db.engine).get_table_names())
        assert {"vm_info", "ip_addresses", "ip_pools", "services", "bridge_nonces"} <= tables
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata)
        assert diff == []
        downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}


def test_a_table_rebuild_on_sqlite_keeps_the_rows_that_point_at_it(tmp_path):
    """Found in review: on SQLite a batch migration rebuilds a table (copy, DROP, rename); with the app's
    foreign keys on, the DROP of vm_info cascaded into vm_runs and every VM's log was gone (or, for a parent
    without a cascade, the migration was refused). Foreign keys are off while migrating, and checked after."""
    from sqlalchemy import text
    app = make_app(tmp_path, f"sqlite:///{tmp_path / 'mig.sqlite3'}")
    with app.app_context():
        db.drop_all()
        upgrade()
        from core.models import VMRun
        from tests.conftest import one_vm
        one_vm("ready")
        db.session.add_all([VMRun(service_id=7, action="deploy", from_status="creation", to_status="ready",
                                  result="success", steps=[]) for _ in range(3)])
        db.session.commit()
        db.session.remove()
        downgrade(revision="0004")  # 0005 is a batch change of vm_info: the table is rebuilt
        upgrade()
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM vm_runs")).scalar() == 3
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        db.session.remove()
        db.engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_datetimes_keep_their_microseconds_on_every_backend(tmp_path, kind):
    """Found in review: MariaDB's plain DATETIME kept whole seconds, so a lease read back there ended up to a
    second before it was written; migration 0006 makes it DATETIME(6)."""
    from datetime import datetime, timezone

    from core.models import CronTask
    with migrated(tmp_path, kind):
        when = datetime(2026, 4, 10, 3, 50, 0, 999_999, tzinfo=timezone.utc)
        db.session.add(CronTask(name="processVirtualMachines", last_run_at=when))
        db.session.commit()
        db.session.expire_all()
        stored = db.session.get(CronTask, "processVirtualMachines").last_run_at
        assert stored.replace(tzinfo=timezone.utc) == when
        db.session.remove()
        downgrade(revision="0005")
        upgrade()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_custom_fields_named_like_a_secret_are_sealed_by_the_upgrade(tmp_path, kind):
    """Found in an audit: a "Root Password" custom field was stored as WHMCS sent it. New calls store it
    encrypted; migration 0007 encrypts what the services table holds already (once: a sealed value stays)."""
    from sqlalchemy import text

    from core.models import Service
    from core.vault import unseal
    from tests.conftest import one_vm
    with migrated(tmp_path, kind):
        downgrade(revision="0006")
        one_vm("ready")
        db.session.execute(text("UPDATE services SET customfields = :fields WHERE id = 7"),
                           {"fields": '{"Root Password": "cf-root-pw", "SSH Key": "ssh-ed25519 AAAA", "Note": ""}'})
        db.session.commit()
        db.session.remove()
        upgrade()
        fields = db.session.get(Service, 7).customfields
        assert fields["Root Password"].startswith("enc:v1:") and unseal(fields["Root Password"]) == "cf-root-pw"
        assert fields["SSH Key"] == "ssh-ed25519 AAAA" and fields["Note"] == ""
        sealed = fields["Root Password"]
        db.session.remove()
        downgrade(revision="0006")
        upgrade()
        assert db.session.get(Service, 7).customfields["Root Password"] == sealed
        db.session.remove()
