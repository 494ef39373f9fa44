"""The real ``Intake`` on a real, migrated store, and what one message left behind: for poison and fuzz tests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from devkit.pipeline import SUBJECT_KEY
from worker import states
from worker.config import Topics
from worker.intake import Intake, IntakeResult, Message
from worker.store import db
from worker.store.repository import Store
from worker.store.schema import audit_events, outbox, requests

NOW = datetime(2026, 11, 24, 10, tzinfo=UTC)
SYSTEMS = ("alpha", "beta")
# Every code a dead letter may carry (docs/contract.md): anything else is a bug.
KNOWN_CODES = frozenset({
    "invalid_json", "too_large", "schema_violation", "unsupported_schema_version", "bad_signature",
    "unknown_system", "conflicting_duplicate", "no_systems", "export_not_configured", "internal_error",
    "store_rejected", "out_of_range",
})


@dataclass(frozen=True)
class DeadLetterRow:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    headers_json: str

    @property
    def code(self) -> str:
        return dict(self.headers)["x-oubli-error-code"].decode()


@dataclass(frozen=True)
class Outcome:
    """What one message left: its result, and the DLQ rows, receipts and audit events written for it."""

    result: IntakeResult
    dead_letters: list[DeadLetterRow]
    receipts: list[dict[str, Any]]
    audit: list[dict[str, Any]]

    @property
    def code(self) -> str | None:
        return self.dead_letters[0].code if self.dead_letters else None


class Harness:
    def __init__(self, url: str, *, secret: bytes | None = None, systems: Sequence[str] = SYSTEMS,
                 fast: bool = False) -> None:
        self.engine = db.create_engine(url)
        if fast and url.startswith("sqlite"):
            # Fuzzing only: thousands of commits without an fsync each. Durability is not under test here.
            sa.event.listen(self.engine, "connect", lambda conn, _record: conn.execute("PRAGMA synchronous=OFF"))
        db.migrate(self.engine)
        self.topics = Topics()
        self.store = Store(self.engine, topics=self.topics, policy=states.RetryPolicy(), actor="test")
        self.intake = Intake(self.store, subject_key=SUBJECT_KEY.encode(), signing_secret=secret,
                             systems=dict.fromkeys(systems, 3))
        self.offset = 0
        self.seen_outbox = self.seen_audit = 0

    def send(self, value: bytes | None, headers: Iterable[tuple[str, bytes]] = (), key: bytes | None = b"C-1",
             now: datetime = NOW) -> Outcome:
        self.offset += 1
        source = f"{self.topics.commands}/0/{self.offset}"
        result = self.intake.handle(Message(value=value, key=key, headers=list(headers), source=source), now)
        with self.engine.connect() as conn:
            written = conn.execute(sa.select(outbox).where(outbox.c.id > self.seen_outbox).order_by(outbox.c.id)).all()
            audit = [dict(r) for r in conn.execute(sa.select(audit_events).where(audit_events.c.id > self.seen_audit)
                                                   .order_by(audit_events.c.id)).mappings()]
        self.seen_outbox = max([self.seen_outbox, *(r.id for r in written)])
        self.seen_audit = max([self.seen_audit, *(e["id"] for e in audit)])
        return Outcome(result, [_dead_letter(r) for r in written if r.topic == self.topics.dlq],
                       [json.loads(r.value) for r in written if r.topic == self.topics.receipts], audit)

    def send_json(self, document: Any, **kwargs: Any) -> Outcome:
        return self.send(json.dumps(document).encode(), **kwargs)

    def dead_letters(self) -> list[DeadLetterRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(outbox).where(outbox.c.topic == self.topics.dlq).order_by(outbox.c.id)).all()
        return [_dead_letter(r) for r in rows]

    def receipts(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(outbox.c.value).where(outbox.c.topic == self.topics.receipts)).all()
        return [json.loads(r.value) for r in rows]

    def requests(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(requests)).mappings()]

    def audit_text(self) -> str:
        with self.engine.connect() as conn:
            return json.dumps([list(r) for r in conn.execute(sa.select(audit_events))], default=str)

    def close(self) -> None:
        self.engine.dispose()


def _dead_letter(row: Any) -> DeadLetterRow:
    return DeadLetterRow(row.key, row.value, [(k, v.encode("latin-1")) for k, v in json.loads(row.headers_json)],
                         row.headers_json)
