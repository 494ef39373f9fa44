"""A command resent with an optional field null instead of absent (or the other way), or with a field's default
instead of leaving it out, is a duplicate, not a conflict.

command.v1 lets ``due_at``, ``systems`` and ``reason`` be null or absent, to the same effect. The body digest
covered the JSON as it came, so a producer's retry through another serializer (one that writes nulls, one that
leaves them out) was dead-lettered as ``conflicting_duplicate``. Requests recorded before, under the digest of
the body as it came, are still known by it. A real conflict still goes to the DLQ only, and never touches the
receipt of the request it names (the receipts topic is compacted on ``request_id``). ``priority`` counts the same
absent or ``"standard"``, its default, and the subject's ``emails``, ``phones`` and ``identifiers`` absent or empty."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import combinations
from typing import Any

import pytest
import sqlalchemy as sa

from devkit.pipeline import SUBJECT_KEY
from tests.intake_harness import NOW, Harness
from worker import messages
from worker.intake import IntakeResult, Message
from worker.store.schema import requests
from worker.support import build_command

KEY = SUBJECT_KEY.encode()
NULLABLE = ("due_at", "systems", "reason")
FORMS = [set(nulls) for size in range(len(NULLABLE) + 1) for nulls in combinations(NULLABLE, size)]


@pytest.fixture
def harness(db_url: str) -> Iterator[Harness]:
    made = Harness(db_url)
    yield made
    made.close()


def body(nulls: set[str], **values: Any) -> dict[str, Any]:
    """A command whose nullable fields are ``null`` if named in ``nulls``, else absent (unless given)."""
    document = build_command(kind="erasure", customer_id="C-1", requested_by="account-service",
                             request_id="dup-1", requested_at=datetime(2026, 11, 24, 10, tzinfo=UTC))
    for name in NULLABLE:
        del document[name]
    return {**document, **dict.fromkeys(nulls), **values}


def every_form() -> list[Message]:
    return [Message(value=json.dumps(body(form)).encode(), key=b"C-1", headers=[],
                    source=f"privacy.commands/0/{900 + i}") for i, form in enumerate(FORMS)]


def only_receipt_status(outcome: Any) -> list[str]:
    return [receipt["status"] for receipt in outcome.receipts]


@pytest.mark.parametrize("first", range(len(FORMS)), ids=lambda i: "null:" + (",".join(sorted(FORMS[i])) or "none"))
def test_absent_and_null_are_one_body(harness: Harness, first: int) -> None:
    original = harness.send_json(body(FORMS[first]))
    assert original.result is IntakeResult.ACCEPTED
    for form in FORMS:
        resent = harness.send_json(body(form))
        assert resent.result is IntakeResult.DUPLICATE, form
        assert resent.dead_letters == [] and only_receipt_status(resent) == ["accepted"]
    batch = every_form()
    outcome = harness.intake.handle_batch(batch, NOW)
    assert outcome.results == [IntakeResult.DUPLICATE] * len(FORMS)
    assert harness.dead_letters() == []


@pytest.mark.parametrize("sent", range(len(FORMS)), ids=lambda i: "null:" + (",".join(sorted(FORMS[i])) or "none"))
def test_a_request_recorded_under_the_old_digest_is_still_known(harness: Harness, sent: int) -> None:
    """Before, the stored digest was the body's as it came, nulls included: every form of it is still a duplicate."""
    assert harness.send_json(body(FORMS[sent])).result is IntakeResult.ACCEPTED
    with harness.engine.begin() as conn:
        conn.execute(requests.update().values(body_digest=messages.sent_digest(KEY, body(FORMS[sent]))))
    for form in FORMS:
        resent = harness.send_json(body(form))
        assert resent.result is IntakeResult.DUPLICATE, form
    batch = every_form()
    assert harness.intake.handle_batch(batch, NOW).results == [IntakeResult.DUPLICATE] * len(FORMS)
    assert harness.dead_letters() == []


def test_the_digest_of_a_body_without_nulls_is_unchanged() -> None:
    """Stored digests of commands sent without nulls stay what they were: the old formula, byte for byte."""
    for document in (body(set()), body(set(), due_at="2026-12-24T10:00:00Z", systems=["alpha"], reason="ça va"),
                     {**body(set()), "subject": {"customer_id": "C-1", "emails": ["marie.dupont@example.fr"]}}):
        old = messages.keyed_digest(KEY, json.dumps(document, sort_keys=True, separators=(",", ":")))
        assert messages.body_digest(KEY, document) == messages.sent_digest(KEY, document) == old


@pytest.mark.parametrize("changed", [{"reason": "another reason"}, {"systems": ["alpha"]},
                                     {"due_at": "2026-12-01T10:00:00Z"}, {"requested_by": "someone-else"}],
                         ids=lambda changed: next(iter(changed)))
def test_a_real_conflict_goes_to_the_dlq_only_and_never_touches_the_receipt(harness: Harness,
                                                                             changed: dict[str, Any]) -> None:
    assert harness.send_json(body(set(NULLABLE))).result is IntakeResult.ACCEPTED
    (before,) = harness.receipts()
    for resent in (harness.send_json(body(set(), **changed)), harness.send_json(body(set(NULLABLE), **changed))):
        assert resent.result is IntakeResult.DEAD_LETTERED
        assert [row.code for row in resent.dead_letters] == ["conflicting_duplicate"] and resent.receipts == []
    batch = [Message(value=json.dumps(body(set(), **changed)).encode(), key=b"C-1", headers=[],
                     source="privacy.commands/0/990")]
    assert harness.intake.handle_batch(batch, NOW).results == [IntakeResult.DEAD_LETTERED]
    assert harness.receipts() == [before]
    (request,) = harness.requests()
    assert request["status"] == "accepted" and request["error_code"] is None
    with harness.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(requests)).scalar() == 1


@pytest.mark.parametrize("first", [None, "standard"], ids=["absent", "standard"])
def test_a_default_sent_or_left_out_is_one_body(harness: Harness, first: str | None) -> None:
    """``priority: "standard"`` is what its absence means: a serializer that writes defaults retries as a duplicate."""
    forms = [body(set()), body(set(), priority="standard"), body(set(NULLABLE), priority="standard")]
    assert harness.send_json(forms[0] if first is None else forms[1]).result is IntakeResult.ACCEPTED
    for form in forms:
        resent = harness.send_json(form)
        assert resent.result is IntakeResult.DUPLICATE, form
        assert resent.dead_letters == [] and only_receipt_status(resent) == ["accepted"]
    assert harness.dead_letters() == []


def test_a_request_stored_with_its_default_under_the_old_digest_is_still_known(harness: Harness) -> None:
    """Before, ``"priority": "standard"`` was part of the stored digest: the body without it is still a duplicate."""
    sent = body({"reason"}, priority="standard")
    assert harness.send_json(sent).result is IntakeResult.ACCEPTED
    with harness.engine.begin() as conn:
        conn.execute(requests.update().values(body_digest=messages.sent_digest(KEY, sent)))
    for form in (body(set()), body(set(NULLABLE)), sent):
        assert harness.send_json(form).result is IntakeResult.DUPLICATE, form
    assert harness.dead_letters() == []


def test_another_priority_than_the_default_is_a_conflict(harness: Harness) -> None:
    assert harness.send_json(body(set())).result is IntakeResult.ACCEPTED
    (before,) = harness.receipts()
    resent = harness.send_json(body(set(), priority="background"))
    assert resent.result is IntakeResult.DEAD_LETTERED
    assert [row.code for row in resent.dead_letters] == ["conflicting_duplicate"] and resent.receipts == []
    assert harness.receipts() == [before]


EMPTY = {"emails": [], "phones": [], "identifiers": {}}
EMPTY_FORMS = [set(names) for size in range(len(EMPTY) + 1) for names in combinations(EMPTY, size)]


def with_empty(names: set[str], **values: Any) -> dict[str, Any]:
    """The command with the subject's fields in ``names`` sent empty, the others absent."""
    document = body(set(), **values)
    return {**document, "subject": {**document["subject"], **{name: EMPTY[name] for name in names}}}


@pytest.mark.parametrize("first", range(len(EMPTY_FORMS)),
                         ids=lambda i: "empty:" + (",".join(sorted(EMPTY_FORMS[i])) or "none"))
def test_a_subject_list_sent_empty_or_left_out_is_one_body(harness: Harness, first: int) -> None:
    assert harness.send_json(with_empty(EMPTY_FORMS[first])).result is IntakeResult.ACCEPTED
    for names in EMPTY_FORMS:
        resent = harness.send_json(with_empty(names, priority="standard", reason=None))
        assert resent.result is IntakeResult.DUPLICATE, names
        assert resent.dead_letters == [] and only_receipt_status(resent) == ["accepted"]
    assert harness.dead_letters() == []


def test_a_request_stored_with_empty_lists_under_the_old_digest_is_still_known(harness: Harness) -> None:
    sent = with_empty({"emails", "identifiers"}, priority="standard", systems=None)
    assert harness.send_json(sent).result is IntakeResult.ACCEPTED
    with harness.engine.begin() as conn:
        conn.execute(requests.update().values(body_digest=messages.sent_digest(KEY, sent)))
    for form in (with_empty(set()), with_empty({"phones"}), sent):
        assert harness.send_json(form).result is IntakeResult.DUPLICATE, form
    assert harness.dead_letters() == []


def test_a_subject_list_with_a_value_is_a_conflict(harness: Harness) -> None:
    assert harness.send_json(with_empty({"emails"})).result is IntakeResult.ACCEPTED
    other = with_empty(set())
    other["subject"]["emails"] = ["marie.dupont@example.fr"]
    resent = harness.send_json(other)
    assert resent.result is IntakeResult.DEAD_LETTERED
    assert [row.code for row in resent.dead_letters] == ["conflicting_duplicate"] and resent.receipts == []
