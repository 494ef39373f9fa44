"""A connector's texts reach the store, the logs and receipt.v1 without personal data (``worker.personal``,
applied once in the executor): whatever a plug-in connector or a vendor quotes in an error message, a detail or
a retained category, the subject's own values and anything shaped like an email address or a phone number are
``[redacted]`` before anything keeps them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from tests.call_harness import CUSTOMER, EMAIL, PHONE, SUBJECT, run_call, sqlite_store
from worker.core.connector import CallResult, ExportWriter, Result, Retained, Subject
from worker.core.errors import NeedsPersonError, RetryableError
from worker.personal import names_subject, redact
from worker.store.repository import Store

pytestmark = pytest.mark.timeout(30)
PERSONAL = ("marie.dupont", "example.fr", "C-100234", "c-100234", "612345678", "12 34 56 78", "555.777")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    yield from sqlite_store(tmp_path)


@pytest.mark.parametrize("text", [
    f"customer {CUSTOMER} not found", f"no account for {EMAIL}", "sms to 06 12 34 56 78 bounced",
    "user marie.dupont is locked", "client id 555.777 unknown", "ref c-100234/orders", "called 0033612345678",
    f"{CUSTOMER}",
])
def test_the_subjects_values_are_cut_out_of_a_text(text: str) -> None:
    cleaned = redact(text, SUBJECT)
    assert "[redacted]" in cleaned and not any(value in cleaned for value in PERSONAL)
    assert not names_subject(cleaned, SUBJECT)


@pytest.mark.parametrize("text", [
    "HTTP 429 from the vendor", "removal processed for 3 user list(s)", "C-10 not ours",
    "deletionRequestTime:2026-12-03T10:15:30.123456Z", "orders_db: 12 rows anonymised",
])
def test_an_honest_text_is_left_as_it_is(text: str) -> None:
    assert redact(text, SUBJECT) == text


def test_a_short_customer_id_is_cut_only_when_it_is_the_whole_text() -> None:
    short = Subject(request_id="r-2", subject_ref="hmac-sha256:x", customer_id="42")
    assert redact("42", short) == "[redacted]"
    assert redact("HTTP 429, 42 retries", short) == "HTTP 429, 42 retries"


class Quoting:
    """A plug-in connector that quotes its subject in everything it says."""

    def __init__(self, fail: type[Exception] | None) -> None:
        self.fail = fail

    def erase(self, subject: Subject) -> CallResult:
        said = f"customer {subject.customer_id} ({subject.emails[0]}, {subject.phones[0]})"
        if self.fail is not None:
            raise self.fail(f"{said} is locked", code="locked")
        return Result("erased", detail=f"{said} anonymised",
                      retained=[Retained(category=f"invoices of {subject.customer_id}", legal_basis="tax law",
                                         until=datetime(2036, 1, 1, tzinfo=UTC))])

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        return Result("not_supported")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        return Result("erased")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("fail", [None, RetryableError, NeedsPersonError], ids=["confirmed", "retryable", "person"])
def test_what_a_connector_quotes_of_its_subject_is_kept_nowhere(store: Store, fail: type[Exception] | None) -> None:
    with structlog.testing.capture_logs() as logged:
        task, kept = run_call(store, Quoting(fail), "quoting")
    texts = [kept, repr(task), repr(logged)]
    assert task["state"] == ("confirmed" if fail is None else "retrying" if fail is RetryableError else "failed")
    for text in texts:
        assert not any(value in text for value in (CUSTOMER, EMAIL, PHONE, "612345678")), text
    said = task["detail"] if fail is None else task["error_message"]
    assert said is not None and "[redacted]" in said  # what the connector said is still there, less the person
    if fail is None:
        assert "invoices of [redacted]" in (task["retained_json"] or "")


class OddTypes(Quoting):
    """A plug-in connector whose detail is not text: the redaction leaves it as it was and the call still ends."""

    def erase(self, subject: Subject) -> CallResult:
        return Result("erased", detail=12345)  # type: ignore[arg-type]


def test_a_detail_that_is_not_text_does_not_stop_the_call(store: Store) -> None:
    task, _ = run_call(store, OddTypes(None), "odd")
    assert task["state"] == "confirmed"
