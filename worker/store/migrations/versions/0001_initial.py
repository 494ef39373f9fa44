"""Initial store: requests, tasks, audit events, outbox, leases.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16)),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("subject_ref", sa.String(80)),
        sa.Column("body_digest", sa.String(64)),
        sa.Column("subject_json", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("requested_by", sa.String(128)),
        sa.Column("requested_at", Timestamp),
        sa.Column("due_at", Timestamp),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("completed_at", Timestamp),
        sa.Column("purged_at", Timestamp),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.String(1000)),
        sa.Column("export_json", sa.Text),
        sa.PrimaryKeyConstraint("seq", name="pk_requests"),
        sa.UniqueConstraint("request_id", name="uq_requests_request_id"),
    )
    op.create_index("ix_requests_subject_ref", "requests", ["subject_ref"])
    op.create_table(
        "tasks",
        sa.Column("request_id", sa.String(128), sa.ForeignKey("requests.request_id"), nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("request_seq", sa.Integer, nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", Timestamp),
        sa.Column("outcome", sa.String(24)),
        sa.Column("vendor_ref", sa.String(256)),
        sa.Column("expected_by", Timestamp),
        sa.Column("detail", sa.String(500)),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("retained_json", sa.Text),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.String(1000)),
        sa.Column("confirmed_at", Timestamp),
        sa.Column("confirmed_by", sa.String(128)),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", Timestamp),
        sa.Column("version", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("request_id", "system", name="pk_tasks"),
    )
    op.create_index("ix_tasks_due", "tasks", ["state", "next_attempt_at"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("system", sa.String(64)),
        sa.Column("at", Timestamp, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("from_state", sa.String(24)),
        sa.Column("to_state", sa.String(24)),
        sa.Column("attempt", sa.Integer),
        sa.Column("error_code", sa.String(64)),
        sa.Column("detail", sa.String(1000)),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_request_id", "audit_events", ["request_id"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("key", sa.LargeBinary),
        sa.Column("value", sa.LargeBinary),
        sa.Column("headers_json", sa.Text),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade() -> None:
    for table in ("leases", "outbox", "audit_events", "tasks", "requests"):
        op.drop_table(table)
