"""vm welcome sent at

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 19:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('vm_info', schema=None) as batch_op:
        batch_op.add_column(sa.Column('welcome_sent_at', sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('vm_info', schema=None) as batch_op:
        batch_op.drop_column('welcome_sent_at')
