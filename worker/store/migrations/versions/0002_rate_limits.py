"""Vendor rate limits shared by every worker: GCRA state per name, daily quota counts per day.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("tat", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_rate_buckets"),
    )
    op.create_table(
        "rate_quotas",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("used", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("key", "day", name="pk_rate_quotas"),
    )


def downgrade() -> None:
    op.drop_table("rate_quotas")
    op.drop_table("rate_buckets")
