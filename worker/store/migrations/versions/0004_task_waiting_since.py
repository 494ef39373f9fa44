"""When a task first handed its work to an async vendor job: the vendor-wait deadline counts from it.

Tasks already waiting on a vendor when this runs get no date; their wait counts from their next poll.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("waiting_since", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("waiting_since")
