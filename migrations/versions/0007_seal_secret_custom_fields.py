"""seal secret custom fields

Custom fields named like a secret (a "Root Password" field) were stored as WHMCS sent them; they are stored
encrypted now, as the service password is. This seals what the services table holds already, with the
instance's data key (the app's, which runs the migration). The downgrade leaves them sealed: the code before
this revision never reads them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 05:20:00

"""
import json

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    from core.accounts import sealed_fields
    from core.vault import PREFIX

    services = sa.table('services', sa.column('id', sa.Integer), sa.column('customfields', sa.JSON))
    connection = op.get_bind()
    for service_id, fields in connection.execute(sa.select(services.c.id, services.c.customfields)).all():
        if isinstance(fields, str):  # a JSON column some backends hand back as its text
            fields = json.loads(fields)
        if not isinstance(fields, dict):
            continue
        plain = {k: v for k, v in fields.items() if not (isinstance(v, str) and v.startswith(PREFIX))}
        sealed = {**fields, **sealed_fields(plain)}
        if sealed != fields:
            connection.execute(services.update().where(services.c.id == service_id).values(customfields=sealed))


def downgrade():
    pass
