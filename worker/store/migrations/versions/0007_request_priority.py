"""Scheduling: each request's priority, standard (the default, every request recorded before) or
background (the retention sweeper, bulk backfills), which claims serve after standard work.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("priority", sa.String(16), nullable=False, server_default="standard"))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("priority")
