"""Throughput: a partial index of running tasks in place of ``ix_tasks_due`` (state, next_attempt_at).

Every task is written three times (recorded, claimed, confirmed), and each write of a row added an
entry to every index that covers it: ``state`` changes on each, so none is a HOT update. Waiting
tasks are found through ``ix_tasks_claim`` (system first, only claimable states), so the full index
on ``state`` served only the running ones: the count of calls in flight per system, expired leases
and a restarted worker's own leases. ``ix_tasks_running`` holds just those rows, so a task's three
writes add five index entries instead of seven. Measured in ``bench/capacity.py --write-floor``.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"

RUNNING_PREDICATE = "state = 'running'"


def upgrade() -> None:
    op.create_index("ix_tasks_running", "tasks", ["system", "lease_expires_at"],
                    postgresql_where=sa.text(RUNNING_PREDICATE), sqlite_where=sa.text(RUNNING_PREDICATE))
    op.drop_index("ix_tasks_due", table_name="tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_due", "tasks", ["state", "next_attempt_at"])
    op.drop_index("ix_tasks_running", table_name="tasks")
