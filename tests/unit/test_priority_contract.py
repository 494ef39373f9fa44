"""The compatible contract additions for scheduling: ``priority`` and ``subject.last_activity_at``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from worker import messages
from worker.core.errors import InvalidCommand
from worker.store.records import subject_json, subject_of
from worker.support import build_command


def _parse(body: dict[str, Any]) -> messages.Command:
    value = json.dumps(body).encode()
    return messages.parse(messages.decode(value), value=value, signature=None, signing_secret=None,
                          known_systems=frozenset({"google_analytics"}))


def _body(**changes: Any) -> dict[str, Any]:
    body = build_command(kind="erasure", customer_id="C-1", request_id="r-1",
                         requested_at=datetime(2026, 1, 31, 10, tzinfo=UTC))
    body.update(changes)
    return body


def test_a_command_without_priority_is_standard_and_knows_no_activity() -> None:
    parsed = _parse(_body())
    assert parsed.priority == "standard" and parsed.last_activity_at is None
    assert parsed.subject("ref").priority == "standard"


def test_background_and_last_activity_parse_and_travel_with_the_stored_subject() -> None:
    body = _body(priority="background")
    body["subject"]["last_activity_at"] = "2024-01-02T03:04:05Z"
    parsed = _parse(body)
    assert parsed.priority == "background"
    assert parsed.last_activity_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    subject = subject_of("r-1", subject_json(parsed, "ref"))
    assert subject.priority == "background" and subject.last_activity_at == parsed.last_activity_at


def test_a_subject_stored_before_priorities_reads_as_standard() -> None:
    stored = json.dumps({"customer_id": "C-1", "emails": [], "phones": [], "identifiers": {}, "subject_ref": "x"})
    subject = subject_of("r-1", stored)
    assert subject.priority == "standard" and subject.last_activity_at is None


@pytest.mark.parametrize("change", [{"priority": "urgent"}, {"priority": None}, {"priority": 1}])
def test_an_unknown_priority_is_a_schema_violation(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidCommand) as caught:
        _parse(_body(**change))
    assert caught.value.code == "schema_violation" and caught.value.request_id == "r-1"


def test_a_bad_last_activity_is_refused_with_its_request_id() -> None:
    body = _body()
    body["subject"]["last_activity_at"] = "yesterday"
    with pytest.raises(InvalidCommand) as caught:
        _parse(body)
    assert caught.value.code == "schema_violation" and caught.value.request_id == "r-1"


def test_the_store_records_the_priority_and_defaults_old_rows_to_standard(tmp_path: Any) -> None:
    import sqlalchemy as sa

    from worker import states
    from worker.config import Topics
    from worker.store import db
    from worker.store.repository import Store
    from worker.store.schema import requests

    engine = db.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    db.migrate(engine)
    store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="test")
    now = datetime(2026, 12, 2, tzinfo=UTC)
    for request_id, priority in (("r-std", None), ("r-bg", "background")):
        body = _body(request_id=request_id, **({"priority": priority} if priority else {}))
        store.record_command(_parse(body), subject_ref="ref", digest=request_id, targets={"google_analytics": 3},
                             now=now)
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.select(requests.c.request_id, requests.c.priority)).all())
    assert rows == {"r-std": "standard", "r-bg": "background"}
