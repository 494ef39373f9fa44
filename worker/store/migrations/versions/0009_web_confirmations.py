"""Web confirmation codes: the key of a status page handed to Meta's data deletion callback, kept
hashed, mapped to the erasure request it started (NULL when no data was held).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.create_table(
        "web_confirmations",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("sealed_code", sa.String(64), nullable=False),
        sa.Column("user_ref", sa.String(80), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(128)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("code_hash", name="pk_web_confirmations"),
        sa.UniqueConstraint("user_ref", "generation", name="uq_web_confirmations_user_generation"),
    )


def downgrade() -> None:
    op.drop_table("web_confirmations")
