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
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from worker import messages, support
from worker.config import RetentionRule
from worker.core.timefmt import iso

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
            emails: Sequence[str], phones: Sequence[str], grace_days: int = 30) -> tuple[dict[str, Any] | None, int]:
    """The command for one subject, or None when command.v1 would reject it; and the identifiers dropped.

    A ``background`` erasure, due ``grace_days`` after the data expired (``requested_at``). For an
    ``all_rows`` rule the subject's newest row is its last activity as far as the rule knows: it goes
    along as ``subject.last_activity_at``, so that a system that keeps data for less time than has
    passed since is confirmed without a call (``worker.retention.vendorkeep``).
    """
    kept_emails, dropped_emails = usable(emails, _EMAIL)
    kept_phones, dropped_phones = usable(phones, _PHONE)
    if rule.key.email and key not in kept_emails:  # the email is the subject: without it, nothing to name
        return None, 0
    customer_id = key if rule.key.customer_id else pseudonymous_customer_id(subject_key, key)
    command = support.build_command(
        kind="erasure", customer_id=customer_id, emails=kept_emails, phones=kept_phones, systems=rule.systems,
        requested_by=rule.requested_by, reason=rule.reason, request_id="-", requested_at=requested_at,
        due_at=requested_at + timedelta(days=grace_days),
    )
    command["priority"] = "background"
    if rule.expires_when == "all_rows":
        command["subject"]["last_activity_at"] = iso(expired_at)
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
