"""The shared conformance suite: every connector must pass it.

A connector's test module subclasses ``ConnectorConformance`` and provides one fixture,
``harness``, returning an object that satisfies ``Harness``. The suite then checks the contract
written in ``worker.core.connector``: confirmations, idempotent repeats, an unknown subject, retryable
versus permanent failures, and that no personal data leaks into errors or results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO, Protocol

import pytest

from worker.core.connector import CallResult, Connector, Pending, Result, Subject
from worker.core.errors import NeedsPersonError, PermanentError, RetryableError, Throttled

CONFIRMING_ERASURE = {"erased", "anonymized", "retained", "requested"}
CONFIRMING_EXPORT = {"exported", "not_supported", "requested"}


class Harness(Protocol):
    connector: Connector

    def subject_with_data(self) -> Subject:
        """A fresh subject that the system holds data about."""
        ...

    def subject_without_data(self) -> Subject:
        """A subject the system has never seen."""
        ...

    def holds_personal_data(self, subject: Subject) -> bool:
        """Whether the backing system still holds the subject's personal data (beyond legal retention).

        Vendors that only acknowledge report what their stand-in recorded as still held.
        """
        ...

    def transient_failure(self) -> contextlib.AbstractContextManager[None]:
        """Inside this block the system fails the way a timeout, 5xx or restart fails."""
        ...

    def permanent_failure(self) -> contextlib.AbstractContextManager[None]:
        """Inside this block the system rejects calls for good (for example bad credentials)."""
        ...


class MemoryExportWriter:
    """An ExportWriter that keeps files in memory, for connector tests only."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def write_json(self, name: str, data: Any) -> None:
        self.files[name] = json.dumps(data, default=str, sort_keys=True).encode()

    def write_rows(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        self.write_json(f"{name}.json", list(rows))

    def write_stream(self, name: str, stream: BinaryIO, *, content_type: str = "application/octet-stream") -> None:
        buffer = io.BytesIO()
        while chunk := stream.read(1 << 16):
            buffer.write(chunk)
        self.files[name] = buffer.getvalue()


def settle(connector: Connector, subject: Subject, result: CallResult, max_polls: int = 50) -> Result:
    """Polls an async job until it gives a result (the stand-ins finish quickly)."""
    polls = 0
    while isinstance(result, Pending):
        polls += 1
        assert polls <= max_polls, "async job never finished"
        result = connector.poll(subject, result.vendor_ref)
    return result


def personal_values(subject: Subject) -> list[str]:
    values = [subject.customer_id, *subject.emails, *subject.phones]
    for ids in subject.identifiers.values():
        values.extend(ids)
    return [v for v in values if v]


def assert_no_personal_data(text: str, subject: Subject) -> None:
    lowered = text.lower()
    for value in personal_values(subject):
        assert value.lower() not in lowered, "personal data leaked into an error or result"


def assert_result_is_clean(result: Result, subject: Subject) -> None:
    assert_no_personal_data(repr(dataclasses.asdict(result)), subject)


class ConnectorConformance:
    """Subclass, provide ``harness``; every test here must pass."""

    @pytest.fixture
    def harness(self) -> Iterator[Harness]:  # pragma: no cover - always overridden
        raise NotImplementedError

    def test_erasure_confirms_and_removes_personal_data(self, harness: Harness) -> None:
        subject = harness.subject_with_data()
        assert harness.holds_personal_data(subject)
        result = settle(harness.connector, subject, harness.connector.erase(subject))
        assert result.outcome in CONFIRMING_ERASURE
        assert_result_is_clean(result, subject)
        assert not harness.holds_personal_data(subject)

    def test_erasure_repeated_is_harmless(self, harness: Harness) -> None:
        subject = harness.subject_with_data()
        first = settle(harness.connector, subject, harness.connector.erase(subject))
        second = settle(harness.connector, subject, harness.connector.erase(subject))
        assert first.outcome in CONFIRMING_ERASURE
        assert second.outcome in CONFIRMING_ERASURE | {"not_found"}
        if first.outcome == "retained":
            assert second.retained == first.retained
        assert not harness.holds_personal_data(subject)

    def test_unknown_subject_is_not_found_or_acknowledged(self, harness: Harness) -> None:
        subject = harness.subject_without_data()
        result = settle(harness.connector, subject, harness.connector.erase(subject))
        assert result.outcome in {"not_found", "requested"}
        assert_result_is_clean(result, subject)

    def test_export_returns_data_or_says_unsupported(self, harness: Harness) -> None:
        subject = harness.subject_with_data()
        writer = MemoryExportWriter()
        result = settle(harness.connector, subject, harness.connector.export(subject, writer))
        assert result.outcome in CONFIRMING_EXPORT | {"not_found"}
        if result.outcome == "exported":
            assert writer.files, "an 'exported' outcome must write at least one file"
            assert result.records > 0
        assert harness.holds_personal_data(subject), "an export must not erase anything"

    def test_transient_failure_is_retryable_and_clean(self, harness: Harness) -> None:
        subject = harness.subject_with_data()
        with harness.transient_failure(), pytest.raises(RetryableError) as caught:
            settle(harness.connector, subject, harness.connector.erase(subject))
        assert_no_personal_data(str(caught.value), subject)
        for _ in range(10):
            try:
                result = settle(harness.connector, subject, harness.connector.erase(subject))
                break
            except Throttled as held:  # the failure said how long to wait (503, Retry-After): the connector keeps to it
                harness.clock.advance(max(held.retry_after or 0.0, 0.01))  # type: ignore[attr-defined] - vendors only
        else:
            raise AssertionError("still held back long after the vendor's Retry-After")
        assert result.outcome in CONFIRMING_ERASURE | {"not_found"}
        assert not harness.holds_personal_data(subject)

    def test_permanent_failure_is_not_retryable_and_clean(self, harness: Harness) -> None:
        subject = harness.subject_with_data()
        with harness.permanent_failure(), pytest.raises((PermanentError, NeedsPersonError)) as caught:
            settle(harness.connector, subject, harness.connector.erase(subject))
        assert not isinstance(caught.value, RetryableError)
        assert_no_personal_data(str(caught.value), subject)
