"""A connector's outcome is one receipt.v1 knows, or the call fails: the executor checks it before the store does.

``Result.outcome`` is typed, but a plug-in connector's types are not checked at run time: one that answered
``Result("deleted")`` had its word stored as it came and published in the receipt, which then broke the closed
receipt.v1 on the compacted topic (its ``outcome`` is an enum), for good."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.call_harness import run_call, sqlite_store
from worker import messages
from worker.core.connector import CallResult, ExportWriter, Result, Retained, Subject
from worker.store.repository import Store

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    yield from sqlite_store(tmp_path)


class Saying:
    """A plug-in connector that confirms its erasure with the given outcome."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def erase(self, subject: Subject) -> CallResult:
        return Result(self.outcome)

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        return Result("not_supported")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        return Result(self.outcome)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("outcome", ["deleted", "ERASED", "", None, 42, "manually_confirmed"])
def test_an_outcome_receipt_v1_does_not_know_fails_the_call(store: Store, outcome: Any) -> None:
    task, kept = run_call(store, Saying(outcome), "plugin")
    assert task["state"] == "failed" and task["error_code"] == "vendor_protocol" and task["outcome"] is None
    receipt = store.receipt(task["request_id"])
    assert messages.schema_errors("receipt.v1", receipt) == []
    assert receipt["status"] == "action_required"


@pytest.mark.parametrize("outcome", ["erased", "anonymized", "not_found", "retained", "requested"])
def test_a_known_outcome_is_kept(store: Store, outcome: str) -> None:
    task, _ = run_call(store, Saying(outcome), "plugin")
    assert task["state"] == "confirmed" and task["outcome"] == outcome


class Confirming:
    """A plug-in connector whose confirmation carries the given ``Result`` fields."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def erase(self, subject: Subject) -> CallResult:
        return Result("requested", **self.fields)

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        return Result("not_supported")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        return Result("requested")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("fields", [{"expected_by": "tomorrow"}, {"expected_by": 1767225600}, {"records": "3"},
                                    {"records": True}, {"records": -1}, {"records": 2**40}],
                         ids=lambda fields: f"{next(iter(fields))}={next(iter(fields.values()))!r}")
def test_a_confirmation_field_of_the_wrong_type_fails_the_call_instead_of_the_loop(
        store: Store, fields: dict[str, Any]) -> None:
    """An ``expected_by`` that was no datetime raised in the loop thread while the result was recorded (rendering
    the receipt): the worker stopped, and its restart met the same answer again."""
    task, _ = run_call(store, Confirming(**fields), "plugin")
    assert task["state"] == "failed" and task["error_code"] == "vendor_protocol"
    assert messages.schema_errors("receipt.v1", store.receipt(task["request_id"])) == []


def test_a_detail_that_is_no_text_is_dropped_and_the_confirmation_stands(store: Store) -> None:
    task, _ = run_call(store, Confirming(detail=42), "plugin")
    assert task["state"] == "confirmed" and task["detail"] is None


def test_a_well_typed_confirmation_is_kept(store: Store) -> None:
    task, _ = run_call(store, Confirming(expected_by=datetime(2027, 1, 1, tzinfo=UTC), detail="queued", records=3),
                       "plugin")
    assert task["state"] == "confirmed" and task["detail"] == "queued" and task["records"] == 3


_UNTIL = date(2029, 3, 31)


@pytest.mark.parametrize("retained", [
    (Retained(42, "billing retention", _UNTIL),),  # type: ignore[arg-type]
    (Retained("invoices", {"law": "HGB 257"}, _UNTIL),),  # type: ignore[arg-type]
    (Retained(["invoices"], "billing retention", _UNTIL),),  # type: ignore[arg-type]
    (Retained("invoices", None, _UNTIL),),  # type: ignore[arg-type]
    (Retained("invoices", "billing retention", "2029-03-31"),),  # type: ignore[arg-type]
    (Retained("invoices", "billing retention", 1869350400),),  # type: ignore[arg-type]
    ({"category": "invoices", "legal_basis": "billing retention", "until": "2029-03-31"},),
    None,
    Retained("invoices", "billing retention", _UNTIL),
], ids=["category=int", "legal_basis=dict", "category=list", "legal_basis=None", "until=str", "until=int",
        "entry=dict", "retained=None", "retained=bare"])
def test_a_retained_entry_of_the_wrong_type_fails_the_call_and_never_reaches_the_receipt(
        store: Store, retained: Any) -> None:
    """A ``Retained`` whose ``category`` or ``legal_basis`` was no text went into the store as it came and broke the
    closed receipt.v1; an ``until`` that was no date raised as a retryable connector bug at every attempt."""
    task, kept = run_call(store, Keeping(retained), "plugin")
    assert task["state"] == "failed" and task["error_code"] == "vendor_protocol" and task["outcome"] is None
    assert task["retained_json"] is None and "HGB" not in kept and "1869350400" not in kept
    receipt = store.receipt(task["request_id"])
    assert messages.schema_errors("receipt.v1", receipt) == []
    assert receipt["status"] == "action_required" and "retained" not in receipt["systems"][0]


@pytest.mark.parametrize("retained", [
    (Retained("invoices", "billing retention", _UNTIL),), [Retained("invoices", "billing retention", _UNTIL)], (),
    # A datetime is a date: its own calendar day (not UTC's), where it used to publish a timestamp receipt.v1 refuses.
    (Retained("invoices", "billing retention", datetime(2029, 3, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))),),
], ids=["tuple", "list", "none", "until=datetime"])
def test_a_well_typed_retained_entry_is_kept(store: Store, retained: Any) -> None:
    task, _ = run_call(store, Keeping(retained), "plugin")
    assert task["state"] == "confirmed" and task["outcome"] == "retained"
    receipt = store.receipt(task["request_id"])
    assert messages.schema_errors("receipt.v1", receipt) == []
    assert receipt["systems"][0].get("retained", []) == [
        {"category": "invoices", "legal_basis": "billing retention", "until": "2029-03-31"} for _ in retained]


class Keeping:
    """A plug-in connector that confirms its erasure as ``retained`` with the given entries."""

    def __init__(self, retained: Any) -> None:
        self.retained = retained

    def erase(self, subject: Subject) -> CallResult:
        return Result("retained", retained=self.retained)

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        return Result("not_supported")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        return Result("retained", retained=self.retained)

    def close(self) -> None:
        pass
