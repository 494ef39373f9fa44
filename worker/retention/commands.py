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
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from worker import messages, support
from worker.config import RetentionRule
from worker.core import timefmt
from worker.core.timefmt import iso

MAX_VALUES = 20  # command.v1: at most 20 emails, 20 phones
# Where command.v1 defines each value: checked against the schema itself (``messages.fits``), because
# a hand-copied pattern drifted from it once (control characters) and every such subject was dead-lettered.
EMAIL = "/properties/subject/properties/emails/items"
PHONE = "/properties/subject/properties/phones/items"
ID = "/$defs/id"


def id_namespace(subject_key: bytes) -> uuid.UUID:
    """Keyed, so that nobody without the key can test a guessed (customer, date) against a request id."""
    return uuid.UUID(bytes=hmac.new(subject_key, b"oubli/retention/request-id/v1", hashlib.sha256).digest()[:16])


def pseudonymous_customer_id(subject_key: bytes, email: str) -> str:
    """For subjects known only by email (contact forms): stable, keyed, and not reversible without the key."""
    return "anon-" + messages.keyed_digest(subject_key, "retention-email:" + email)[:32]


def fits(value: str, pointer: str) -> bool:
    return messages.fits("command.v1", pointer, value)


def usable(values: Sequence[str], pointer: str) -> tuple[list[str], int]:
    """The values command.v1 accepts at ``pointer`` (trimmed, deduplicated, sorted, at most 20), and how
    many distinct values were dropped."""
    trimmed = {v.strip() for v in values} - {""}
    kept = sorted(v for v in trimmed if fits(v, pointer))
    return kept[:MAX_VALUES], len(trimmed) - len(kept[:MAX_VALUES])


def erasure(rule: RetentionRule, *, subject_key: bytes, key: str, expired_at: datetime, requested_at: datetime,
            emails: Sequence[str], phones: Sequence[str], grace_days: int = 30) -> tuple[dict[str, Any] | None, int]:
    """The command for one subject, or None when no valid command can name it; and the identifiers dropped.

    A ``background`` erasure, due ``grace_days`` after the data expired (``requested_at``). For an
    ``all_rows`` rule the subject's newest row is its last activity as far as the rule knows: it goes
    along as ``subject.last_activity_at``, so that a system that keeps data for less time than has
    passed since is confirmed without a call (``worker.retention.vendorkeep``).
    """
    kept_emails, dropped_emails = usable(emails, EMAIL)
    kept_phones, dropped_phones = usable(phones, PHONE)
    dropped = dropped_emails + dropped_phones
    if rule.key.email and key.strip() not in kept_emails:  # the email is the subject: without it, nothing to name
        return None, 0  # counted as invalid, not as a value left out
    customer_id = key if rule.key.customer_id else pseudonymous_customer_id(subject_key, key)
    if not fits(customer_id, ID):  # the key itself: no command can name this subject (a person must)
        return None, dropped
    try:
        # The stored date, as intake checks it (out_of_range): command.v1 takes 0001-01-01, a legacy "no date"
        # sentinel, but the worker refuses a date before 1000 or after 9998, and would at every sweep.
        due_at = requested_at + timedelta(days=grace_days)
        sent = (requested_at, due_at, *((expired_at,) if rule.expires_when == "all_rows" else ()))
        for moment in sent:  # expired_at goes as last_activity_at only for an all_rows rule
            timefmt.in_range(timefmt.aware(moment))
    except (timefmt.OutOfRange, OverflowError):
        return None, dropped
    command = support.build_command(
        kind="erasure", customer_id=customer_id, emails=kept_emails, phones=kept_phones, systems=rule.systems,
        requested_by=rule.requested_by, reason=rule.reason, request_id="-", requested_at=requested_at,
        due_at=due_at,
    )
    command["priority"] = "background"
    if rule.expires_when == "all_rows":
        command["subject"]["last_activity_at"] = iso(expired_at)
    name = json.dumps({"rule": rule.name, "subject": key, "expired_at": iso(expired_at),
                       "command": {k: v for k, v in command.items() if k != "request_id"}},
                      sort_keys=True, separators=(",", ":"))
    command["request_id"] = str(uuid.uuid5(id_namespace(subject_key), name))
    return command, dropped


def schema_problems(command: Mapping[str, Any]) -> list[str]:
    """What the worker's intake would refuse in ``command`` (``messages.parse``: text, then command.v1),
    as JSON paths, never values. A valid command costs a few microseconds (the compiled schema)."""
    bad_text = messages.text_problem(command)
    if bad_text is not None:
        return [f"{bad_text}: a string holds a NUL character or a lone surrogate"]
    return messages.schema_errors("command.v1", command)


def subject_problems(problems: Sequence[str]) -> bool:
    """True when every problem lies in the subject (the stored data), none in what the rule configures."""
    return all(p.startswith("$.subject") for p in problems)
