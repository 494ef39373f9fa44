"""Erasure commands for expired subjects: deterministic ids and bodies, and one producer for a whole sweep.

The same subject, rule and expiry always give the same command, byte for byte in content: the request
id is a uuid5 in a namespace derived from ``subject_key`` and ``requested_at`` is the moment the data
expired (not the sweep's clock). A second sweep, or two overlapping CronJob runs, therefore send
commands the worker deduplicates by ``request_id``; a different body under a known id would be
dead-lettered as ``conflicting_duplicate``, which is why the whole content goes into the id too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from confluent_kafka import KafkaException, Producer

from worker import kafka, messages, support
from worker.config import KafkaSettings, RetentionRule
from worker.timefmt import iso

MAX_VALUES = 20  # command.v1: at most 20 emails, 20 phones
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_ID = re.compile(r"^[^\s\x00-\x1f]{1,128}$")


def id_namespace(subject_key: bytes) -> uuid.UUID:
    """Keyed, so that nobody without the key can test a guessed (customer, date) against a request id."""
    return uuid.UUID(bytes=hmac.new(subject_key, b"oubli/retention/request-id/v1", hashlib.sha256).digest()[:16])


def pseudonymous_customer_id(subject_key: bytes, email: str) -> str:
    """For subjects known only by email (contact forms): stable, keyed, and not reversible without the key."""
    return "anon-" + messages.keyed_digest(subject_key, "retention-email:" + email)[:32]


def usable(values: Sequence[str], pattern: re.Pattern[str], max_length: int = 254) -> tuple[list[str], int]:
    """The values command.v1 accepts (deduplicated, sorted, at most 20), and how many were dropped."""
    kept = sorted({v for v in values if len(v) <= max_length and pattern.match(v)})
    return kept[:MAX_VALUES], len(set(values)) - len(kept[:MAX_VALUES])


def erasure(rule: RetentionRule, *, subject_key: bytes, key: str, expired_at: datetime, requested_at: datetime,
            emails: Sequence[str], phones: Sequence[str]) -> tuple[dict[str, Any] | None, int]:
    """The command for one subject, or None when command.v1 would reject it; and the identifiers dropped."""
    kept_emails, dropped_emails = usable(emails, _EMAIL)
    kept_phones, dropped_phones = usable(phones, _PHONE)
    if rule.key.email and key not in kept_emails:  # the email is the subject: without it, nothing to name
        return None, 0
    customer_id = key if rule.key.customer_id else pseudonymous_customer_id(subject_key, key)
    command = support.build_command(
        kind="erasure", customer_id=customer_id, emails=kept_emails, phones=kept_phones, systems=rule.systems,
        requested_by=rule.requested_by, reason=rule.reason, request_id="-", requested_at=requested_at,
    )
    name = json.dumps({"rule": rule.name, "subject": key, "expired_at": iso(expired_at),
                       "command": {k: v for k, v in command.items() if k != "request_id"}},
                      sort_keys=True, separators=(",", ":"))
    command["request_id"] = str(uuid.uuid5(id_namespace(subject_key), name))
    if not _ID.match(customer_id):  # emails and phones are filtered above; the rest comes from the config
        return None, dropped_emails + dropped_phones
    return command, dropped_emails + dropped_phones


def schema_problems(command: Mapping[str, Any]) -> list[str]:
    """The whole of command.v1 (about 0.3 ms a command; ``erasure`` checks what the data can break)."""
    return messages.schema_errors("command.v1", command)


class Publisher:
    """One idempotent producer for a whole sweep (``support.publish_command`` makes one per command).

    Commands are keyed, encoded and signed as ``support.publish_command`` does. ``publish`` blocks only
    while librdkafka's queue is full, for at most ``timeout`` seconds; ``done(ok)`` runs from ``poll`` or
    ``flush`` once the broker acknowledged or refused the command. A command not acknowledged within
    ``timeout`` is reported as failed.
    """

    def __init__(self, settings: KafkaSettings, *, signing_secret: bytes | None, timeout: float) -> None:
        self._topic = settings.topics.commands
        self._secret = signing_secret
        self._timeout = timeout
        self._producer = Producer({**kafka.producer_config(settings), "message.timeout.ms": int(timeout * 1000)})

    def publish(self, command: Mapping[str, Any], done: Callable[[bool], None]) -> None:
        value = json.dumps(command).encode("utf-8")
        headers: list[tuple[str, str | bytes | None]] = []
        if self._secret:
            headers.append((messages.SIGNATURE_HEADER, messages.sign(value, self._secret).encode()))
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                self._producer.produce(self._topic, key=str(command["subject"]["customer_id"]).encode(), value=value,
                                       headers=headers, on_delivery=lambda err, _msg: done(err is None))
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                if time.monotonic() > deadline:
                    raise KafkaException(f"the producer queue stayed full for {self._timeout:.0f} s") from None
                self._producer.poll(0.5)
        self._producer.poll(0)

    def flush(self) -> int:
        """Waits for every acknowledgement; returns how many commands are still unacknowledged."""
        return int(self._producer.flush(self._timeout))
