"""What support and the CLI do with Kafka: publish a command, read one request's latest receipt; and what a
CLI command's failure means for the script that ran it (exit codes, one ``error: …`` line)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import click
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from worker import jsontext, kafka, logs, messages
from worker.config import KafkaSettings
from worker.core.errors import ConfigError, OubliError, StoreUnavailable
from worker.core.timefmt import iso, utcnow
from worker.stall import StalledTooLong, error_kind, error_sqlstate
from worker.store.faults import is_outage


def build_command(
    *, kind: str, customer_id: str, emails: Sequence[str] = (), phones: Sequence[str] = (),
    identifiers: Mapping[str, Sequence[str]] | None = None, systems: Sequence[str] | None = None,
    requested_by: str = "oubli-cli", reason: str | None = None, request_id: str | None = None,
    requested_at: datetime | None = None, due_at: datetime | None = None,
) -> dict[str, Any]:
    subject: dict[str, Any] = {"customer_id": customer_id}
    if emails:
        subject["emails"] = list(emails)
    if phones:
        subject["phones"] = list(phones)
    if identifiers:
        subject["identifiers"] = {k: list(v) for k, v in identifiers.items()}
    return {
        "schema_version": 1,
        "request_id": request_id or str(uuid.uuid4()),
        "kind": kind,
        "subject": subject,
        "requested_at": iso(requested_at or utcnow()),
        "requested_by": requested_by,
        "due_at": iso(due_at) if due_at else None,
        "systems": list(systems) if systems else None,
        "reason": reason,
    }


class CommandPublisher:
    """One idempotent producer for many commands, keyed by customer_id (per-subject order) and signed
    when a secret is given. ``publish`` blocks only while librdkafka's queue is full, for at most
    ``timeout`` seconds; ``done(ok)`` runs from ``publish`` or ``flush`` once the broker acknowledged or
    refused the command. A command not acknowledged within ``timeout`` counts as refused.
    """

    def __init__(self, settings: KafkaSettings, *, signing_secret: bytes | None = None, timeout: float = 30.0) -> None:
        self._topic = settings.topics.commands
        self._secret = signing_secret
        self._timeout = timeout
        self._producer = Producer({**kafka.producer_config(settings), "message.timeout.ms": int(timeout * 1000)})

    def publish(self, command: Mapping[str, Any], done: Callable[[bool], None], *, raw: bytes | None = None,
                key: bytes | None = None) -> None:
        value = raw if raw is not None else json.dumps(command).encode("utf-8")
        if key is None:
            key = str(command.get("subject", {}).get("customer_id", "")).encode() or None
        headers: list[tuple[str, str | bytes | None]] = []
        if self._secret:
            headers.append((messages.SIGNATURE_HEADER, messages.sign(value, self._secret).encode()))
        kafka.produce(self._producer, self._topic, key=key, value=value, headers=headers,
                      on_delivery=lambda err, _msg: done(err is None), timeout=self._timeout)

    def flush(self) -> int:
        """Waits for every acknowledgement; returns how many commands are still unacknowledged."""
        return int(self._producer.flush(self._timeout))


def publish_command(settings: KafkaSettings, command: Mapping[str, Any], *, signing_secret: bytes | None = None,
                    raw: bytes | None = None, key: bytes | None = None) -> None:
    """Publishes one command and waits for the broker's acknowledgement."""
    acknowledged: list[bool] = []
    publisher = CommandPublisher(settings, signing_secret=signing_secret)
    publisher.publish(command, acknowledged.append, raw=raw, key=key)
    if publisher.flush() or acknowledged != [True]:
        raise KafkaException("the command was not acknowledged within 30 s")


def read_receipt(settings: KafkaSettings, request_id: str, *, timeout: float = 10.0) -> dict[str, Any] | None:
    """The latest receipt of one request, reading only the partition its key hashes to."""
    topic = settings.topics.receipts
    key = request_id.encode()
    consumer = Consumer({
        **kafka.consumer_config(settings), "group.id": f"oubli-receipt-{uuid.uuid4()}",
        "enable.partition.eof": True,
    })
    try:
        metadata = consumer.list_topics(topic, timeout=min(timeout, kafka.METADATA_TIMEOUT)).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaException(f"topic {topic} is not available")
        partition = kafka.partition_for(key, len(metadata.partitions))
        low, high = kafka.watermarks(consumer, TopicPartition(topic, partition), timeout=timeout)
        if high <= low:
            return None
        consumer.assign([TopicPartition(topic, partition, low)])
        latest: bytes | None = None
        found = False
        while True:
            message = consumer.poll(timeout)
            if message is None:
                raise KafkaException(f"timed out reading {topic}/{partition}")
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                raise KafkaException(error)
            if message.key() == key:
                latest, found = message.value(), True
            if (message.offset() or 0) >= high - 1:
                break
        if not found or latest is None:  # never seen, or a tombstone
            return None
        return _receipt(latest, request_id, topic, partition)
    finally:
        consumer.close()


def _receipt(value: bytes, request_id: str, topic: str, partition: int) -> dict[str, Any]:
    """The record's receipt, checked against receipt.v1 before anything of it is shown: any producer with write
    access can put a record under a request id, and the schema is closed so that no personal data gets in."""
    receipt: Any
    try:
        receipt = jsontext.loads(value.decode("utf-8"))  # bounded: a stray record may nest past the stack
    except ValueError:  # not UTF-8, or not JSON
        receipt = None
    problems = messages.schema_errors("receipt.v1", receipt) if isinstance(receipt, dict) else ["$: not an object"]
    if not problems and receipt["request_id"] != request_id:
        problems = ["$.request_id: another request's"]
    if problems:  # paths and rule names only, never the record's values
        raise CliError(f"the latest record of this request in {topic}/{partition} is not a receipt.v1 "
                       f"({'; '.join(problems[:3])}): was it written by something other than oubli?", FAILED)
    checked: dict[str, Any] = receipt
    return checked


# The CLI's exit codes (docs/operations.md, "The CLI's conventions"). 2 is click's own, for usage errors.
OK, FAILED, USAGE, NOT_FOUND, UNAVAILABLE, CONFIG = 0, 1, 2, 3, 4, 5


class CliError(click.ClickException):
    """A command's failure: one ``error: …`` line on stderr, and the exit code that says which kind."""

    def __init__(self, message: str, exit_code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it per class; ours varies

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {error_text(self.format_message())}", err=True)


class Seconds(click.ParamType[float]):
    """A wait in seconds: finite, above zero, at most a day. click's FloatRange lets ``nan`` through (it compares
    false to both bounds), and a timeout of nan, inf or -1 reached librdkafka as a broker failure (exit 4)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail("not a number of seconds", param, ctx)
        if not 0 < seconds <= 86_400:  # false for nan as well
            self.fail("must be more than 0 and at most 86400 seconds", param, ctx)
        return seconds


_PROPERTY = re.compile(r'configuration property:? "([a-z0-9._-]{1,100})"')

# A count of rows or commands: past it, a store's LIMIT overflows its integer type (an "is its schema up to
# date?" failure, exit 1, for what is a usage error).
COUNT = click.IntRange(1, 1_000_000)


def terminal_text(text: str) -> str:
    """Human output, line by line through ``printable``: request ids, system names and details come from commands
    nobody vouched for, and a bidi override in a request id ("rlo-\u202etxt.exe") would show on a support
    agent's terminal as another id. JSON output needs nothing: ``json.dumps`` escapes these already."""
    return "\n".join(printable(line) for line in text.split("\n"))


def error_text(text: str) -> str:
    """An error line as shown: an email address or a phone number in it (an argument it echoes, say a customer's
    address typed where a request id goes) redacted as the logs redact it, since a Job's stderr is collected with
    its logs; and nothing a terminal would act on (``printable``)."""
    return printable(logs.scrub(text))


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (C0 and C1 controls, escape sequences,
    bidi overrides, surrogate escapes of undecodable bytes) written as its Python escape instead."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def cli_error(exc: BaseException) -> CliError | None:
    """What an exception out of a command means for its caller; None for a bug, which stays uncaught (and is
    logged as one JSON line). Messages name the error's class and code, never a driver's text, which may
    quote a statement's parameters or a record."""
    from worker.store.repository import NotFound, StoreConflict

    if isinstance(exc, NotFound):
        return CliError(str(exc), NOT_FOUND)
    if isinstance(exc, StoreConflict):
        return CliError(str(exc), FAILED)
    if isinstance(exc, ConfigError):
        return CliError(exc.message, CONFIG)
    if isinstance(exc, sa.exc.ArgumentError):  # an unusable store_url (unknown dialect, malformed)
        return CliError(f"invalid store_url ({type(exc).__name__})", CONFIG)
    if isinstance(exc, KafkaException):
        error = exc.args[0] if exc.args else None
        name = error.name() if isinstance(error, KafkaError) else error
        if isinstance(error, KafkaError) and error.code() == KafkaError._INVALID_ARG:
            # librdkafka refused a client setting (kafka.client) before any connection: a config error, not an
            # outage. Its text may quote the value (a password), so only the property's name is kept.
            found = _PROPERTY.search(error.str())
            where = f" {found.group(1)}" if found else ""
            return CliError(f"kafka.client: the Kafka client refused the setting{where} ({name})", CONFIG)
        return CliError(f"the broker is unavailable or refused: {name}", UNAVAILABLE)
    if isinstance(exc, StoreUnavailable | StalledTooLong) or is_outage(exc):
        sqlstate = error_sqlstate(exc)
        return CliError(f"the store is unavailable ({error_kind(exc)}{f', SQLSTATE {sqlstate}' if sqlstate else ''})",
                        UNAVAILABLE)
    if isinstance(exc, sa.exc.SQLAlchemyError):
        sqlstate = error_sqlstate(exc)
        return CliError(f"the store refused the statement ({error_kind(exc)}"
                        f"{f', SQLSTATE {sqlstate}' if sqlstate else ''}): is its schema up to date (oubli migrate)?",
                        FAILED)
    if isinstance(exc, OubliError):
        return CliError(exc.message, FAILED)
    return None
