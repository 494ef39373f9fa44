"""Per-subject order without walking the queue: a later request's tasks wait outside the claim index.

A subject's later request waits for its earlier open one (SPEC invariant 7). The claims enforced that with a
gate evaluated on every waiting task they walked in ``ix_tasks_claim``; one subject with 2,000 open requests
(a sender that retries with fresh request ids) put 18,000 gated tasks at the front of the walk, and every
claim of every request spent 0.5-0.8 s probing them. ``tasks.held`` marks the tasks of a request recorded
behind an open one of its subject; ``ix_tasks_claim`` leaves them out, and the request's turn releases them.
The gate stays in the claim as the rule; ``held`` only keeps the walk short.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"

CLAIMABLE_PREDICATE = "state IN ('pending', 'retrying', 'waiting_vendor')"
CLAIM_INDEX_PREDICATE = f"{CLAIMABLE_PREDICATE} AND NOT held"
HELD_PREDICATE = "held"


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("held", sa.Boolean, nullable=False, server_default=sa.false()))
    op.drop_index("ix_tasks_claim", table_name="tasks")
    op.create_index("ix_tasks_claim", "tasks", ["system", "background", "due_at", "request_seq"],
                    postgresql_where=sa.text(CLAIM_INDEX_PREDICATE), sqlite_where=sa.text(CLAIM_INDEX_PREDICATE))
    op.create_index("ix_tasks_held", "tasks", ["request_seq"],
                    postgresql_where=sa.text(HELD_PREDICATE), sqlite_where=sa.text(HELD_PREDICATE))


def downgrade() -> None:
    op.drop_index("ix_tasks_held", table_name="tasks")
    op.drop_index("ix_tasks_claim", table_name="tasks")
    op.create_index("ix_tasks_claim", "tasks", ["system", "background", "due_at", "request_seq"],
                    postgresql_where=sa.text(CLAIMABLE_PREDICATE), sqlite_where=sa.text(CLAIMABLE_PREDICATE))
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("held")
