"""Sibling order without walking the queue: a task that waits for a sibling of its request stays out of the claim index.

A request's final steps (``_verify``, ``_package``) wait for every system of the request, and its systems for
``_identity``. The claims enforce that with a probe of the siblings of every waiting task they walk in
``ix_tasks_claim``; in a burst of 1,000 erasures, every claim walked and probed each waiting ``_verify`` task and
took 4-10 ms. ``tasks.blocked`` marks a task that waits for a sibling; ``ix_tasks_claim`` leaves it out, and the
write that confirms its last sibling releases it (``worker.store.order``). Existing tasks start unblocked: the
probe stays in the claim as the rule, so they are claimed in order as before, only walked.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"

# As worker.store.schema's predicates were when this revision was written: a migration never changes.
CLAIMABLE_PREDICATE = "state IN ('pending', 'retrying', 'waiting_vendor')"
BEFORE = f"{CLAIMABLE_PREDICATE} AND NOT held"
AFTER = f"{CLAIMABLE_PREDICATE} AND NOT held AND NOT blocked"
BLOCKED_PREDICATE = "blocked"


def _claim_index(predicate: str) -> None:
    op.drop_index("ix_tasks_claim", table_name="tasks")
    op.create_index("ix_tasks_claim", "tasks", ["system", "background", "due_at", "request_seq"],
                    postgresql_where=sa.text(predicate), sqlite_where=sa.text(predicate))


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("blocked", sa.Boolean, nullable=False, server_default=sa.false()))
    _claim_index(AFTER)
    op.create_index("ix_tasks_blocked", "tasks", ["request_id"],
                    postgresql_where=sa.text(BLOCKED_PREDICATE), sqlite_where=sa.text(BLOCKED_PREDICATE))


def downgrade() -> None:
    op.drop_index("ix_tasks_blocked", table_name="tasks")
    _claim_index(BEFORE)
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("blocked")
