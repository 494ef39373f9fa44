"""Indexes for what operators and metrics ask of a store that keeps years of requests: open requests
by status (``/metrics`` every 15 s, ``oubli requests``) and a period by ``requested_at`` (``oubli report``).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_index("ix_requests_status", "requests", ["status"])
    op.create_index("ix_requests_requested_at", "requests", ["requested_at"])


def downgrade() -> None:
    op.drop_index("ix_requests_requested_at", table_name="requests")
    op.drop_index("ix_requests_status", table_name="requests")
