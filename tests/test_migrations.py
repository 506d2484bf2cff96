"""The Alembic migrations build exactly the schema the models describe, on every backend."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from core.extensions import db
from tests.conftest import database_url, make_app

import pytest


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_upgrade_matches_models_and_downgrades(tmp_path, kind):
    url, drop = database_url(kind, tmp_path)
    app = make_app(tmp_path, url)
    try:
        with app.app_context():
            db.drop_all()
            upgrade()
            tables = set(inspect(db.engine).get_table_names())
            assert {"vm_info", "ip_addresses", "ip_pools", "services", "bridge_nonces"} <= tables
            with db.engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                        db.metadata)
            assert diff == []
            downgrade(revision="base")
            assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
            db.session.remove()
            db.engine.dispose()
    finally:
        drop()
