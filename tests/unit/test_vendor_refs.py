"""A vendor ref that could be personal data, or that receipt.v1 cannot carry, never reaches the store: the call
fails as the permanent ``vendor_protocol`` and the value is dropped (``worker.vendorrefs``, the executor)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.google_ads import sha256_hex
from devkit.standins import ADS_LIST_ID
from devkit.standins.base import Reply, Request
from devkit.standins.google import DataManagerStandIn
from devkit.standins.harness import FakeClock, build
from tests.call_harness import CUSTOMER, EMAIL, PHONE, SUBJECT, run_call, sqlite_store
from worker.core.connector import CallResult, ExportWriter, Pending, Result, Subject
from worker.store.repository import Store
from worker.vendorrefs import refusal

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    yield from sqlite_store(tmp_path)


@pytest.mark.parametrize("ref", [
    "3c1f0c1e-6b8a-4d55-9f0e-2a7b9c4d1e2f",  # a Google Ads requestId
    "deletionRequestTime:2026-12-03T10:15:30.123456Z",  # GA's
    "progress:1/2:retry", "redact+progress:3/4",  # the per-target connectors' markers
    "job-r-1", "AbC_123-xyz", "x" * 256,
])
def test_an_honest_reference_is_kept(ref: str) -> None:
    assert refusal(ref, SUBJECT) is None


@pytest.mark.parametrize("ref", [
    EMAIL, "ref:marie.dupont@example.fr", "jean@corp",  # addresses
    "33612345678", "+33 6 12 34 56 78", "0612345678",  # a phone number's digits, in any format
    "job-06-12-34-56-78", "req_0612345678",  # glued to an id, where the logs' pattern alone stops
    CUSTOMER, "job-c-100234", "marie.dupont", "555.777",  # the subject's own values
])
def test_a_reference_that_could_name_the_person_is_refused_without_quoting_it(ref: str) -> None:
    reason = refusal(ref, SUBJECT)
    assert reason is not None and ref not in reason and "612345" not in reason


@pytest.mark.parametrize("ref", ["", "x" * 257, "a\x00b", "line\nbreak", "\ud800", 42, None])
def test_a_reference_outside_the_receipt_schema_is_refused(ref: Any) -> None:
    assert refusal(ref, SUBJECT) is not None


class Echoing:
    """A connector whose vendor echoes the subject's phone number as its job id."""

    def __init__(self, ref: Any, *, pending: bool) -> None:
        self.ref, self.pending = ref, pending

    def erase(self, subject: Subject) -> CallResult:
        return Pending(self.ref, poll_after=1.0) if self.pending else Result("requested", vendor_ref=self.ref)

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        return Result("not_supported")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        return Result("requested", vendor_ref=vendor_ref)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("pending", [True, False], ids=["pending", "confirmed"])
def test_a_personal_reference_fails_the_call_as_vendor_protocol_and_is_never_stored(
        store: Store, pending: bool) -> None:
    task, kept = run_call(store, Echoing("33612345678", pending=pending), "echo")
    assert task["state"] == "failed" and task["error_code"] == "vendor_protocol" and task["vendor_ref"] is None
    assert "612345678" not in kept and "612345678" not in (task["error_message"] or "")


def test_a_reference_too_long_for_the_receipt_fails_the_call_instead_of_the_store(store: Store) -> None:
    task, _ = run_call(store, Echoing("j" * 300, pending=True), "echo")
    assert task["state"] == "failed" and task["error_code"] == "vendor_protocol" and task["vendor_ref"] is None


def test_an_honest_reference_still_reaches_the_task(store: Store) -> None:
    task, _ = run_call(store, Echoing("job-42", pending=True), "echo")
    assert task["state"] == "waiting_vendor" and task["vendor_ref"] == "job-42"


class EchoingAds(DataManagerStandIn):
    """Google Ads' stand-in, answering the removal with the digits of the phone number it was sent (hashed)."""

    def _remove(self, request: Request) -> Reply:
        reply = super()._remove(request)
        return Reply(200, {"requestId": PHONE.lstrip("+")}) if reply.status == 200 else reply


def test_google_ads_echoing_a_phone_number_as_its_request_id_reaches_no_receipt(store: Store) -> None:
    ads = EchoingAds()
    ads.start()
    try:
        ads.seed(ADS_LIST_ID, sha256_hex(EMAIL), sha256_hex(PHONE))
        connector = build("google_ads", ads, FakeClock())
        task, kept = run_call(store, connector, "google_ads")
        connector.close()
    finally:
        ads.stop()
    assert ads.count("remove") == 1
    assert task["state"] == "failed" and task["error_code"] == "vendor_protocol" and task["vendor_ref"] is None
    assert "612345678" not in kept
