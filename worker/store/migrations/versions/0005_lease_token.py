"""A token on each lease, new at every take-over: the outbox relay's renewals and deletes check it, so
an old holder (a stalled worker, or a restarted one's previous incarnation) can no longer act.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("token", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("token")
