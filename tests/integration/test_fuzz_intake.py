"""Property-based fuzzing of the decoder, the validator and intake, on a real store.

Each generated message goes through the real ``Intake`` and must end classified: recorded (accepted
or duplicate), or dead-lettered with a known code, and never ``internal_error`` or ``store_rejected``
(either would mean a check in front of the store has a gap). Nothing personal may reach the logs,
receipts, our DLQ headers or the audit trail: every command carries canary identifiers that are
looked for in all four.

Three families of inputs, with their example counts (11,000 on SQLite, 450 on PostgreSQL):
- structure: arbitrary JSON trees, deep nesting, mutations of a valid command (drop, replace,
  retype, add fields), raw byte edits;
- values: control characters, lone surrogates, NUL, huge and odd numbers, dates at and past the
  edges, unicode and long strings in every field;
- headers: random names, values and bytes; the signature present, absent, wrong, garbage or
  repeated; replay headers, which must count only on a verified command.

Example database: ``tests/fuzz-examples`` is committed. Every run first replays what it holds (the
failing examples found so far, seeded from the crashes found before), then explores at random
(``derandomize=False``): a fixed seed would only ever try one set of inputs. The committed
examples are read-only, so a run never dirties the checkout; locally a new failure is saved under
``.cache/hypothesis`` (or into the committed ones with ``OUBLI_FUZZ_SAVE=1``, to be committed with
its fix). A failure prints its reproduction blob either way.
"""

from __future__ import annotations

import hmac
import json
import os
import string
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import (
    DirectoryBasedExampleDatabase,
    ExampleDatabase,
    MultiplexedDatabase,
    ReadOnlyDatabase,
)
from structlog.testing import capture_logs

from tests.intake_harness import KNOWN_CODES, SYSTEMS, Harness, Outcome
from worker import messages
from worker.deadletter.topic import REPLAY_OF, REPLAYED_BY, REPLAYED_FROM
from worker.intake import IntakeResult
from worker.support import build_command

SECRET = b"fuzz-signing-secret"
CANARY_CUSTOMER = "C-CANARY-4242"
CANARY_EMAIL = "canary.fuzz@example.fr"
CANARY_PHONE = "+33699887766"
CANARY_VENDOR_ID = "GA.CANARY.9911"
CANARIES = (CANARY_CUSTOMER, CANARY_EMAIL, CANARY_PHONE, CANARY_VENDOR_ID)
# Poison: with these codes a record was dead-lettered only because something behind validation broke.
CRASH_CODES = frozenset({"internal_error", "store_rejected"})
SEEDS = Path(__file__).resolve().parents[1] / "fuzz-examples"
LOCAL_EXAMPLES = Path(__file__).resolve().parents[2] / ".cache" / "hypothesis"


def example_database() -> ExampleDatabase:
    seeds = DirectoryBasedExampleDatabase(SEEDS)
    if os.environ.get("OUBLI_FUZZ_SAVE"):  # to commit a new failure with its fix
        return seeds
    if os.environ.get("CI"):
        return ReadOnlyDatabase(seeds)
    # Writable, the seeds would lose every example that no longer fails: new ones go to .cache.
    return MultiplexedDatabase(ReadOnlyDatabase(seeds), DirectoryBasedExampleDatabase(LOCAL_EXAMPLES))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, database=example_database(), derandomize=False, deadline=None,
                    print_blob=True, suppress_health_check=list(HealthCheck))


# --- inputs --------------------------------------------------------------------------------------------------------

request_ids = st.one_of(st.uuids().map(str), st.sampled_from(["dup-1", "dup-2"]))  # some repeat: duplicates, conflicts


def valid_command(request_id: str) -> dict[str, Any]:
    return build_command(kind="erasure", customer_id=CANARY_CUSTOMER, emails=[CANARY_EMAIL], phones=[CANARY_PHONE],
                         identifiers={"ga_client_id": [CANARY_VENDOR_ID]}, request_id=request_id,
                         requested_at=datetime(2026, 11, 24, 10, tzinfo=UTC), requested_by="fuzz", reason="fuzz")


scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30))
json_trees = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=16)


def dumps(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()  # NaN and Infinity literals are part of the fuzz


@st.composite
def deep_texts(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 30_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"reason":[', b"]}")]))
    closed = draw(st.sampled_from([depth, depth - 1, 0]))
    inner = draw(st.sampled_from([b"", b"1", b"null", b'"x"']))
    return opener * depth + inner + closer * max(closed, 0)


def paths(node: Any, trail: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield (*trail, key)
        yield from paths(child, (*trail, key))


def retype(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return dict(enumerate(value))
    if isinstance(value, dict):
        return list(value.values())
    if value is None:
        return True
    return str(value)


@st.composite
def mutated_commands(draw: st.DrawFn) -> bytes:
    body: Any = valid_command(draw(request_ids))
    for _ in range(draw(st.integers(1, 3))):
        where = list(paths(body))
        if not where:
            break
        path = draw(st.sampled_from(where))
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        operation = draw(st.sampled_from(["drop", "replace", "retype", "add"]))
        if operation == "drop":
            del parent[path[-1]]
        elif operation == "replace":
            parent[path[-1]] = draw(json_trees)
        elif operation == "retype":
            parent[path[-1]] = retype(parent[path[-1]])
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_trees)
        else:
            parent.append(draw(json_trees))
    return dumps(body)


@st.composite
def byte_edits(draw: st.DrawFn) -> bytes:
    value = bytearray(dumps(valid_command(draw(request_ids))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(value)))
        edit = draw(st.sampled_from(["insert", "delete", "flip"]))
        if edit == "insert":
            value[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete":
            del value[at:at + draw(st.integers(1, 8))]
        elif at < len(value):
            value[at] ^= draw(st.integers(1, 255))
    return bytes(value)


structure_inputs = st.one_of(json_trees.map(dumps), deep_texts(), mutated_commands(), byte_edits())

SURROGATES = ["\ud800", "\udbff", "\udc00", "\udc80", "\udfff"]
odd_text = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(max_codepoint=0x1F), min_size=1, max_size=4),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=6),
              st.sampled_from(["\x00", "\n", "\r\n", "\x7f", "\u2028", "\ufeff", *SURROGATES]), st.text(max_size=6)),
    st.builds(lambda char, count: char * count, st.characters(), st.integers(100, 1500)),  # long, cheap to draw
    st.sampled_from(["C-100234\n", "\n", " ", "", "x" * 129, "orders_db\n", "a@b", "+33612345678\n"]),
)
offsets = st.one_of(st.just(UTC),
                    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m))))


def rfc3339(moment: datetime) -> str:
    offset = moment.utcoffset() or timedelta()
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    zone = "Z" if moment.tzinfo is UTC else f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    fraction = f".{moment.microsecond:06d}" if moment.microsecond else ""
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}{fraction}{zone}"


timestamps = st.one_of(
    st.builds(lambda naive, zone: rfc3339(naive.replace(tzinfo=zone)), st.datetimes(), offsets),
    st.builds("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}".format, st.integers(0, 9999), st.integers(0, 99),
              st.integers(0, 99), st.integers(0, 99), st.integers(0, 99), st.integers(0, 99),
              st.sampled_from(["Z", "+00:00", "-23:59", "+99:99", ".5Z", ".1234567890Z"])),  # digits, not a date
    st.sampled_from(["9999-12-31T23:59:59Z", "9999-12-31T10:00:00Z", "9999-12-31T23:00:00-01:00",
                     "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+00:01", "9998-12-31T23:59:59Z",
                     "9998-12-01T00:00:00Z", "1000-01-01T00:00:00Z", "0999-12-31T23:59:59Z", "2016-12-31T23:59:60Z",
                     "2026-13-01T00:00:00Z", "2026-02-29T00:00:00Z", "2026-11-24T10:00:00Z\n", "2026-11-24 10:00:00Z"]),
    odd_text,
)
# Values a field could really hold, drawn as often as odd ones: they carry examples through to the store.
plausible_ids = st.text(string.ascii_letters + string.digits + "._:+-", min_size=1, max_size=40)
plausible_times = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=offsets).map(rfc3339)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "request_id": plausible_ids, "customer_id": plausible_ids, "requested_by": plausible_ids,
    "identifier": plausible_ids, "identifier_kind": st.text(string.ascii_lowercase + "_", min_size=1, max_size=20),
    "email": st.builds("{}@{}.fr".format, plausible_ids, st.text(string.ascii_lowercase, min_size=1, max_size=20)),
    "phone": st.integers(10**6, 10**15 - 1).map("+{}".format),
    "requested_at": plausible_times, "due_at": st.one_of(st.none(), plausible_times),
    "reason": st.one_of(st.none(), st.text(max_size=100), st.just("r" * 1000)),
    "kind": st.sampled_from(["erasure", "export"]),
}
numbers = st.one_of(st.integers(), st.floats(), st.booleans(), st.just(1), st.just(1.0),
                    st.integers(30, 6000).map(lambda digits: "LITERAL:" + "9" * digits))
FIELDS = ["request_id", "kind", "customer_id", "email", "phone", "identifier", "identifier_kind", "requested_at",
          "due_at", "requested_by", "reason", "systems", "schema_version"]


@st.composite
def odd_values(draw: st.DrawFn) -> bytes:
    body = valid_command(draw(request_ids))
    subject = body["subject"]
    for field in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True)):
        if field in PLAUSIBLE and draw(st.booleans()):
            value = draw(PLAUSIBLE[field])
            target = subject if field == "customer_id" else body
            if field in ("email", "phone"):
                subject[field + "s"] = [CANARY_EMAIL if field == "email" else CANARY_PHONE, value]
            elif field in ("identifier", "identifier_kind"):
                subject["identifiers"] = {value: [CANARY_VENDOR_ID]} if field == "identifier_kind" else {
                    "ga_client_id": [CANARY_VENDOR_ID, value]}
            else:
                target[field] = value
        elif field in ("requested_at", "due_at"):
            body[field] = draw(timestamps)
        elif field == "schema_version":
            body[field] = draw(numbers)
        elif field == "customer_id":
            subject[field] = draw(odd_text)
        elif field == "email":
            subject["emails"] = [CANARY_EMAIL, draw(odd_text)]
        elif field == "phone":
            subject["phones"] = [CANARY_PHONE, draw(odd_text)]
        elif field in ("identifier", "identifier_kind"):
            kind = draw(odd_text) if field == "identifier_kind" else "ga_client_id"
            subject["identifiers"] = {kind: [CANARY_VENDOR_ID, draw(odd_text)]}
        elif field == "systems":
            body[field] = draw(st.lists(st.one_of(st.sampled_from([*SYSTEMS, "crm"]), odd_text), max_size=3))
        else:
            body[field] = draw(odd_text)
    text = json.dumps(body, allow_nan=True)
    if isinstance(body["schema_version"], str) and body["schema_version"].startswith("LITERAL:"):
        text = text.replace(json.dumps(body["schema_version"]), body["schema_version"].removeprefix("LITERAL:"))
    return text.encode()


def signature_of(value: bytes) -> bytes:
    return hmac.new(SECRET, value, sha256).hexdigest().encode()


header_names = st.one_of(st.sampled_from([messages.SIGNATURE_HEADER, REPLAY_OF, REPLAYED_FROM, REPLAYED_BY,
                                          "x-oubli-error-code", "traceparent", "", "x-\udc80"]), st.text(max_size=20))
header_values = st.one_of(st.binary(max_size=80), st.text(max_size=30).map(str.encode),
                          st.sampled_from([b"", b"\x00", "é".encode(), b"sha256=", b"\xff" * 64, b"0" * 64]))


@st.composite
def header_cases(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, bytes]]]:
    value = draw(st.one_of(st.just(None), mutated_commands(), odd_values()).map(
        lambda v: v if v is not None else dumps(valid_command(str(uuid.uuid4())))))
    good = signature_of(value)
    signatures = st.sampled_from([good, b"sha256=" + good, b"  " + good + b"\n", good.upper(), good[:-1],
                                  signature_of(value + b" "), "é".encode() + good])
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=5))
    if draw(st.booleans()):
        headers.append((messages.SIGNATURE_HEADER, draw(st.one_of(signatures, header_values))))
    if draw(st.booleans()):
        headers += [(REPLAY_OF, b"anchor-request"), (REPLAYED_FROM, b"t.dlq/0/1"), (REPLAYED_BY, b"fuzz-ops")]
    return value, draw(st.permutations(headers))


# --- checks --------------------------------------------------------------------------------------------------------

class Tally:
    """Counts examples and outcomes per family, for the report and the >= target assertion."""

    def __init__(self) -> None:
        self.examples: Counter[str] = Counter()
        self.messages = 0
        self.outcomes: Counter[str] = Counter()
        self.started = time.monotonic()


def check(harness: Harness, value: bytes | None, headers: list[tuple[str, bytes]], tally: Tally,
          family: str) -> Outcome:
    with capture_logs() as logs:
        outcome = harness.send(value, headers=headers)
    tally.messages += 1
    codes = [d.code for d in outcome.dead_letters]
    tally.outcomes[codes[0] if codes else outcome.result.value] += 1
    if outcome.result in (IntakeResult.ACCEPTED, IntakeResult.DUPLICATE):
        assert codes == []
        assert [r["status"] for r in outcome.receipts] in ([], ["accepted"])
    else:
        assert len(codes) == 1 and codes[0] in KNOWN_CODES, codes
        assert codes[0] not in CRASH_CODES, (codes, dict(outcome.dead_letters[0].headers).get("x-oubli-error-message"))
        rejected = [(r["status"], r["error"]["code"]) for r in outcome.receipts]
        assert rejected == ([("rejected", codes[0])] if outcome.result is IntakeResult.REJECTED else [])
    ours = [(k, v) for d in outcome.dead_letters for k, v in d.headers if k.startswith("x-oubli-error")]
    exposed = json.dumps([logs, outcome.receipts, outcome.audit], default=str) + repr(ours)
    for canary in CANARIES:
        assert canary not in exposed, canary
    return outcome


def run_family(harness: Harness, tally: Tally, family: str, strategy: st.SearchStrategy[Any], examples: int,
               body: Callable[[Any], None]) -> None:
    @fuzz_settings(examples)
    @given(strategy)
    def fuzz(case: Any) -> None:
        tally.examples[family] += 1
        body(case)

    # A key of our own (hypothesis's hook for it, as its find() uses): the committed examples stay with
    # their family, and survive edits to this file (the default key is a digest of the source).
    fuzz._hypothesis_internal_database_key = f"oubli-intake-fuzz-{family}".encode()  # type: ignore[attr-defined]

    before = tally.examples[family]
    fuzz()
    ran = tally.examples[family] - before
    print(f"fuzz {family}: {ran} examples; outcomes so far {dict(tally.outcomes)}; "
          f"{time.monotonic() - tally.started:.1f}s")
    assert ran >= examples, f"{family}: {ran} of {examples} examples ran"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fuzz_harnesses(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Harness, Harness]]:
    """An unsigned and a signing intake, each on its own store: SQLite for the bulk, PostgreSQL for a few hundred."""
    if request.param == "sqlite":
        urls = [f"sqlite:///{tmp_path / 'open.db'}", f"sqlite:///{tmp_path / 'signed.db'}"]
    else:
        factory = request.getfixturevalue("pg_schema_urls")
        urls = [factory(), factory()]
    open_, signed = Harness(urls[0], fast=True), Harness(urls[1], secret=SECRET, fast=True)
    yield request.param, open_, signed
    open_.close()
    signed.close()


# Examples per family, on SQLite and on PostgreSQL.
BUDGET = {"structure": (4600, 150), "values": (2700, 150), "headers": (2250, 150)}


def test_fuzz_intake_classifies_every_input(fuzz_harnesses: tuple[str, Harness, Harness]) -> None:
    store, open_, signed = fuzz_harnesses
    tally = Tally()
    budget = {family: sqlite if store == "sqlite" else postgres for family, (sqlite, postgres) in BUDGET.items()}
    anchor = valid_command("anchor-request")
    signed.send(dumps(anchor), headers=[(messages.SIGNATURE_HEADER, signature_of(dumps(anchor)))])
    open_.send(dumps(anchor))

    run_family(open_, tally, "structure", structure_inputs, budget["structure"],
               lambda value: check(open_, value, [], tally, "structure"))
    run_family(open_, tally, "values", odd_values(), budget["values"],
               lambda value: check(open_, value, [], tally, "values"))

    def headers_case(case: tuple[bytes, list[tuple[str, bytes]]]) -> None:
        value, headers = case
        given_signature = dict(headers).get(messages.SIGNATURE_HEADER)
        # Hex in either case (messages.verify_signature).
        verified = given_signature is not None \
            and given_signature.strip().removeprefix(b"sha256=").lower() == signature_of(value)
        for harness in (signed, open_):
            outcome = check(harness, value, headers, tally, "headers")
            if harness is signed and not verified:
                assert [d.code for d in outcome.dead_letters] == ["bad_signature"]
                assert outcome.result is IntakeResult.DEAD_LETTERED
                assert (outcome.receipts, outcome.audit) == ([], [])
            # Honoured only on a recorded command that nobody had to vouch for, or whose signature verified.
            replayed = [e for e in outcome.audit if e["action"] == "replayed_as"]
            trusted = outcome.result is IntakeResult.ACCEPTED and (harness is open_ or verified)
            assert trusted or not replayed
            if trusted and dict(headers).get(REPLAY_OF) == b"anchor-request":
                assert [e["request_id"] for e in replayed] == ["anchor-request"]

    run_family(signed, tally, "headers", header_cases(), budget["headers"], headers_case)
    print(f"fuzz {store}: examples {dict(tally.examples)} ({tally.examples.total()}), {tally.messages} messages, "
          f"{time.monotonic() - tally.started:.1f}s")
    assert tally.examples.total() >= sum(budget.values())
