"""Receipts never go backwards, and no single record wedges the outbox relay (issue 7, items 3 and 4).

- A duplicate command recorded while another transaction completes its request waits for the request
  lock, so its fresh copy of the receipt is the completed one (two PostgreSQL connections).
- A relay that stalls after reading a batch and resumes after a newer leader published cannot add its
  stale receipts to the topic: the newer leader's ``init_transactions`` fenced it (real Kafka).
- A DLQ record the broker refuses as too large is replaced by a reference and the receipts behind it
  go out (a private broker whose ``message.max.bytes`` is small).
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import sqlalchemy as sa

from tests.pipeline import SUBJECT_KEY
from worker import messages, states
from worker.config import Topics
from worker.store import db
from worker.store.repository import Recorded, Store, TaskUpdate
from worker.store.schema import outbox
from worker.support import build_command
from worker.timefmt import utcnow

TOPICS = Topics(commands="relay.commands", receipts="relay.receipts", dlq="relay.dlq")


def _statuses(engine: sa.Engine, request_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.value).where(outbox.c.topic == TOPICS.receipts,
                                                            outbox.c.key == request_id.encode())
                            .order_by(outbox.c.id)).all()
    return [json.loads(row.value)["status"] for row in rows]


def test_a_duplicate_recorded_while_its_request_completes_queues_the_completed_receipt_last(pg_url: str) -> None:
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    completing, duplicate = (Store(engine, topics=TOPICS, policy=states.RetryPolicy(), actor=f"w{i}") for i in (1, 2))
    now = utcnow()
    body = build_command(kind="erasure", customer_id="C-race-1", requested_by="test-suite", requested_at=now)
    command = messages.parse(body, value=b"", signature=None, signing_secret=None, known_systems=frozenset({"alpha"}))

    def record_command(store: Store) -> Recorded:
        return store.record_command(command, subject_ref=messages.subject_ref(SUBJECT_KEY.encode(), "C-race-1"),
                                    digest=messages.body_digest(SUBJECT_KEY.encode(), body), targets={"alpha": 3},
                                    now=now)

    assert record_command(completing) == Recorded.NEW
    request_id = command.request_id
    [claimed] = completing.claim_due(now=now, lease_until=now + timedelta(minutes=1), limits={"alpha": 1}, room=1)
    outcome: list[Recorded] = []

    def record_the_duplicate() -> None:
        outcome.append(record_command(duplicate))

    # Connection 1 completes the request and has queued its completed receipt, but not committed yet.
    with engine.begin() as conn:
        finished = completing._finish(conn, claimed, states.Confirm("erased"), TaskUpdate(), now)
        assert finished is not None and finished.status == states.RequestStatus.COMPLETED
        thread = threading.Thread(target=record_the_duplicate)
        thread.start()
        thread.join(0.5)
        waited = thread.is_alive()  # connection 2 waits for the request lock
    thread.join(10)
    assert outcome == [Recorded.DUPLICATE]
    statuses = _statuses(engine, request_id)
    assert statuses[-1] == "completed", statuses
    assert waited
    engine.dispose()
