"""Metrics: a partial index of the audit events an operator wrote by hand (``oubli confirm``, ``oubli retry``).

Every worker counts them by system for ``oubli_operator_actions_total`` at each gauge refresh; the audit trail
grows by several rows per request and is kept for good, and this index holds only the few operator rows, so
the count reads them and nothing else.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"

# As worker.store.schema.OPERATOR_PREDICATE was when this revision was written: a migration never changes.
OPERATOR_PREDICATE = "action IN ('operatorconfirm', 'operatorretry')"


def upgrade() -> None:
    op.create_index("ix_audit_events_operator", "audit_events", ["action", "system"],
                    postgresql_where=sa.text(OPERATOR_PREDICATE), sqlite_where=sa.text(OPERATOR_PREDICATE))


def downgrade() -> None:
    op.drop_index("ix_audit_events_operator", table_name="audit_events")
