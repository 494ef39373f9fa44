"""Intake fuzzing, the slower run: a few hundred hostile records fed to a real ``oubli worker`` process on the
real broker and PostgreSQL, then a valid canary. The canary completes, the worker is still running, every
record ended recorded or dead-lettered with a known code, and nothing personal reached its logs or the DLQ
headers. The generator is seeded, so a failure names the record that broke and can be replayed."""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from devkit.pipeline import Receipts, WorkerProcess, raw_settings, settings_from
from tests.intake_harness import KNOWN_CODES
from worker import kafka, messages
from worker.config import Settings
from worker.support import build_command, publish_command

SEED = 20261124
COUNT = 300
SECRET = b"fuzz-signing-secret"
Header = tuple[str, bytes | None]


@dataclass
class Sent:
    category: str
    key: bytes | None
    value: bytes | None
    headers: list[Header]
    request_id: str | None = None  # when the body names one intake may record
    source: str | None = None  # topic/partition/offset, from the delivery report


@dataclass
class Generator:
    rng: random.Random
    personal: list[str] = field(default_factory=list)
    earlier: list[dict[str, Any]] = field(default_factory=list)

    def command(self, **overrides: Any) -> dict[str, Any]:
        n = len(self.personal)
        customer = f"C-fz{n:05d}{self.rng.randrange(16 ** 6):06x}"
        email, phone = f"fz{n:05d}.{self.rng.randrange(10 ** 6)}@example.org", f"+3361{self.rng.randrange(10 ** 7):07d}"
        self.personal += [customer, email, phone]
        command = build_command(
            kind="erasure", customer_id=customer, emails=[email], phones=[phone], requested_by="fuzz",
            request_id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)), reason="fuzz run")
        command.update(overrides)
        self.earlier.append(command)
        return command

    def signed(self, category: str, value: bytes | None, request_id: str | None = None,
               extra: list[Header] | None = None, key: bytes | None = b"fuzz") -> Sent:
        headers: list[Header] = list(extra or [])
        if value is not None:
            headers.append((messages.SIGNATURE_HEADER, messages.sign(value, SECRET).encode()))
        return Sent(category, key, value, headers, request_id)

    def text(self, category: str, command: dict[str, Any], replace: tuple[str, str] | None = None) -> Sent:
        """A command as JSON text, with one literal swapped in (what json.dumps cannot write)."""
        raw = json.dumps(command)
        if replace is not None:
            raw = raw.replace(replace[0], replace[1], 1)
        return self.signed(category, raw.encode("utf-8", "surrogatepass"), command["request_id"])

    # --- the hostile shapes -------------------------------------------------------------------------------------

    def valid(self) -> Sent:
        return self.text("valid", self.command())

    def deep_nesting(self) -> Sent:
        depth = self.rng.randrange(1_000, 30_000)
        command = self.command(reason="@@")
        return self.text("deep_nesting", command, ('"@@"', "[" * depth + "]" * depth))

    def huge_number(self) -> Sent:
        digits = "9" * self.rng.randrange(400, 20_000)
        field_name = self.rng.choice(["schema_version", "reason", "due_at", "systems"])
        command = self.command(**{field_name: "@@"})
        literal = self.rng.choice([digits, f"-{digits}", f"1e{digits[:6]}", f"0.{digits}", "NaN", "Infinity"])
        return self.text("huge_number", command, ('"@@"', literal))

    def far_dates(self) -> Sent:
        late = self.rng.choice(["9999-12-31T23:59:59Z", "9999-12-31T23:59:59-12:00", "9999-12-31T22:00:00+14:00",
                                "9999-12-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z",
                                "9999-12-31T23:59:59.999999Z"])
        command = self.command(requested_at=late)
        if self.rng.random() < 0.5:
            command.pop("due_at", None)
        else:
            command["due_at"] = self.rng.choice([late, "9999-12-31T23:59:59Z"])
        return self.text("far_dates", command)

    def impossible_dates(self) -> Sent:
        bad = self.rng.choice(["2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-24T25:00:00Z",
                               "2026-11-24T10:00:00", "2026-11-24", "tomorrow", "2026-11-24T10:00:00+25:00"])
        return self.text("impossible_dates", self.command(**{self.rng.choice(["requested_at", "due_at"]): bad}))

    def surrogate(self) -> Sent:
        command = self.command(reason="@@")
        literal = self.rng.choice(['"\\udc80"', '"a\\ud800b"', '"\\udfff\\ud800"'])
        return self.text("surrogate", command, ('"@@"', literal))

    def nul(self) -> Sent:
        command = self.command(**{self.rng.choice(["reason", "requested_by"]): "@@"})
        return self.text("nul", command, ('"@@"', self.rng.choice(['"\\u0000"', '"before\\u0000after"'])))

    def trailing_newline(self) -> Sent:
        command = self.command()
        if self.rng.random() < 0.5:
            command["subject"]["customer_id"] += "\n"
        else:
            command["request_id"] += "\n"
        return self.text("trailing_newline", command)

    def garbage_headers(self) -> Sent:
        sent = self.valid()
        names = ["x-oubli-replay-of", "x-oubli-replayed-from", "x-oubli-source", "x-oubli-error-code", "é", "",
                 "x-oubli-signature-extra", "\u2603", "k" * 300]
        garbage: list[Header] = [(self.rng.choice(names), self.rng.choice([None, b"", self.rng.randbytes(40),
                                                                            "é".encode(), b"\xff\xfe"]))
                                 for _ in range(self.rng.randrange(1, 8))]
        sent.headers = garbage + sent.headers
        sent.category = "garbage_headers"
        return sent

    def huge_headers(self) -> Sent:
        sent = self.valid()
        sent.headers = [(f"h{i}", self.rng.randbytes(4096)) for i in range(self.rng.randrange(10, 60))] + sent.headers
        sent.category = "huge_headers"
        return sent

    def bad_signature(self) -> Sent:
        command = self.command()
        value = json.dumps(command).encode()
        signature = self.rng.choice([b"\xc3\xa9\xe2\x9c\x93", "sha256=é".encode(), self.rng.randbytes(32), b"",
                                     messages.sign(value, b"another-secret").encode(), None])
        headers: list[Header] = [] if signature is None else [(messages.SIGNATURE_HEADER, signature)]
        return Sent("bad_signature", b"fuzz", value, headers, command["request_id"])

    def non_utf8(self) -> Sent:
        value = self.rng.choice([self.rng.randbytes(self.rng.randrange(1, 2000)), b'{"reason": "\xff\xfe"}',
                                 "é".encode("latin-1"), b"\xef\xbb\xbf{}"])
        return self.signed("non_utf8", value)

    def tombstone(self) -> Sent:
        return Sent("tombstone", self.rng.choice([None, b"fuzz", self.rng.randbytes(8)]), None,
                    self.rng.choice([[], [(messages.SIGNATURE_HEADER, b"")]]))

    def near_limit(self) -> Sent:
        command = self.command()
        raw = json.dumps(command).encode()
        size = messages.MAX_COMMAND_BYTES + self.rng.randrange(-3, 4)
        padded = raw[:-1] + b" " * (size - len(raw)) + b"}"
        return self.signed("near_limit", padded, command["request_id"])

    def wrong_types(self) -> Sent:
        command = self.command()
        path = self.rng.choice([("kind",), ("subject",), ("subject", "customer_id"), ("subject", "emails"),
                                ("systems",), ("schema_version",), ("request_id",), ("reason",)])
        junk = self.rng.choice([None, True, 0, -1, 1.5, [], {}, [None], {"a": []}, "x" * 5000, "é" * 200])
        node = command
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = junk
        return self.text("wrong_types", command)

    def unknown_system(self) -> Sent:
        return self.text("unknown_system", self.command(systems=[self.rng.choice(["nope", "ALPHA", "alpha\n", ""])]))

    def oversized_arrays(self) -> Sent:
        """Just under 64 KiB of array items that cannot be sorted (ints and strings, or lists), past every
        maxItems: explaining one once took jsonschema minutes, and held the whole worker."""
        command = self.command()
        field = self.rng.choice(["emails", "phones", "identifiers", "systems"])
        items: list[Any] = []
        while len(items) < 5_000:
            n = len(items)
            items += self.rng.choice([[n, str(n)], [[n], str(n)], [{"n": n}, n]])
        if field == "systems":
            command["systems"] = items
        elif field == "identifiers":
            command["subject"]["identifiers"] = {"ga_client_id": items}
        else:
            command["subject"][field] = items
        return self.text("oversized_arrays", command)

    def conflicting_duplicate(self) -> Sent:
        earlier = dict(self.rng.choice(self.earlier))
        earlier["reason"] = f"changed {self.rng.randrange(10 ** 6)}"
        return self.text("conflicting_duplicate", earlier)

    def random_json(self) -> Sent:
        value = self.rng.choice([[], {}, 0, "", None, {"schema_version": 1}, [1, [2, [3]]], {"request_id": None}])
        return self.signed("random_json", json.dumps(value).encode())

    def all(self) -> list[Callable[[], Sent]]:
        return [self.valid, self.deep_nesting, self.huge_number, self.far_dates, self.impossible_dates,
                self.surrogate, self.nul, self.trailing_newline, self.garbage_headers, self.huge_headers,
                self.bad_signature, self.non_utf8, self.tombstone, self.near_limit, self.wrong_types,
                self.unknown_system, self.conflicting_duplicate, self.random_json, self.oversized_arrays]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _produce(settings: Settings, batch: list[Sent]) -> None:
    producer = Producer(kafka.producer_config(settings.kafka))
    topic = settings.kafka.topics.commands

    def delivered(sent: Sent) -> Callable[[Any, Any], None]:
        def callback(error: Any, message: Any) -> None:
            assert error is None, (sent.category, error)
            sent.source = f"{topic}/{message.partition()}/{message.offset()}"
        return callback

    for sent in batch:
        kafka.produce(producer, topic, key=sent.key, value=sent.value, headers=list(sent.headers),
                      on_delivery=delivered(sent), timeout=30)
    assert producer.flush(30) == 0
    assert all(sent.source for sent in batch)


def _dead_letters(settings: Settings, into: dict[str, tuple[str, bytes]], timeout: float) -> None:
    """Reads the DLQ topic from the start; ``into`` maps each record's x-oubli-source to (code, message)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"fuzz-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.kafka.topics.dlq])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            headers = dict(message.headers() or [])
            into[headers["x-oubli-source"].decode()] = (headers["x-oubli-error-code"].decode(),
                                                        headers.get("x-oubli-error-message") or b"")
    finally:
        consumer.close()


def _worker_metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def worker_process(pg_url: str, kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[WorkerProcess, Settings, int]]:
    port = _free_port()
    systems = {"alpha": {"connector": "devkit.fakes", "concurrency": 4, "settings": {"url": pg_url}}}
    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems=systems, signing_secret=SECRET.decode())
    raw["worker"]["http_port"] = port
    settings = settings_from(raw)
    process = WorkerProcess(raw, tmp_path).start()
    yield process, settings, port
    process.kill()


def test_hostile_records_against_the_real_worker_then_a_canary_completes(
    worker_process: tuple[WorkerProcess, Settings, int], pg_url: str,
) -> None:
    process, settings, port = worker_process
    generator = Generator(random.Random(SEED))
    shapes = generator.all()
    batch = [generator.valid()] + [generator.rng.choice(shapes)() for _ in range(COUNT - 1)]
    _produce(settings, batch)
    canary = generator.command()
    publish_command(settings.kafka, canary, signing_secret=SECRET)

    receipts = Receipts(settings)
    try:
        receipts.wait(canary["request_id"], {"completed"}, timeout=90)
    finally:
        receipts.close()
    assert process.process is not None and process.process.poll() is None, process.logs()[-3000:]

    # Every record, hostile or not, ended in exactly one place: a recorded request, or the DLQ (known code).
    dead: dict[str, tuple[str, bytes]] = {}
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    deadline = time.monotonic() + 60
    while True:
        _dead_letters(settings, dead, timeout=3)
        with engine.connect() as conn:
            query = sa.text("SELECT request_id FROM requests WHERE status <> 'rejected'")
            recorded = {row[0] for row in conn.execute(query)}
        fates = {i: _fate(sent, dead, recorded) for i, sent in enumerate(batch)}
        if all(fate != "missing" for fate in fates.values()) or time.monotonic() > deadline:
            break
    engine.dispose()
    missing = sorted({batch[i].category for i, fate in fates.items() if fate == "missing"})
    assert not missing, f"records neither recorded nor dead-lettered, by shape: {missing}"
    assert {code for code, _ in dead.values()} <= KNOWN_CODES, sorted({code for code, _ in dead.values()} - KNOWN_CODES)
    assert len(dead) + len(recorded) == len(batch) + 1  # the canary is recorded too; nothing counted twice

    consumed = sum(v for k, v in _worker_metrics(port).items() if k.startswith("oubli_commands_total["))
    assert consumed == len(batch) + 1
    logs = process.logs()
    assert '"event": "command_rejected"' in logs  # the logs checked below are the worker's JSON lines
    for event in ("intake_failed", "loop_step_failed", "store_unavailable", "Traceback"):
        assert event not in logs, event
    personal = [p for p in generator.personal if p in logs or any(p.encode() in m for _, m in dead.values())]
    assert not personal, "personal data in the worker's logs or the DLQ error messages"


def _fate(sent: Sent, dead: dict[str, tuple[str, bytes]], recorded: set[str]) -> str:
    if sent.source in dead:
        return f"dlq:{dead[sent.source][0]}"
    if sent.request_id is not None and sent.request_id in recorded:
        return "recorded"
    return "missing"
