"""Table definitions (SQLAlchemy Core). Changes ship as Alembic migrations in ``migrations/versions``.

Only ``requests.subject_json`` and ``requests.reason`` may hold personal data, and both are purged
when a request reaches a terminal state. ``outbox.value`` may hold a DLQ copy of a raw command
until it is published, then the row is deleted.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
})

Timestamp = sa.DateTime(timezone=True)
# The states a task can be claimed from (worker.states.CLAIMABLE), as SQL: the predicate of ix_tasks_claim.
CLAIMABLE_PREDICATE = "state IN ('pending', 'retrying', 'waiting_vendor')"
# Tasks that wait their turn behind an earlier open request of the subject stay out of ix_tasks_claim (0012), and
# so do those that wait for a sibling of their request (0015).
CLAIM_INDEX_PREDICATE = f"{CLAIMABLE_PREDICATE} AND NOT held AND NOT blocked"
HELD_PREDICATE = "held"
BLOCKED_PREDICATE = "blocked"
# Calls in flight: the predicate of ix_tasks_running.
RUNNING_PREDICATE = "state = 'running'"
# What an operator did by hand, as the audit trail names it (``Store._operate``: the event's class, lower-cased),
# and as ``oubli_operator_actions_total`` labels it. The predicate of ix_audit_events_operator.
OPERATOR_ACTIONS = {"operatorconfirm": "confirm", "operatorretry": "retry"}
OPERATOR_PREDICATE = f"action IN ({', '.join(repr(action) for action in OPERATOR_ACTIONS)})"

requests = sa.Table(
    "requests", metadata,
    # seq orders requests of one subject: intake order, not timestamps.
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False, unique=True),
    sa.Column("kind", sa.String(16)),
    sa.Column("status", sa.String(24), nullable=False, index=True),
    sa.Column("subject_ref", sa.String(80), index=True),
    sa.Column("body_digest", sa.String(64)),
    sa.Column("subject_json", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("requested_by", sa.String(128)),
    sa.Column("requested_at", Timestamp, index=True),
    sa.Column("due_at", Timestamp),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("completed_at", Timestamp),
    sa.Column("purged_at", Timestamp),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.String(1000)),
    sa.Column("export_json", sa.Text),
    # standard or background: claims serve standard first at every system (worker.store.claims).
    sa.Column("priority", sa.String(16), nullable=False, default="standard", server_default="standard"),
)

tasks = sa.Table(
    "tasks", metadata,
    sa.Column("request_id", sa.String(128), sa.ForeignKey("requests.request_id"), primary_key=True),
    sa.Column("system", sa.String(64), primary_key=True),
    sa.Column("request_seq", sa.Integer, nullable=False),
    sa.Column("state", sa.String(24), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", Timestamp),
    sa.Column("outcome", sa.String(24)),
    sa.Column("vendor_ref", sa.String(256)),
    sa.Column("expected_by", Timestamp),
    sa.Column("detail", sa.String(500)),
    sa.Column("records", sa.Integer, nullable=False, default=0),
    sa.Column("retained_json", sa.Text),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.String(1000)),
    sa.Column("confirmed_at", Timestamp),
    sa.Column("confirmed_by", sa.String(128)),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_expires_at", Timestamp),
    sa.Column("version", sa.Integer, nullable=False, default=0),
    sa.Column("lease_losses", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("waiting_since", Timestamp),  # first handed to an async vendor job (the vendor-wait deadline)
    # The request's priority and deadline, copied at intake: claims walk ix_tasks_claim in claim order.
    sa.Column("background", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("due_at", Timestamp),
    # Recorded behind an earlier open request of the subject: out of the claims' walk until that one ends.
    sa.Column("held", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    # Waits for a sibling of its request to confirm (worker.store.order): out of the claims' walk until it has.
    sa.Column("blocked", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    # Partial indexes only: a task is in ix_tasks_claim while it waits and in ix_tasks_running during its call,
    # so each of its writes touches the primary key and at most one of them (migration 0011).
    sa.Index("ix_tasks_running", "system", "lease_expires_at",
             postgresql_where=sa.text(RUNNING_PREDICATE), sqlite_where=sa.text(RUNNING_PREDICATE)),
    sa.Index("ix_tasks_claim", "system", "background", "due_at", "request_seq",
             postgresql_where=sa.text(CLAIM_INDEX_PREDICATE), sqlite_where=sa.text(CLAIM_INDEX_PREDICATE)),
    sa.Index("ix_tasks_held", "request_seq",
             postgresql_where=sa.text(HELD_PREDICATE), sqlite_where=sa.text(HELD_PREDICATE)),
    sa.Index("ix_tasks_blocked", "request_id",
             postgresql_where=sa.text(BLOCKED_PREDICATE), sqlite_where=sa.text(BLOCKED_PREDICATE)),
)

audit_events = sa.Table(
    "audit_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False, index=True),
    sa.Column("system", sa.String(64)),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("from_state", sa.String(24)),
    sa.Column("to_state", sa.String(24)),
    sa.Column("attempt", sa.Integer),
    sa.Column("error_code", sa.String(64)),
    sa.Column("detail", sa.String(1000)),
    sa.Index("ix_audit_events_operator", "action", "system",
             postgresql_where=sa.text(OPERATOR_PREDICATE), sqlite_where=sa.text(OPERATOR_PREDICATE)),
)

outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("key", sa.LargeBinary),
    sa.Column("value", sa.LargeBinary),
    sa.Column("headers_json", sa.Text),
    sa.Column("created_at", Timestamp, nullable=False),
)

# One row per dead-lettered record (``Store.record_invalid``): the sha256 of where it was (topic/partition/offset),
# its key and its value. A record redelivered after a crash between its recording and the offset commit is then
# dead-lettered once, not twice; a different record at the same place (a recreated topic) has another fingerprint.
# Nothing personal: a hash of a whole record. Rows older than ``DEAD_LETTER_MEMORY`` are pruned as new ones come.
dead_letters = sa.Table(
    "dead_letters", metadata,
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("created_at", Timestamp, nullable=False, index=True),
)

leases = sa.Table(
    "leases", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("expires_at", Timestamp, nullable=False),
    # New at each take-over (the outbox relay's): renewals and deletes check it (worker/store/outbox.py).
    sa.Column("token", sa.String(64)),
)

# Vendor rate limits shared by every worker on the store (``worker.store.ratelimits``). Neither
# table holds personal data: keys name a vendor and a configured property, project or app.
rate_buckets = sa.Table(
    "rate_buckets", metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    # GCRA's theoretical arrival time, in epoch seconds: plain arithmetic in SQL on both stores.
    sa.Column("tat", sa.Double, nullable=False),
)

rate_quotas = sa.Table(
    "rate_quotas", metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),  # the calendar day in the quota's time zone
    sa.Column("used", sa.Integer, nullable=False),
)

# ``oubli web``: one row per confirmation code handed to Meta's data deletion callback (worker/web).
# No personal data: the code is kept only as its SHA-256 (it is the key to a status page) and sealed
# with a pad derived from the app-scoped user id, so that only a call from the same user can show it
# again; the user is named by a keyed hash. ``request_id`` is NULL when the identity system held no data.
web_confirmations = sa.Table(
    "web_confirmations", metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("sealed_code", sa.String(64), nullable=False),
    sa.Column("user_ref", sa.String(80), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("request_id", sa.String(128)),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("published_at", Timestamp),
    sa.UniqueConstraint("user_ref", "generation", name="uq_web_confirmations_user_generation"),
)

# Tombstones of erased subjects (``worker.store.verification``): keyed hashes of their identifiers, never
# a value, kept until ``expires_at`` so the resurrection scan can find data that comes back.
tombstones = sa.Table(
    "tombstones", metadata,
    sa.Column("kind", sa.String(40), primary_key=True),  # customer_id, email, phone or a vendor id kind
    sa.Column("digest", sa.String(80), primary_key=True),  # worker.core.identifiers.keyed_hash
    sa.Column("request_id", sa.String(128), nullable=False),  # the latest erasure of this identifier
    sa.Column("subject_ref", sa.String(80)),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("expires_at", Timestamp, nullable=False, index=True),
)

# One row per resurrection scan (``oubli verify``): counts only; the worker's gauges read the latest.
verification_scans = sa.Table(
    "verification_scans", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp, nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("scanned", sa.Integer, nullable=False),  # rows and objects read
    sa.Column("found", sa.Integer, nullable=False),  # of them, naming an erased subject
    sa.Column("subjects", sa.Integer, nullable=False),  # erased subjects found again
    sa.Column("emitted", sa.Integer, nullable=False),  # erasure commands acknowledged by the broker
)
