"""oubli's own ``x-oubli-*`` headers are read whatever the case of their names; the exact lower-case name wins.

Kafka header names are case-sensitive, so a producer that wrote ``X-Oubli-Signature`` (as HTTP would) sent a
command the worker took for unsigned: with a signing secret, dead-lettered as ``bad_signature``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.intake_harness import Harness
from worker import messages
from worker.deadletter.reissue import Known, Reissuer
from worker.deadletter.topic import DeadLetter, replay_note, replay_of
from worker.intake import IntakeResult
from worker.support import build_command

SECRET = b"header-case-secret"


@pytest.fixture
def signed(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(f"sqlite:///{tmp_path / 'store.db'}", secret=SECRET)
    yield made
    made.close()


def value(**changes: str) -> bytes:
    body = build_command(kind="erasure", customer_id="C-1", requested_by="account-service",
                         requested_at=datetime(2026, 11, 24, 10, tzinfo=UTC))
    return json.dumps({**body, **changes}).encode()


def test_the_header_lookup_ignores_case_and_prefers_the_exact_name() -> None:
    name = messages.SIGNATURE_HEADER
    assert messages.header([("X-Oubli-Signature", b"a")], name) == b"a"
    assert messages.header([("X-OUBLI-SIGNATURE", b"a"), ("traceparent", b"t")], name) == b"a"
    assert messages.header([("x-oubli-signature", b"exact"), ("X-Oubli-Signature", b"other")], name) == b"exact"
    assert messages.header([("X-Oubli-Signature", b"other"), ("x-oubli-signature", b"exact")], name) == b"exact"
    assert messages.header([("x-oubli-signature", b"1"), ("x-oubli-signature", b"2")], name) == b"2"  # as dict()
    assert messages.header([("x-oubli-signature", None)], name) is None
    assert messages.header([], name) is None and messages.header([("x-oubli-sig", b"a")], name) is None
    assert messages.header([("x-oubli-signature\u212a", b"a")], name + "k") is None  # KELVIN SIGN is no "k"


@pytest.mark.parametrize("name", ["X-Oubli-Signature", "X-OUBLI-SIGNATURE", "x-Oubli-signature"])
def test_a_command_signed_under_a_capitalised_header_is_signed(signed: Harness, name: str) -> None:
    command = value()
    outcome = signed.send(command, headers=[(name, messages.sign(command, SECRET).encode())])
    assert outcome.result is IntakeResult.ACCEPTED and outcome.dead_letters == []


def test_the_exact_header_name_wins_over_another_case(signed: Harness) -> None:
    command = value()
    good, bad = messages.sign(command, SECRET).encode(), b"0" * 64
    outcome = signed.send(command, headers=[("X-Oubli-Signature", good), ("x-oubli-signature", bad)])
    assert outcome.code == "bad_signature" and outcome.receipts == []
    other = value()
    outcome = signed.send(other, headers=[("x-oubli-signature", messages.sign(other, SECRET).encode()),
                                          ("X-Oubli-Signature", bad)])
    assert outcome.result is IntakeResult.ACCEPTED


def test_replay_headers_are_read_whatever_their_case() -> None:
    headers = [("X-Oubli-Replayed-From", b"privacy.commands.dlq/0/7"), ("X-Oubli-Replayed-By", b"ops"),
               ("X-Oubli-Replay-Of", b"old-id")]
    assert replay_note(headers) == "replay of old-id from privacy.commands.dlq/0/7 by ops"
    assert replay_of(headers) == "old-id"
    assert replay_of([("X-Oubli-Replay-Of", b"forged"), ("x-oubli-replay-of", b"real")]) == "real"


def test_what_the_dlq_adds_is_dropped_whatever_the_case_a_sender_gave_it(tmp_path: Path) -> None:
    """A sender's own ``X-Oubli-Error-Code`` must not stand in the DLQ record beside the worker's, nor a stale
    ``X-Oubli-Replay-Of`` or ``X-Oubli-Signature`` go back to the commands topic with a replay."""
    harness = Harness(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        outcome = harness.send(b"{", headers=[("X-Oubli-Error-Code", b"forged"), ("X-OUBLI-SOURCE", b"x/0/0"),
                                               ("traceparent", b"t")])
    finally:
        harness.close()
    (row,) = outcome.dead_letters
    assert [name.lower() for name, _ in row.headers].count("x-oubli-error-code") == 1
    assert [name.lower() for name, _ in row.headers].count("x-oubli-source") == 1 and row.code == "invalid_json"
    command = value()
    letter = DeadLetter(partition=0, offset=7, code="unknown_system", timestamp=None, source="c/0/1", key=b"C-1",
                        value=command, headers=(("X-Oubli-Signature", messages.sign(command, SECRET).encode()),
                                                ("X-Oubli-Replay-Of", b"stale"), ("X-Oubli-Error-Message", b"m")))
    assert [k for k, _ in letter.replay_headers("dlq", "ops")] == [
        "X-Oubli-Signature", "x-oubli-replayed-from", "x-oubli-replayed-by"]
    request_id = json.loads(command)["request_id"]
    reissuer = Reissuer(lambda ids: {request_id: Known("rejected", None)}, subject_key=b"k" * 32,
                        signing_secret=SECRET, named=frozenset())
    (out,) = reissuer.plan([letter], "dlq", "ops")
    assert out.request_id is not None  # the capitalised signature verified the letter
    names = [name.lower() for name, _ in out.headers]
    assert names.count("x-oubli-signature") == 1 and names.count("x-oubli-replay-of") == 1
    assert messages.verify_signature(out.value, messages.header(out.headers, messages.SIGNATURE_HEADER), SECRET)
