"""Poison commands: each known crasher ends recorded or dead-lettered with a stable code, on SQLite and PostgreSQL.

Every message here once crashed or stalled a worker. ``Intake.handle`` is driven on a real
store; it may raise only ``StoreUnavailable``, and only when the store itself is down.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

import schemas
from tests.intake_harness import KNOWN_CODES, NOW, Harness
from worker import messages
from worker.core.errors import StoreUnavailable
from worker.deadletter.topic import REPLAY_OF, REPLAYED_BY, REPLAYED_FROM
from worker.intake import IntakeResult, Message
from worker.support import build_command

SECRET = b"intake-signing-secret"
CANARY_EMAIL = "canary.poison@example.fr"
CANARY_CUSTOMER = "C-CANARY-777"
# The subject's own values as a reader still reads them: a full-width or small "@" (NFKC folds both to "@"), a
# full-width letter, a zero-width space, the phone without its "+". Each was taken as a plain id and kept whole.
LOOKALIKES = ["canary.poison\uff20example.fr", "canary.poison\ufe6bexample.fr", "\uff23-CANARY-777",
              "C-CANARY\u200b-777", "33611122233"]


def command(**changes: Any) -> dict[str, Any]:
    body = build_command(kind="erasure", customer_id=CANARY_CUSTOMER, emails=[CANARY_EMAIL], phones=["+33611122233"],
                         requested_by="test-suite", requested_at=datetime(2026, 11, 24, 10, tzinfo=UTC))
    body.update(changes)
    return body


def with_text(body: dict[str, Any], field: str, escaped: str) -> bytes:
    """``body`` as JSON with ``field`` holding a raw JSON escape (json.dumps would not write a lone surrogate)."""
    placeholder = f"@@{uuid.uuid4().hex}@@"
    body = {**body, field: placeholder}
    text = json.dumps(body)
    assert f'"{placeholder}"' in text
    return text.replace(f'"{placeholder}"', escaped).encode()


@pytest.fixture
def harness(db_url: str) -> Iterator[Harness]:
    made = Harness(db_url)
    yield made
    made.close()


@pytest.fixture
def signed(db_url: str) -> Iterator[Harness]:
    made = Harness(db_url, secret=SECRET)
    yield made
    made.close()


def deep(levels: int) -> bytes:
    return b'{"request_id": "r-1", "reason": ' + b"[" * levels + b"]" * levels + b"}"


CRASHERS: dict[str, tuple[bytes | None, set[str]]] = {
    "nested_arrays": (b"[" * 5000 + b"]" * 5000, {"invalid_json"}),
    "nested_in_a_field": (deep(20_000), {"invalid_json"}),
    "nested_objects": (b'{"a":' * 4000 + b"1" + b"}" * 4000, {"invalid_json"}),
    "long_integer": (json.dumps(command()).replace('"schema_version": 1', '"schema_version": 1' + "7" * 5000).encode(),
                     {"invalid_json"}),
    "long_float": (json.dumps(command()).replace('"schema_version": 1', '"schema_version": 1.' + "7" * 5000).encode(),
                   {"invalid_json"}),
    "overflowing_float": (json.dumps(command()).replace('"schema_version": 1', '"schema_version": 1e999').encode(),
                          {"invalid_json"}),
    "nan": (json.dumps(command()).replace('"schema_version": 1', '"schema_version": NaN').encode(), {"invalid_json"}),
    "infinity": (json.dumps(command(reason=None)).replace('"reason": null', '"reason": -Infinity').encode(),
                 {"invalid_json"}),
    "duplicate_key": (json.dumps(command()).replace('"kind": "erasure"', '"kind": "erasure", "kind": "export"')
                      .encode(), {"invalid_json"}),
    "surrogate_in_reason": (with_text(command(), "reason", '"\\udc80"'), {"schema_violation"}),
    "surrogate_in_requested_by": (with_text(command(), "requested_by", '"svc\\ud800"'), {"schema_violation"}),
    "surrogate_in_email": (with_text(command(), "subject", '{"customer_id": "C-1", "emails": ["a\\udc80@b.fr"]}'),
                           {"schema_violation"}),
    "surrogate_as_key": (with_text(command(), "subject", '{"customer_id": "C-1", "\\udc80": 1}'), {"schema_violation"}),
    "nul_in_reason": (json.dumps(command(reason="deleted\u0000account")).encode(), {"schema_violation"}),
    "nul_in_email": (json.dumps(command(subject={"customer_id": "C-1", "emails": ["a\u0000@b.fr"]})).encode(),
                     {"schema_violation"}),
    "requested_at_9999": (json.dumps(command(requested_at="9999-12-31T10:00:00Z")).encode(), {"out_of_range"}),
    "requested_at_9999_with_offset": (json.dumps(command(requested_at="9999-12-31T23:30:00-05:00")).encode(),
                                      {"out_of_range"}),
    "requested_at_year_1_with_offset": (json.dumps(command(requested_at="0001-01-01T00:30:00+05:00")).encode(),
                                        {"out_of_range"}),
    "due_at_9999": (json.dumps(command(due_at="9999-12-31T23:59:59Z")).encode(), {"out_of_range"}),
    "month_13": (json.dumps(command(requested_at="2026-13-01T00:00:00Z")).encode(), {"schema_violation"}),
    "february_30": (json.dumps(command(requested_at="2026-02-30T00:00:00Z")).encode(), {"schema_violation"}),
    "leap_second": (json.dumps(command(requested_at="2016-12-31T23:59:60Z")).encode(), {"schema_violation"}),
    "trailing_newline_id": (json.dumps(command(subject={"customer_id": "C-100234\n"})).encode(), {"schema_violation"}),
    "trailing_newline_date": (json.dumps(command(requested_at="2026-11-24T10:00:00Z\n")).encode(),
                              {"schema_violation"}),
    "schema_version_true": (json.dumps(command(schema_version=True)).encode(), {"schema_violation"}),
    "top_level_array": (b"[1, 2]", {"schema_violation"}),
    "top_level_string": (b'"C-100234"', {"schema_violation"}),
    "top_level_null": (b"null", {"schema_violation"}),
    "tombstone": (None, {"invalid_json"}),
    "not_utf8": (b'{"request_id": "\xff\xfe"}', {"invalid_json"}),
    "encoded_surrogate": (b'{"reason": "\xed\xb2\x80"}', {"invalid_json"}),  # CESU-style bytes: not UTF-8
    "too_large": (b" " * (64 * 1024 + 1), {"too_large"}),
}


@pytest.mark.parametrize("name", sorted(CRASHERS))
def test_known_crashers_are_dead_lettered_with_a_stable_code(harness: Harness, name: str) -> None:
    value, codes = CRASHERS[name]
    with capture_logs() as logs:
        outcome = harness.send(value)
    assert outcome.result in (IntakeResult.REJECTED, IntakeResult.DEAD_LETTERED)
    assert [d.code for d in outcome.dead_letters] in [[code] for code in codes]
    assert codes <= KNOWN_CODES
    (letter,) = outcome.dead_letters
    assert letter.value == value and letter.key == b"C-1"  # as received
    assert letter.headers_json.isascii()
    for text in (json.dumps(logs), json.dumps(harness.receipts()), letter.headers_json, harness.audit_text()):
        assert CANARY_EMAIL not in text and CANARY_CUSTOMER not in text


def test_a_command_with_a_readable_request_id_gets_its_rejected_receipt(harness: Harness) -> None:
    body = command(requested_at="9999-12-31T10:00:00Z")
    outcome = harness.send_json(body)
    assert (outcome.result, outcome.code) == (IntakeResult.REJECTED, "out_of_range")
    (receipt,) = harness.receipts()
    assert (receipt["request_id"], receipt["status"], receipt["error"]["code"]) == (
        body["request_id"], "rejected", "out_of_range")
    assert messages.schema_errors("receipt.v1", receipt) == []


def test_the_edges_of_the_date_range_are_accepted(harness: Harness) -> None:
    late = harness.send_json(command(requested_at="9998-11-30T23:59:59Z"))  # + 1 month is the last instant
    early = harness.send_json(command(requested_at="1000-01-01T00:00:00Z"))
    assert (late.result, early.result) == (IntakeResult.ACCEPTED, IntakeResult.ACCEPTED)
    assert harness.send_json(command(requested_at="9998-12-01T00:00:00Z")).code == "out_of_range"


def test_odd_headers_and_keys_are_carried_to_the_dlq_as_received(harness: Harness) -> None:
    headers = [("x-big", b"v" * 200_000), ("x-nul", b"\x00\xff"), ("x-\udc80", b"surrogate key"), ("", b""),
               ("x-oubli-signature", "é".encode())]
    outcome = harness.send(b"{", headers=headers, key=b"\xff\xfe not utf-8")
    assert outcome.code == "invalid_json"
    (letter,) = outcome.dead_letters
    assert letter.key == b"\xff\xfe not utf-8"
    received = dict(letter.headers)
    assert received["x-big"] == b"v" * 200_000 and received["x-nul"] == b"\x00\xff"
    assert received["x-\\udc80"] == b"surrogate key"  # escaped: the relay can encode every header key
    assert all(k.encode("utf-8") is not None for k, _ in letter.headers)
    # The same headers on a good command change nothing.
    assert harness.send_json(command(), headers=headers, key=None).result is IntakeResult.ACCEPTED


def test_a_sender_cannot_forge_the_dlq_s_own_headers(harness: Harness) -> None:
    """Readers take a DLQ record's code, message, source and reference from its headers: only oubli writes them."""
    forged = [("x-oubli-error-code", b"bad_signature"), ("x-oubli-error-message", b"Marie Dupont"),
              ("x-oubli-source", b"other/9/9"), ("x-oubli-dlq-reference", b"sha256:" + b"0" * 64), ("x-kept", b"1")]
    (letter,) = harness.send(b"{", headers=forged).dead_letters
    names = [name for name, _ in letter.headers]
    assert names == ["x-kept", "x-oubli-error-code", "x-oubli-error-message", "x-oubli-source"]
    received = dict(letter.headers)
    assert received["x-oubli-error-code"] == b"invalid_json" and b"Marie" not in received["x-oubli-error-message"]
    assert received["x-oubli-source"] != b"other/9/9"


@pytest.mark.parametrize("signature", [None, b"", "é".encode(), b"\xff\xfe", b"sha256=" + b"0" * 64, b"\x00" * 64])
def test_unsigned_or_mis_signed_commands_never_reach_the_store(signed: Harness, signature: bytes | None) -> None:
    """No request row, no receipt, no audit event: the id stays free for the real, signed command."""
    body = command()
    value = json.dumps(body).encode()
    headers = [] if signature is None else [("x-oubli-signature", signature)]
    for attempt in (value, json.dumps(command(request_id=body["request_id"], schema_version=2)).encode()):
        outcome = signed.send(attempt, headers=headers)
        assert (outcome.result, outcome.code) == (IntakeResult.DEAD_LETTERED, "bad_signature")
    assert (signed.requests(), signed.receipts(), signed.audit_text()) == ([], [], "[]")
    good = signed.send(value, headers=[("x-oubli-signature", messages.sign(value, SECRET).encode())])
    assert good.result is IntakeResult.ACCEPTED


def test_replay_headers_count_only_on_a_verified_command(signed: Harness) -> None:
    old = command()
    assert signed.send_json(old, headers=[("x-oubli-signature", messages.sign(json.dumps(old).encode(), SECRET)
                                           .encode())]).result is IntakeResult.ACCEPTED
    replay = [(REPLAYED_FROM, b"t.dlq/0/5"), (REPLAYED_BY, b"mallory"), (REPLAY_OF, old["request_id"].encode())]
    forged = json.dumps(command()).encode()
    assert signed.send(forged, headers=[*replay, ("x-oubli-signature", b"0" * 64)]).code == "bad_signature"
    assert "mallory" not in signed.audit_text()
    genuine = json.dumps(command()).encode()
    outcome = signed.send(genuine, headers=[*replay, ("x-oubli-signature", messages.sign(genuine, SECRET).encode())])
    assert outcome.result is IntakeResult.ACCEPTED
    assert "replay of " + old["request_id"] + " from t.dlq/0/5 by mallory" in signed.audit_text()


def test_replay_headers_are_honoured_when_signing_is_off(harness: Harness) -> None:
    """Anyone may write the topic then; the replay tool sets these headers and re-signs only when signing is on."""
    old = command()
    harness.send_json(old)
    new = command()
    replay = [(REPLAYED_FROM, b"t.dlq/0/5"), (REPLAYED_BY, b"ops"), (REPLAY_OF, old["request_id"].encode())]
    assert harness.send_json(new, headers=replay).result is IntakeResult.ACCEPTED
    assert f"carried out as {new['request_id']}" in harness.audit_text()


@pytest.mark.parametrize(("headers", "kept"), [
    ([(REPLAYED_FROM, b"Marie Dupont, 12 rue de la Paix"), (REPLAYED_BY, b"ops")],
     "replayed from an unreadable source by ops"),
    ([(REPLAYED_FROM, b"t.dlq/0/5"), (REPLAYED_BY, CANARY_EMAIL.encode())],
     "replayed from t.dlq/0/5 by an unnamed operator"),
    ([(REPLAYED_FROM, b"t.dlq/0/5 +33611122233"), (REPLAYED_BY, b"+33611122233")],
     "replayed from an unreadable source by an unnamed operator"),
    ([(REPLAY_OF, "Marie Dupont née 1980".encode()), (REPLAYED_FROM, b"t.dlq/0/5"), (REPLAYED_BY, b"ops")],
     "replay of an unreadable request id from t.dlq/0/5 by ops"),
    ([(REPLAY_OF, CANARY_EMAIL.encode()), (REPLAYED_FROM, b"t.dlq/0/5"), (REPLAYED_BY, b"ops")],
     "replay of an unreadable request id from t.dlq/0/5 by ops"),
    ([(REPLAYED_FROM, b"t.dlq/0/5"), (REPLAYED_BY, LOOKALIKES[0].encode())],
     "replayed from t.dlq/0/5 by an unnamed operator"),
    ([(REPLAY_OF, LOOKALIKES[1].encode()), (REPLAYED_FROM, b"t.dlq/0/5"), (REPLAYED_BY, b"ops")],
     "replay of an unreadable request id from t.dlq/0/5 by ops"),
])
def test_replay_headers_carry_no_personal_data_into_the_audit_trail(
        harness: Harness, headers: list[tuple[str, bytes]], kept: str) -> None:
    """The audit trail outlives the subject's purge: a header in any other shape than ``oubli dlq replay`` gives it
    is named there, not copied (it was copied whole, 300 characters of a sender's free text)."""
    assert harness.send_json(command(), headers=headers).result is IntakeResult.ACCEPTED
    audit = harness.audit_text()
    assert kept in audit
    for personal in (CANARY_EMAIL, "+33611122233", "Dupont"):
        assert personal not in audit


@pytest.mark.parametrize("sender", [CANARY_EMAIL, "+33611122233", "jean@corp", CANARY_CUSTOMER, "c-canary-777",
                                    *LOOKALIKES])
def test_a_requested_by_naming_a_person_is_not_kept(harness: Harness, sender: str) -> None:
    """The request row and the audit trail outlive the subject's purge: both kept requested_by whole, the subject's
    own customer_id (a self-service erasure sent as requested_by: C-100234) too."""
    body = command(requested_by=sender)
    assert harness.send_json(body).result is IntakeResult.ACCEPTED
    assert sender not in harness.audit_text()
    assert "requested by [redacted]" in harness.audit_text()
    with harness.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT requested_by FROM requests WHERE request_id = :r"),
                            {"r": body["request_id"]}).scalar_one() == "[redacted]"
    assert harness.send_json(body).result is IntakeResult.DUPLICATE  # the digest still covers the original


@pytest.mark.parametrize("request_id", [CANARY_EMAIL, "jean@corp", "+33611122233", CANARY_CUSTOMER,
                                        CANARY_EMAIL.upper(), "GA.CANARY.1", *LOOKALIKES,
                                        "callback-+33611122233", "req-33-6-11-12-22-33"])
@pytest.mark.parametrize("valid", [True, False])
def test_a_request_id_that_is_personal_data_is_refused_and_never_receipted(
        harness: Harness, request_id: str, valid: bool) -> None:
    """The request id keys the compacted receipts topic and stays in the request row and the audit trail for
    good: one that is an email address, a phone number or the subject's own id was published and kept whole."""
    body = command(request_id=request_id, subject={
        "customer_id": CANARY_CUSTOMER, "emails": [CANARY_EMAIL], "phones": ["+33611122233"],
        "identifiers": {"ga_client_id": ["GA.CANARY.1"]}})
    if not valid:
        body["kind"] = "ERASURE"  # refused for another reason: still no receipt keyed by the id
    with capture_logs() as logs:
        outcome = harness.send_json(body)
    assert (outcome.result, outcome.code) == (IntakeResult.DEAD_LETTERED, "schema_violation")
    assert harness.requests() == [] and harness.receipts() == []
    exposed = json.dumps(logs) + harness.audit_text() + outcome.dead_letters[0].headers_json
    assert request_id not in exposed and request_id.lower() not in exposed
    # Ids that merely hold digits, or a part of an identifier, are still ids.
    for fine in ("20261124100000", "order-2026-12-03-000123", "C-CANARY-777-erasure"):
        assert harness.send_json(command(request_id=fine)).result is IntakeResult.ACCEPTED


def test_an_unexpected_exception_is_an_internal_error_naming_only_its_type(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*_: Any) -> str:
        raise KeyError(CANARY_EMAIL)  # a message that quotes the input

    monkeypatch.setattr(messages, "body_digest", explode)
    with capture_logs() as logs:
        outcome = harness.send_json(command())
    assert (outcome.result, outcome.code) == (IntakeResult.DEAD_LETTERED, "internal_error")
    (letter,) = outcome.dead_letters
    assert dict(letter.headers)["x-oubli-error-message"] == b"KeyError while taking the command in"
    assert harness.requests() == [] and harness.receipts() == []
    assert CANARY_EMAIL not in json.dumps(logs) + letter.headers_json
    assert {"event": "command_poison", "code": "internal_error", "error_type": "KeyError"}.items() <= logs[0].items()


def test_a_nul_the_checks_miss_is_store_rejected_on_postgres_never_a_pause(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind the validation, the store's own refusal of the data: dead-lettered, and the next command goes in."""
    monkeypatch.setattr(messages, "text_problem", lambda *_: None)
    outcome = harness.send_json(command(reason="a\u0000b"))
    if harness.engine.dialect.name == "postgresql":  # PostgreSQL refuses NUL in text; SQLite keeps it
        assert (outcome.result, outcome.code) == (IntakeResult.DEAD_LETTERED, "store_rejected")
        assert dict(outcome.dead_letters[0].headers)["x-oubli-error-message"].startswith(b"DataError")
    else:
        assert outcome.result is IntakeResult.ACCEPTED
    assert harness.send_json(command()).result is IntakeResult.ACCEPTED


def test_when_even_the_full_dlq_row_is_refused_a_bare_one_is_written(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    real = harness.store.record_invalid
    refused: list[bool] = []

    def picky(**kwargs: Any) -> bool:
        if kwargs["headers"]:  # the sender's headers: pretend the store refused one of them
            refused.append(True)
            raise sa.exc.DataError("INSERT", {}, ValueError("refused"))
        return real(**kwargs)

    monkeypatch.setattr(harness.store, "record_invalid", picky)
    outcome = harness.send(b"{", headers=[("x-any", b"1")])
    assert refused and (outcome.result, outcome.code) == (IntakeResult.DEAD_LETTERED, "invalid_json")
    (letter,) = outcome.dead_letters
    assert letter.value == b"{" and [k for k, _ in letter.headers] == [
        "x-oubli-error-code", "x-oubli-error-message", "x-oubli-source"]


def test_a_store_outage_raises_store_unavailable_and_dead_letters_nothing(tmp_path: Path) -> None:
    harness = Harness(f"sqlite:///{tmp_path / 'store.db'}")
    harness.store.engine = sa.create_engine(  # the same store, now unreachable
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    for value in (json.dumps(command()).encode(), b"{"):
        with pytest.raises(StoreUnavailable):
            harness.send(value)
    harness.store.engine = harness.engine
    assert harness.dead_letters() == []


# --- the schema itself -------------------------------------------------------------------------------------------

# One value that fully matches each pattern of command.v1; a new pattern without one fails the test below.
PATTERN_EXAMPLES = ["C-100234", "marie.dupont@example.fr", "+33612345678", "ga_client_id", "2026-11-24T10:00:00Z"]


def schema_patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, child in node.items():
            if key == "pattern" and isinstance(child, str):
                yield child
            else:
                yield from schema_patterns(child)
    elif isinstance(node, list):
        for child in node:
            yield from schema_patterns(child)


@pytest.mark.parametrize("pattern", sorted(set(schema_patterns(schemas.load("command.v1")))))
def test_every_schema_pattern_refuses_a_trailing_newline(pattern: str) -> None:
    """jsonschema uses re.search, where a bare ``$`` also matches before a final newline."""
    matching = [example for example in PATTERN_EXAMPLES if re.search(pattern, example)]
    assert matching, f"no example matches {pattern}: add one to PATTERN_EXAMPLES"
    for example in matching:
        assert not re.search(pattern, example + "\n")
        assert not re.search(pattern, example + "\r\n")


def test_the_validator_really_checks_date_time_formats() -> None:
    """rfc3339-validator must be installed with the worker: without it ``format`` is silently ignored."""
    checker = messages._validator("command.v1").format_checker
    assert checker is not None and "date-time" in checker.checkers
    assert checker.conforms("2026-11-24T10:00:00Z", "date-time")
    assert not checker.conforms("2026-13-01T00:00:00Z", "date-time")
    assert messages.schema_errors("command.v1", command(requested_at="2026-13-01T00:00:00Z")) == [
        "$.requested_at: format violated"]


def test_a_dead_letter_too_large_to_publish_is_stored_as_a_reference(harness: Harness) -> None:
    """A value past the broker's default message.max.bytes (here a 3 MB one, as a compressed record inflates to) is
    kept as its size and sha256, not whole: whole, it went into the store, back out to the relay and into the
    producer, five to six times its size in the worker's memory, only for the broker to refuse it."""
    import hashlib

    from worker.deadletter.topic import REFERENCE

    big = b'{"x": "' + b"a" * 3_000_000 + b'"}'
    outcome = harness.send(big, headers=[("h", b"sender's"), (REFERENCE, b"sha256:forged")], key=b"C-100234")
    assert outcome.code == "too_large"
    [row] = outcome.dead_letters
    body = json.loads(row.value or b"")
    assert body["size_bytes"] == len(big) and body["sha256"] == hashlib.sha256(big).hexdigest()
    headers = dict(row.headers)
    assert headers[REFERENCE] == f"sha256:{body['sha256']}".encode() and "h" not in headers
    assert row.key is None and b"C-100234" not in row.headers_json.encode()

    small = b'{"x": "' + b"a" * 100_000 + b'"}'  # too large for a command, small enough to keep as it came
    [kept] = harness.send(small, key=b"C-1").dead_letters
    assert kept.value == small and REFERENCE not in dict(kept.headers)


@pytest.mark.parametrize(("value", "headers", "key"), [
    (b"{", [("x-bomb", b"\x00" * 1_100_000)], b"C-100234"),  # a compressed record inflates to this and more
    (b"{", [(f"x-{i}", b"\xff" * 1000) for i in range(1_100)], b"C-100234"),
    (b"{", [], b"C-100234" * 130_000),
])
def test_a_dead_letter_whose_headers_or_key_are_too_large_is_stored_as_a_reference(
        harness: Harness, value: bytes, headers: list[tuple[str, bytes]], key: bytes) -> None:
    """Only the value's size counted: 1.1 MB of NUL headers went into the store JSON-escaped (6.6 MB of text), and
    a compressed record inflating to 100 MB of them would take the worker's memory at every restart."""
    [row] = harness.send(value, headers=headers, key=key).dead_letters
    assert row.code == "invalid_json" and row.key is None and len(row.headers_json) < 2_000
    body = json.loads(row.value or b"")
    assert body["header_bytes"] + body["key_bytes"] > 1_000_000 and body["size_bytes"] == len(value)
    assert b"C-100234" not in row.headers_json.encode()


def test_a_record_redelivered_after_a_crash_is_dead_lettered_once(harness: Harness) -> None:
    """A worker killed between recording a batch and committing its offsets gets the same records again on restart
    (or its partitions' next owner does): each bad one used to get a second DLQ record."""
    source = "privacy.commands/3/41"
    garbage = Message(value=b"not json", key=b"C-1", headers=[], source=source)
    rejected = Message(value=json.dumps(command(kind="ERASURE")).encode(), key=b"C-1", headers=[],
                       source="privacy.commands/3/42")
    for _ in range(2):
        harness.intake.handle(garbage, NOW)
        harness.intake.handle(rejected, NOW)
    harness.intake.handle_batch([garbage, rejected], NOW)
    sources = [dict(row.headers)["x-oubli-source"].decode() for row in harness.dead_letters()]
    assert sorted(sources) == [source, "privacy.commands/3/42"]
    assert [r["status"] for r in harness.receipts()] == ["rejected"]
    # Another record at the same place (a topic deleted and created again) is a dead letter of its own.
    harness.intake.handle(Message(value=b"other garbage", key=b"C-1", headers=[], source=source), NOW)
    assert len(harness.dead_letters()) == 3


def test_a_batch_decodes_and_validates_each_record_once(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile record's decoding and validation is what costs (tens of ms at 64 KiB): handle_batch did it once to
    find the record invalid, and handle then did it all again, doubling how long a batch of them held the loop."""
    decoded: list[bytes | None] = []
    real = messages.decode

    def counting(value: bytes | None) -> Any:
        decoded.append(value)
        return real(value)

    monkeypatch.setattr(messages, "decode", counting)
    good = command()
    values = [json.dumps(good).encode(), json.dumps(command(kind="ERASURE")).encode(), b"{",
              json.dumps({**good, "reason": "another body"}).encode(), json.dumps(command()).encode()]
    batch = [Message(value=v, key=b"C-1", headers=[], source=f"privacy.commands/0/{500 + i}")
             for i, v in enumerate(values)]
    outcome = harness.intake.handle_batch(batch, NOW)
    assert outcome.results == [IntakeResult.ACCEPTED, IntakeResult.REJECTED, IntakeResult.DEAD_LETTERED,
                               IntakeResult.DEAD_LETTERED, IntakeResult.ACCEPTED]
    assert [row.code for row in harness.dead_letters()] == ["schema_violation", "invalid_json", "conflicting_duplicate"]
    assert sorted(decoded, key=values.index) == values  # each once


def test_the_relay_reads_the_outbox_a_bounded_number_of_bytes_at_a_time(harness: Harness) -> None:
    """A batch was 500 rows whatever their size: 500 dead letters of 900 KB each (a flood of hostile records under
    the broker's limit) were read at once, and copied to the producer, in a worker given 512 MiB."""
    from worker.store import outbox as outbox_module

    budget = 16 * 1024 * 1024
    for i in range(20):
        harness.send(b"{" + bytes([65 + i]) * 900_000)  # 20 dead letters of 900 KB: 18 MB
    outbox = harness.store.outbox
    first = outbox.batch(500)
    sizes = [len(r.value or b"") for r in first]
    assert 0 < len(first) < 20 and sum(sizes[:-1]) < budget <= sum(sizes) + 900_001 * 2
    assert getattr(outbox_module, "BATCH_BYTES", None) == budget
    assert [r.id for r in first] == sorted(r.id for r in first)
    assert len(outbox.batch(500, max_bytes=1)) == 1  # at least one row, however large
    assert len(outbox.batch(3)) == 3  # the count still bounds it
    outbox.delete([r.id for r in first])
    rest = outbox.batch(500)
    assert len(first) + len(rest) == 20 and rest[0].id > first[-1].id
