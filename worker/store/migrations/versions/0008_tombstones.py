"""Verification and tombstones: the keyed hashes of erased subjects' identifiers, and the resurrection
scans' counts.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table(
        "tombstones",
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("subject_ref", sa.String(80)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "digest", name="pk_tombstones"),
    )
    op.create_index("ix_tombstones_expires_at", "tombstones", ["expires_at"])
    op.create_table(
        "verification_scans",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("scanned", sa.Integer, nullable=False),
        sa.Column("found", sa.Integer, nullable=False),
        sa.Column("subjects", sa.Integer, nullable=False),
        sa.Column("emitted", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_verification_scans"),
    )


def downgrade() -> None:
    op.drop_table("verification_scans")
    op.drop_index("ix_tombstones_expires_at", table_name="tombstones")
    op.drop_table("tombstones")
