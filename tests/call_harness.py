"""One erasure through a real executor on a SQLite store, for tests of what a call's answer leaves behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.scheduling import KEY
from worker import messages, states
from worker.config import Topics
from worker.core.connector import Subject
from worker.executor import Executor
from worker.store import db
from worker.store.repository import Store
from worker.store.schema import audit_events, outbox
from worker.support import build_command

EMAIL, PHONE, CUSTOMER = "marie.dupont@example.fr", "+33612345678", "C-100234"
SUBJECT = Subject(request_id="r-1", subject_ref="hmac-sha256:test", customer_id=CUSTOMER, emails=(EMAIL,),
                  phones=(PHONE,), identifiers={"ga_client_id": ("555.777",)})


def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite store, for a test module's ``store`` fixture."""
    engine = db.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    db.migrate(engine)
    yield Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="worker-0")
    engine.dispose()


def _record(store: Store, system: str, now: datetime) -> str:
    body = build_command(kind="erasure", customer_id=CUSTOMER, emails=[EMAIL], phones=[PHONE],
                         requested_at=now, requested_by="call-harness")
    parsed = messages.parse(body, value=b"", signature=None, signing_secret=None, known_systems=frozenset({system}))
    store.record_command(parsed, subject_ref=messages.subject_ref(KEY, parsed.customer_id),
                         digest=messages.body_digest(KEY, body), targets={system: 8}, now=now)
    return str(body["request_id"])


def run_to_the_end(executor: Executor, seconds: float = 10) -> None:
    """One turn that starts what is due, then turns until every call started has been recorded; shuts down."""
    try:
        executor.tick()
        deadline = time.monotonic() + seconds
        while executor.busy():
            assert time.monotonic() < deadline, "the calls never ended"
            executor.wait_for_calls(0.05)
            executor.tick(accept_new=False)
    finally:
        executor.shutdown()


def run_call(store: Store, connector: Any, system: str) -> tuple[dict[str, Any], str]:
    """Records one erasure, runs its call through a real executor, and returns the task row and every byte the
    store holds about it (receipts in the outbox, the audit trail)."""
    now = datetime.now(UTC)
    request_id = _record(store, system, now)
    run_to_the_end(Executor(store, {system: connector}, concurrency={system: 1}, max_in_flight=2, lease_seconds=60,
                            clock=lambda: now))
    _, (task,), _ = store.get(request_id)
    with store.engine.connect() as conn:
        kept = [repr(row) for row in conn.execute(sa.select(outbox)).all()]
        kept += [repr(row) for row in conn.execute(sa.select(audit_events)).all()]
    return task, "\n".join(kept) + repr(store.receipt(request_id))
