"""``oubli dlq summary`` and ``oubli dlq replay`` against the real broker and store, through the CLI.

What each test proves:
- the unknown_system round trip: rejected commands land in the DLQ, ``summary`` counts them by code,
  ``--dry-run`` publishes and commits nothing but names the new request ids, ``replay --code`` sends
  exactly those records back, each under a new request_id (their ids were receipted ``rejected``, which
  is terminal) with their key and the rest of their body, re-signed, plus ``x-oubli-replay-of`` and
  ``x-oubli-replayed-from``/``-by``, leaves other codes for later, a second replay sends nothing, and no
  output names a subject.
- what an SRE wants once the cause is fixed: the command completes under its new id, the old id's
  ``rejected`` receipt is untouched, the new request's audit trail names the old id and the operator, and a
  replay repeated after a lost cursor commit reuses the new id, so there is still one request.
- the reissue rule, record by record (store state, code, --code, signature), without I/O.
- a replayed signed command whose request the store does not know goes back byte-identical, verifies and
  completes; without --code a conflicting_duplicate is left alone.
- a record the broker refuses makes ``replay`` exit 1 and moves no cursor; a missing DLQ topic, or a store
  that cannot be read, is an error at once, not a hang.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result
from confluent_kafka import Message, Producer
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from devkit.pipeline import (
    Receipts,
    personal_strings,
    raw_settings,
    read_topic,
    run_until,
    settings_from,
    subject_command,
)
from worker import config, kafka, messages
from worker.app import Worker
from worker.cli import cli
from worker.config import Settings
from worker.core import timefmt
from worker.deadletter.reissue import Known, Reissuer, new_request_id
from worker.deadletter.topic import DeadLetter, replay_note
from worker.store import db
from worker.store.repository import NotFound
from worker.store.schema import requests
from worker.support import publish_command

SECRET = "dlq-test-signing-secret"


class Oubli:
    """``oubli --config <file> dlq ...`` through CliRunner; keeps every output, for the personal-data check."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.outputs: list[str] = []

    def configure(self, raw: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump(raw))

    def __call__(self, *args: str, exit_code: int = 0) -> Result:
        return self.cli("dlq", *args, exit_code=exit_code)

    def cli(self, *args: str, exit_code: int = 0) -> Result:
        """Any ``oubli`` command with this config."""
        result = CliRunner().invoke(cli, ["--config", str(self.path), *args], catch_exceptions=False)
        self.outputs.append(result.output)
        assert result.exit_code == exit_code, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").output)


def write_config(raw: dict[str, Any], path: Path) -> Oubli:
    oubli = Oubli(path)
    oubli.configure(raw)
    return oubli


def topic_size(settings: Settings, topic: str) -> int:
    # Counted, not taken from the watermarks: the relay publishes in transactions, whose commit markers take offsets.
    return len(read_topic(settings, topic))


def every(seconds: float, check: Callable[[], bool]) -> Callable[[], bool]:
    """``check``, asked at most every ``seconds`` (a broker round trip per worker loop is too much)."""
    last = [0.0]

    def throttled() -> bool:
        if time.monotonic() - last[0] < seconds:
            return False
        last[0] = time.monotonic()
        return check()
    return throttled


def run_worker_until_dlq_holds(worker: Worker, settings: Settings, count: int) -> None:
    run_until(worker, every(0.2, lambda: topic_size(settings, settings.kafka.topics.dlq) >= count), timeout=30)
    assert topic_size(settings, settings.kafka.topics.dlq) == count


def headers_of(message: Message) -> dict[str, bytes]:
    return {k: v for k, v in (message.headers() or []) if v is not None}


def assert_no_personal_data(outputs: list[str], commands: list[dict[str, Any]]) -> None:
    text = "\n".join(outputs)
    for command in commands:
        for value in personal_strings(command):
            assert value not in text, "a command's output names a subject"


def fake_system(pg_url: str) -> dict[str, Any]:
    return {"connector": "devkit.fakes", "settings": {"url": pg_url}}


def test_unknown_system_round_trip(pg_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    """Rejected as unknown_system, counted, dry-run, replayed under new ids once the system is configured, once.

    Their request_ids were receipted ``rejected`` (the contract: a readable, unknown request_id gets a rejected
    receipt), and ``rejected`` is terminal (invariant 3: never two terminal receipts for one request). So the
    replay carries each command out under a new request_id; the assertions marked CONTRACT pin that down.
    """
    only_alpha = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems={"alpha": fake_system(pg_url)},
                              signing_secret=SECRET)
    settings = settings_from(only_alpha)
    topics = settings.kafka.topics
    oubli = write_config(only_alpha, tmp_path / "oubli.yaml")
    assert oubli.json("summary") == {"topic": topics.dlq, "partitions": kafka.COMMAND_PARTITIONS, "records": 0,
                                     "codes": []}

    unknown = [subject_command(systems=["alpha", "beta"]) for _ in range(2)]
    garbage_key = b"C-garbage-subject"
    for command in unknown:
        publish_command(settings.kafka, command, signing_secret=SECRET.encode())
    # Signed, so that it reaches the JSON check: an unsigned one is bad_signature before anything is read.
    publish_command(settings.kafka, {}, raw=b'{"request_id": "oops", ', key=garbage_key, signing_secret=SECRET.encode())

    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    try:
        run_worker_until_dlq_holds(worker, settings, 3)
        assert {worker.store.receipt(c["request_id"])["status"] for c in unknown} == {"rejected"}
    finally:
        worker.close()

    summary = oubli.json("summary")
    by_code = {c["code"]: c for c in summary["codes"]}
    assert summary["records"] == 3 and set(by_code) == {"unknown_system", "invalid_json"}
    assert (by_code["unknown_system"]["count"], by_code["unknown_system"]["unreplayed"]) == (2, 2)
    assert by_code["unknown_system"]["first_source"].startswith(f"{topics.commands}/")
    assert by_code["unknown_system"]["first_at"] <= by_code["unknown_system"]["last_at"]
    human = oubli("summary").output
    assert "unknown_system" in human and "invalid_json" in human and "3 records" in human

    # --dry-run counts and names the new ids, publishes nothing and moves no cursor.
    commands_before = topic_size(settings, topics.commands)
    dry = oubli.json("replay", "--code", "unknown_system", "--dry-run")
    assert dry["replayed"] == {"unknown_system": 2} and dry["skipped"] == {"invalid_json": 1}
    assert dry["cursors_moved"] == [] and dry["kept"] == {}
    assert {p["replay_of"] for p in dry["new_requests"]} == {c["request_id"] for c in unknown}
    assert "would replay" in oubli("replay", "--dry-run").output
    assert topic_size(settings, topics.commands) == commands_before
    assert {c["code"]: c["unreplayed"] for c in oubli.json("summary")["codes"]} == {"unknown_system": 2,
                                                                                     "invalid_json": 1}
    missing_by = oubli("replay", "--code", "unknown_system", exit_code=2)
    assert "--by" in missing_by.output

    # The cause is fixed: the worker now has beta. Replay only the unknown_system records.
    with_beta = {**only_alpha, "systems": {"alpha": fake_system(pg_url), "beta": fake_system(pg_url)}}
    oubli.configure(with_beta)
    settings = settings_from(with_beta)
    replayed = oubli.json("replay", "--code", "unknown_system", "--by", "ops")
    new_requests = replayed.pop("new_requests")
    assert replayed == {"dry_run": False, "replayed": {"unknown_system": 2}, "earlier": {}, "kept": {},
                        "references": {}, "skipped": {"invalid_json": 1}, "failed": {},
                        "cursors_moved": ["unknown_system"]}
    assert sorted(new_requests, key=str) == sorted(dry["new_requests"], key=str)  # the dry run named them
    new_id = {p["replay_of"]: p["request_id"] for p in new_requests}

    # Key and body as sent but for request_id, re-signed; DLQ headers gone; which request, where from, who.
    dead = {(m.partition(), m.offset()): m for m in read_topic(settings, topics.dlq)}
    resent = [m for m in read_topic(settings, topics.commands) if "x-oubli-replayed-from" in headers_of(m)]
    assert len(resent) == 2
    originals = {c["request_id"]: c for c in unknown}
    for message in resent:
        headers = headers_of(message)
        old_id = headers["x-oubli-replay-of"].decode()
        command = originals[old_id]
        assert json.loads(message.value()) == {**command, "request_id": new_id[old_id]}
        assert message.key() == command["subject"]["customer_id"].encode()
        assert messages.verify_signature(message.value(), headers[messages.SIGNATURE_HEADER], SECRET.encode())
        topic, partition, offset = headers["x-oubli-replayed-from"].decode().rsplit("/", 2)
        source = dead[(int(partition), int(offset))]
        assert topic == topics.dlq and source.value() == json.dumps(command).encode()
        assert source.key() == message.key()
        assert headers_of(source)["x-oubli-error-code"] == b"unknown_system"
        assert headers["x-oubli-replayed-by"] == b"ops"
        assert not {k for k in headers if k.startswith("x-oubli-error-") or k == "x-oubli-source"}
        assert message.partition() == kafka.partition_for(message.key(), kafka.COMMAND_PARTITIONS)

    worker = Worker(settings, serve_http=False)
    worker.start()
    try:
        run_until(worker, every(0.2, lambda: {status_of(worker, n) for n in new_id.values()} == {"completed"}),
                  timeout=30)
        run_until(worker, lambda: not worker.store.outbox.batch(1) and not worker.relay.pending(), timeout=10)
        latest = {m.key(): json.loads(m.value())["status"] for m in read_topic(settings, topics.receipts)}
        for command in unknown:
            old_id = command["request_id"]
            assert latest[old_id.encode()] == "rejected"  # CONTRACT: terminal, never reopened
            assert worker.store.receipt(old_id)["status"] == "rejected"
            assert latest[new_id[old_id].encode()] == "completed"  # CONTRACT: carried out under its new id
    finally:
        worker.close()
    codes = {c["code"]: (c["count"], c["unreplayed"]) for c in oubli.json("summary")["codes"]}
    assert codes == {"unknown_system": (2, 0), "invalid_json": (1, 1)}  # CONTRACT: nothing came back

    # A second run sends nothing: the cursor is past every unknown_system record.
    commands_before = topic_size(settings, topics.commands)
    again = oubli.json("replay", "--code", "unknown_system", "--by", "ops")
    assert again["replayed"] == {} and again["earlier"] == {"unknown_system": 2} and again["new_requests"] == []
    assert "total replayed: 0" in oubli("replay", "--code", "unknown_system", "--by", "ops").output
    assert topic_size(settings, topics.commands) == commands_before

    assert_no_personal_data(oubli.outputs, unknown)
    assert garbage_key.decode() not in "\n".join(oubli.outputs)


def status_of(worker: Worker, request_id: str) -> str | None:
    try:
        status: str = worker.store.receipt(request_id)["status"]
    except NotFound:
        return None
    return status


def test_replay_completes_a_request_rejected_as_unknown_system(pg_url: str, kafka_bootstrap: str,
                                                                tmp_path: Path) -> None:
    """What the SRE wants from a replay once the cause is fixed, within the contract: the command is carried out under a
    new id; the old id keeps its one terminal receipt, ``rejected``; the new request's audit trail is the proof."""
    only_alpha = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems={"alpha": fake_system(pg_url)},
                              signing_secret=SECRET)
    settings = settings_from(only_alpha)
    topics = settings.kafka.topics
    oubli = write_config(only_alpha, tmp_path / "oubli.yaml")
    requested_at = timefmt.utcnow() - timedelta(days=10)
    command = subject_command(systems=["alpha", "beta"], requested_at=requested_at,
                              due_at=requested_at + timedelta(days=20))  # not the default deadline
    old_id = command["request_id"]
    publish_command(settings.kafka, command, signing_secret=SECRET.encode())
    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    try:
        run_worker_until_dlq_holds(worker, settings, 1)
    finally:
        worker.close()

    with_beta = {**only_alpha, "systems": {"alpha": fake_system(pg_url), "beta": fake_system(pg_url)}}
    oubli.configure(with_beta)
    settings = settings_from(with_beta)
    worker = Worker(settings, serve_http=False)
    worker.start()
    receipts = Receipts(settings)
    try:
        rejected = receipts.wait(old_id, {"rejected"}, step=worker.run_once, timeout=10)
        assert rejected["error"]["code"] == "unknown_system"

        first = oubli.json("replay", "--code", "unknown_system", "--by", "ops")
        assert (first["replayed"], first["kept"], first["cursors_moved"]) == ({"unknown_system": 1}, {},
                                                                             ["unknown_system"])
        ((replay_of, new_id),) = [(p["replay_of"], p["request_id"]) for p in first["new_requests"]]
        assert replay_of == old_id and new_id != old_id and str(uuid.UUID(new_id)) == new_id
        done = receipts.wait(new_id, {"completed", "rejected"}, step=worker.run_once, timeout=30)
        assert done["status"] == "completed", done["error"]
        assert timefmt.parse(done["due_at"]) == timefmt.parse(command["due_at"])  # the obligation did not move
        assert timefmt.parse(done["requested_at"]) == timefmt.parse(command["requested_at"])
        assert receipts.of(old_id) and all(r == rejected for r in receipts.of(old_id))  # untouched
        assert worker.store.receipt(old_id)["status"] == "rejected"

        _, _, events = worker.store.get(new_id)
        (accepted,) = [e for e in events if e["action"] == "accepted"]
        assert f"replay of {old_id} from {topics.dlq}/" in accepted["detail"] and accepted["detail"].endswith(" by ops")
        # Support holds only the producer's old id: it leads to the new one (append-only, no receipt).
        (link,) = [e for e in worker.store.get(old_id)[2] if e["action"] == "replayed_as"]
        assert link["detail"].startswith(f"carried out as {new_id}; replay of {old_id}") and link["detail"].endswith(
            " by ops")
        assert f"replayed  carried out as {new_id}" in oubli.cli("status", old_id).output
        (resent,) = [m for m in read_topic(settings, topics.commands) if "x-oubli-replay-of" in headers_of(m)]
        assert messages.verify_signature(resent.value(), headers_of(resent)[messages.SIGNATURE_HEADER],
                                         SECRET.encode())

        commands_before = topic_size(settings, topics.commands)
        again = oubli.json("replay", "--code", "unknown_system", "--by", "ops")
        assert (again["replayed"], again["earlier"], again["new_requests"]) == ({}, {"unknown_system": 1}, [])
        assert topic_size(settings, topics.commands) == commands_before

        # The cursor commit of a run is lost (its consumer group deleted): the next run sends the record again,
        # under the same new id, and the worker deduplicates it.
        group = f"{settings.kafka.group_id}-dlq-replay.unknown_system"
        admin = kafka.admin(settings.kafka)  # kept referenced: the future fails if the client is collected
        admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
        repeat = oubli("replay", "--code", "unknown_system", "--by", "ops")
        assert f"{old_id} -> {new_id}" in repeat.output and "total replayed: 1" in repeat.output
        run_until(worker, every(0.1, lambda: "duplicate_received" in {e["action"]
                                                                      for e in worker.store.get(new_id)[2]}),
                  timeout=20)
        receipts.drain()
        with worker.store.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(requests)).scalar_one() == 2
        assert [e["action"] for e in worker.store.get(new_id)[2]].count("accepted") == 1
        terminal = {r["status"] for r in receipts.of(new_id)} & {"completed", "rejected"}
        assert terminal == {"completed"} and all(r == rejected for r in receipts.of(old_id))
        assert topic_size(settings, topics.dlq) == 1
    finally:
        receipts.close()
        worker.close()
    assert_no_personal_data(oubli.outputs, [command])


def dead_letter(settings: Settings, command: dict[str, Any], code: str) -> None:
    """Writes a DLQ record the way intake and the outbox relay do: the signed command's key, value and headers,
    then the DLQ's own headers."""
    value = json.dumps(command).encode()
    headers = [(messages.SIGNATURE_HEADER, messages.sign(value, SECRET.encode()).encode()),
               ("x-oubli-error-code", code.encode()), ("x-oubli-error-message", b"a PII-free message"),
               ("x-oubli-source", f"{settings.kafka.topics.commands}/0/0".encode())]
    producer = Producer(kafka.producer_config(settings.kafka))
    producer.produce(settings.kafka.topics.dlq, key=command["subject"]["customer_id"].encode(), value=value,
                     headers=headers)
    assert producer.flush(10) == 0


def test_replayed_signed_command_verifies_and_completes(pg_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    """A dead letter whose request the store does not know (so no rejected row stands in its way) goes back
    byte-identical: the signature still verifies, and the request completes. Without --code, a
    conflicting_duplicate is left for a run that names it."""
    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems={"alpha": fake_system(pg_url)},
                       signing_secret=SECRET)
    settings = settings_from(raw)
    oubli = write_config(raw, tmp_path / "oubli.yaml")
    command, conflicting = subject_command(), subject_command()
    dead_letter(settings, command, "bad_signature")
    dead_letter(settings, conflicting, "conflicting_duplicate")

    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    receipts = Receipts(settings)
    try:
        report = oubli.json("replay", "--by", "ops")
        assert (report["replayed"], report["skipped"], report["cursors_moved"]) == (
            {"bad_signature": 1}, {"conflicting_duplicate": 1}, ["bad_signature"])
        assert (report["kept"], report["new_requests"]) == ({}, [])
        (resent,) = [m for m in read_topic(settings, settings.kafka.topics.commands)]
        assert resent.value() == json.dumps(command).encode()
        done = receipts.wait(command["request_id"], {"completed", "rejected"}, step=worker.run_once, timeout=30)
        assert done["status"] == "completed", done["error"]
    finally:
        receipts.close()
        worker.close()
    assert "conflicting_duplicate only with --code" in oubli("replay", "--by", "ops").output
    codes = {c["code"]: c["unreplayed"] for c in oubli.json("summary")["codes"]}
    assert codes == {"bad_signature": 0, "conflicting_duplicate": 1}
    assert_no_personal_data(oubli.outputs, [command, conflicting])


def letter(command: dict[str, Any] | None, code: str, *, offset: int = 7, signature: str | None = None,
           value: bytes | None = None) -> DeadLetter:
    value = value if value is not None else json.dumps(command).encode()
    signed = messages.sign(value, SECRET.encode()) if signature is None else signature
    return DeadLetter(partition=1, offset=offset, code=code, timestamp=None, source="c/1/3", key=b"C-1", value=value,
                      headers=((messages.SIGNATURE_HEADER, signed.encode()), ("traceparent", b"t"),
                               ("x-oubli-error-code", code.encode()), ("x-oubli-replay-of", b"stale")))


def test_the_reissue_rule_record_by_record() -> None:
    """Which dead letters a replay carries out under a new request_id (worker/deadletter/reissue.py), without I/O."""
    key = b"k" * 32
    rejected, executed, same, stranger = (subject_command() for _ in range(4))
    stored = {rejected["request_id"]: Known("rejected", None),
              executed["request_id"]: Known("completed", "a-different-body"),
              same["request_id"]: Known("completed", messages.body_digest(key, same))}
    asked: list[set[str]] = []

    def lookup(ids: Any) -> dict[str, Known]:
        asked.append(set(ids))
        return {i: stored[i] for i in ids if i in stored}

    def plan(code: str, command: dict[str, Any] | None, *, named: frozenset[str] = frozenset(),
             secret: str | None = SECRET, **kwargs: Any) -> Any:
        reissuer = Reissuer(lookup, subject_key=key, signing_secret=secret.encode() if secret else None, named=named)
        (out,) = reissuer.plan([letter(command, code, **kwargs)], "dlq", "ops")
        return out

    def reissued(out: Any) -> bool:
        return out.request_id is not None

    # Unknown or unreadable request_id: byte-identical, not "kept".
    out = plan("unknown_system", stranger)
    assert (reissued(out), out.kept, out.value) == (False, False, json.dumps(stranger).encode())
    assert not reissued(plan("invalid_json", None, value=b'{"request_id": "x", '))
    # Rejected by the store: configuration faults are reissued, other codes only when named.
    for code in ("unknown_system", "bad_signature", "export_not_configured", "no_systems"):
        assert reissued(plan(code, rejected))
    assert plan("schema_violation", rejected).kept and reissued(plan("schema_violation", rejected,
                                                                     named=frozenset({"schema_violation"})))
    assert plan("conflicting_duplicate", rejected).kept
    assert reissued(plan("conflicting_duplicate", rejected, named=frozenset({"conflicting_duplicate"})))
    # A different body was carried out under the id: only a named conflicting_duplicate is reissued.
    assert plan("unknown_system", executed, named=frozenset({"unknown_system"})).kept
    assert plan("conflicting_duplicate", executed).kept
    assert reissued(plan("conflicting_duplicate", executed, named=frozenset({"conflicting_duplicate"})))
    # The store holds this very body: never reissued (the worker deduplicates it), even when named.
    assert plan("conflicting_duplicate", same, named=frozenset({"conflicting_duplicate"})).kept
    # A signature the configured secret does not verify is never re-signed; without a secret it is dropped.
    assert plan("bad_signature", rejected, signature="0" * 64).kept
    unsigned = plan("bad_signature", rejected, secret=None)
    assert reissued(unsigned) and messages.SIGNATURE_HEADER not in dict(unsigned.headers)

    out = plan("unknown_system", rejected)
    headers = dict(out.headers)
    assert (out.replay_of, headers["x-oubli-replay-of"]) == (rejected["request_id"], rejected["request_id"].encode())
    assert json.loads(out.value) == {**rejected, "request_id": out.request_id}  # every other field as it was
    assert list(json.loads(out.value)) == list(rejected)  # in its order
    assert messages.verify_signature(out.value, headers[messages.SIGNATURE_HEADER], SECRET.encode())
    assert (headers["traceparent"], headers["x-oubli-replayed-from"], headers["x-oubli-replayed-by"]) == (
        b"t", b"dlq/1/7", b"ops")
    assert "x-oubli-error-code" not in headers and [k for k, _ in out.headers].count("x-oubli-replay-of") == 1
    # The new id depends on the request and its body only: the same on every run, and for every DLQ copy, and
    # under the digest of the body as sent (nulls and all), as before absent and null counted the same.
    assert out.request_id == plan("unknown_system", rejected, offset=99).request_id == new_request_id(
        rejected["request_id"], messages.sent_digest(key, rejected))
    assert plan("unknown_system", {**rejected, "reason": "other"}).request_id != out.request_id
    assert all(len(ids) <= 1 for ids in asked)  # one lookup per plan, of the readable ids only

    sent = [(k, v) for k, v in out.headers if isinstance(v, bytes)]
    assert replay_note(sent) == f"replay of {rejected['request_id']} from dlq/1/7 by ops"
    assert replay_note([("x-oubli-replayed-from", b"dlq/0/1"), ("x-oubli-replayed-by", b"o\n" * 200)]) == (
        "replayed from dlq/0/1 by " + "o" * 128)
    assert replay_note([("traceparent", b"t")]) is None


def test_a_record_the_broker_refuses_fails_the_replay_and_moves_no_cursor(kafka_bootstrap: str,
                                                                          tmp_path: Path) -> None:
    raw = raw_settings(store_url=f"sqlite:///{tmp_path / 'unused.db'}", bootstrap=kafka_bootstrap, systems={})
    topics = raw["kafka"]["topics"]
    oubli = write_config(raw, tmp_path / "oubli.yaml")
    assert "not available" in oubli("summary", exit_code=1).output  # no DLQ topic yet: an error, not a hang
    # A commands topic that takes only small records: the broker refuses the replayed command.
    admin = kafka.admin(config.build(raw, env={}).kafka)
    admin.create_topics([NewTopic(topics["commands"], kafka.COMMAND_PARTITIONS, 1,
                                  config={"max.message.bytes": "200"})])[topics["commands"]].result()
    settings = settings_from(raw)
    command = subject_command(reason="x" * 300)
    dead_letter(settings, command, "unknown_system")

    # The replay must know whether the store rejected the request: a store it cannot read stops it at once.
    no_store = oubli("replay", "--by", "ops", exit_code=1)
    assert "does not exist" in no_store.output and not (tmp_path / "unused.db").exists()
    db.migrate(db.create_engine(settings.store_url))
    failed = oubli("replay", "--by", "ops", "--timeout", "20", exit_code=1)
    assert "not acknowledged" in failed.output
    assert oubli.json("summary")["codes"][0]["unreplayed"] == 1  # the cursor did not move
    again = json.loads(oubli("replay", "--by", "ops", "--json", exit_code=1).stdout)  # the same record, again
    assert (again["replayed"], again["failed"], again["cursors_moved"]) == ({}, {"unknown_system": 1}, [])
    assert_no_personal_data(oubli.outputs, [command])



def test_a_replay_rejected_again_says_so_in_the_audit_trail(tmp_path: Path) -> None:
    """The chain old id -> new id stays provable when the new one is rejected too."""
    from worker import states
    from worker.config import Topics
    from worker.deadletter.topic import REPLAY_OF, REPLAYED_BY, REPLAYED_FROM
    from worker.intake import Intake, IntakeResult
    from worker.intake import Message as Incoming
    from worker.store.repository import Store

    engine = db.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    db.migrate(engine)
    store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="test")
    intake = Intake(store, subject_key=b"k", signing_secret=None, systems={"alpha": 3})
    command = subject_command(systems=["beta"])  # still unknown on this worker
    replayed = Incoming(value=json.dumps(command).encode(), key=b"C-1", source="t.commands/0/9", headers=[
        (REPLAYED_FROM, b"t.dlq/2/41"), (REPLAYED_BY, b"ops"), (REPLAY_OF, b"old-request-id")])
    assert intake.handle(replayed, timefmt.utcnow()) is IntakeResult.REJECTED
    _, _, audit = store.get(command["request_id"])
    assert [e["action"] for e in audit] == ["rejected"]
    assert audit[0]["error_code"] == "unknown_system"
    assert audit[0]["detail"].endswith("; replay of old-request-id from t.dlq/2/41 by ops")


def test_a_reference_the_relay_left_for_a_refused_command_is_reported_not_replayed(kafka_bootstrap: str,
                                                                                    tmp_path: Path) -> None:
    raw = raw_settings(store_url=f"sqlite:///{tmp_path / 'oubli.db'}", bootstrap=kafka_bootstrap, systems={})
    settings = settings_from(raw)
    oubli = write_config(raw, tmp_path / "oubli.yaml")
    oubli.cli("topics")
    db.migrate(db.create_engine(settings.store_url))
    reference = json.dumps({"oubli_dlq_reference": 1, "kafka_error": "MSG_SIZE_TOO_LARGE", "sha256": "ab" * 32,
                            "size_bytes": 70000}).encode()
    producer = Producer(kafka.producer_config(settings.kafka))
    producer.produce(settings.kafka.topics.dlq, value=reference, headers=[
        ("x-oubli-error-code", b"internal_error"), ("x-oubli-error-message", b"a PII-free message"),
        ("x-oubli-source", f"{settings.kafka.topics.commands}/0/7".encode()),
        ("x-oubli-dlq-reference", b"sha256:" + b"ab" * 32)])
    assert producer.flush(10) == 0

    report = json.loads(oubli("replay", "--code", "internal_error", "--by", "ops", "--json").stdout)
    assert (report["replayed"], report["references"], report["failed"]) == ({}, {"internal_error": 1}, {})
    assert topic_size(settings, settings.kafka.topics.commands) == 0
