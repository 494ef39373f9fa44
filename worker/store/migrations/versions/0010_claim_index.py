"""Throughput: claims walk an index in claim order instead of sorting every due task.

``tasks.background`` and ``tasks.due_at`` copy the request's priority and deadline at intake;
``ix_tasks_claim`` (system, background, due_at, request_seq), only over claimable tasks, serves
the claim order per system, whatever the backlog.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"

CLAIMABLE_PREDICATE = "state IN ('pending', 'retrying', 'waiting_vendor')"


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("background", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("due_at", sa.DateTime(timezone=True)))
    # Tasks recorded before: their request's priority and deadline.
    op.execute("UPDATE tasks SET background = (SELECT requests.priority = 'background' FROM requests "
               "WHERE requests.request_id = tasks.request_id), due_at = (SELECT requests.due_at FROM requests "
               "WHERE requests.request_id = tasks.request_id)")
    op.create_index("ix_tasks_claim", "tasks", ["system", "background", "due_at", "request_seq"],
                    postgresql_where=sa.text(CLAIMABLE_PREDICATE), sqlite_where=sa.text(CLAIMABLE_PREDICATE))


def downgrade() -> None:
    op.drop_index("ix_tasks_claim", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("due_at")
        batch.drop_column("background")
