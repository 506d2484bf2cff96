"""datetimes keep their microseconds on MariaDB/MySQL too

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 22:10:00

A plain DATETIME on MariaDB keeps whole seconds only, so a lease or a next run read back there was up to a
second earlier than written (PostgreSQL and SQLite keep microseconds). DATETIME(6) everywhere on MariaDB;
nothing changes on the other two.
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

COLUMNS = (  # (table, column, nullable): every UTCDateTime column
    ("cron_locks", "acquired_at", False),
    ("cron_tasks", "last_run_at", True),
    ("dns_zones", "created_at", False),
    ("login_attempts", "at", False),
    ("module_log", "at", False),
    ("products", "updated_at", False),
    ("servers", "updated_at", False),
    ("admins", "last_login_at", True),
    ("admins", "created_at", False),
    ("api_tokens", "created_at", False),
    ("api_tokens", "last_used_at", True),
    ("api_tokens", "revoked_at", True),
    ("services", "updated_at", False),
    ("ip_addresses", "allocated_at", True),
    ("vm_info", "welcome_sent_at", True),
    ("vm_info", "task_started_at", True),
    ("vm_info", "last_error_at", True),
    ("vm_info", "lease_until", True),
    ("vm_info", "next_run_at", True),
    ("vm_info", "created_at", False),
    ("vm_info", "updated_at", False),
    ("vm_runs", "started_at", False),
    ("vm_runs", "finished_at", True),
)


def _alter(new, old) -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table, column, nullable in COLUMNS:
        op.alter_column(table, column, type_=new, existing_type=old, existing_nullable=nullable)


def upgrade():
    _alter(mysql.DATETIME(fsp=6), sa.DateTime())


def downgrade():
    _alter(sa.DateTime(), mysql.DATETIME(fsp=6))
