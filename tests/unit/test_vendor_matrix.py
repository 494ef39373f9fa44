"""The same behaviours, checked for each of the five vendor connectors against its stand-in.

success · idempotent repeat · not found · 429 with Retry-After · 5xx then success · permanent 4xx ·
refused credentials · timeout. Every error message is checked for personal data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from devkit.standins.facebook import graph_error
from devkit.standins.google import google_error
from devkit.standins.harness import (  # noqa: F401 - fresh_limiters is an autouse fixture
    HARNESSES,
    VendorHarness,
    drive,
    fresh_limiters,
    make_subject,
    vendor_harness,
)
from devkit.standins.shopimind import spm_error
from tests.conformance import assert_no_personal_data, settle
from worker.core.connector import Result, Subject
from worker.core.errors import PermanentError, RetryableError, Throttled

pytestmark = pytest.mark.timeout(30)

CONFIRMED = {"google_analytics": "requested", "google_ads": "requested", "facebook": "erased",
             "nosto": "requested", "shopimind": "requested"}
BAD_REQUEST = {
    "google_analytics": google_error(400, "INVALID_ARGUMENT", "invalidParameter", "Invalid value").body,
    "google_ads": google_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Invalid argument").body,
    "facebook": graph_error(400, 100, "(#100) Invalid parameter", "GraphMethodException").body,
    "nosto": {"message": "Bad Request"},
    "shopimind": spm_error(400, "Bad Request", "All objects are invalid").body,
}


@pytest.fixture(params=sorted(HARNESSES))
def vendor(request: pytest.FixtureRequest) -> Iterator[VendorHarness]:
    # A second for every call: a loaded CI machine took longer than 0.2 s over an ordinary one.
    yield from vendor_harness(request.param, standin_options={"hang_seconds": 3.0}, timeout_seconds=1.0)


def _erase(vendor: VendorHarness, subject: Subject) -> Result:
    return settle(vendor.connector, subject, vendor.connector.erase(subject))


def test_success_confirms_and_the_vendor_no_longer_holds_the_subject(vendor: VendorHarness) -> None:
    subject = vendor.subject_with_data()
    result = _erase(vendor, subject)
    assert result.outcome == CONFIRMED[vendor.system]
    assert not vendor.holds_personal_data(subject)


def test_repeat_is_idempotent(vendor: VendorHarness) -> None:
    subject = vendor.subject_with_data()
    first = _erase(vendor, subject)
    calls = vendor.standin.count()
    second = _erase(vendor, subject)
    assert first.outcome == second.outcome == CONFIRMED[vendor.system]
    assert vendor.standin.count() > calls  # it really asked the vendor again
    assert not vendor.holds_personal_data(subject)


def test_subject_without_identifiers_is_not_found_without_a_call(vendor: VendorHarness) -> None:
    result = _erase(vendor, make_subject())
    assert result.outcome == "not_found"
    assert result.detail and "known" in result.detail
    assert vendor.standin.count() == 0


def test_429_honours_retry_after_and_holds_back_later_calls(vendor: VendorHarness) -> None:
    subject = vendor.subject_with_data()
    vendor.standin.rate_limit_next(1, retry_after="7")
    with pytest.raises(RetryableError) as caught:
        _erase(vendor, subject)
    assert caught.value.retry_after == pytest.approx(7.0)
    assert not isinstance(caught.value, PermanentError)
    assert_no_personal_data(str(caught.value), subject)
    calls = vendor.standin.count()
    with pytest.raises(Throttled) as held:  # our own gate now waits for the vendor's window
        _erase(vendor, subject)
    assert held.value.retry_after == pytest.approx(7.0)
    assert vendor.standin.count() == calls
    vendor.clock.advance(7.0)
    result = drive(vendor.connector, subject, vendor.clock, lambda: vendor.connector.erase(subject))
    assert result.outcome == CONFIRMED[vendor.system]


def test_5xx_is_retryable_then_succeeds(vendor: VendorHarness) -> None:
    subject = vendor.subject_with_data()
    vendor.standin.fail_next(1, status=503)
    with pytest.raises(RetryableError) as caught:
        _erase(vendor, subject)
    assert caught.value.code == "vendor_unavailable"
    assert_no_personal_data(str(caught.value), subject)
    assert _erase(vendor, subject).outcome == CONFIRMED[vendor.system]


def test_503_with_retry_after_holds_back_later_calls_as_a_429_does(vendor: VendorHarness) -> None:
    """A vendor in maintenance answers 503 with Retry-After (RFC 9110: how long it expects to be down). The call that
    met it waits that long; so does every other call to that vendor, instead of each meeting its own 503 first."""
    subject = vendor.subject_with_data()
    vendor.standin.fail_next(1, status=503, headers={"Retry-After": "30"})
    with pytest.raises(RetryableError) as caught:
        _erase(vendor, subject)
    assert (caught.value.code, caught.value.retry_after) == ("vendor_unavailable", pytest.approx(30.0))
    calls = vendor.standin.count()
    with pytest.raises(Throttled) as held:
        _erase(vendor, vendor.subject_with_data())
    assert held.value.retry_after == pytest.approx(30.0)
    assert vendor.standin.count() == calls
    vendor.clock.advance(30.0)
    result = drive(vendor.connector, subject, vendor.clock, lambda: vendor.connector.erase(subject))
    assert result.outcome == CONFIRMED[vendor.system]


def test_other_4xx_is_permanent_with_a_clean_message(vendor: VendorHarness) -> None:
    subject = vendor.subject_with_data()
    vendor.standin.fail_next(1, status=400, body=BAD_REQUEST[vendor.system])
    with pytest.raises(PermanentError) as caught:
        _erase(vendor, subject)
    message = str(caught.value)
    assert vendor.system in message and "400" in message
    assert_no_personal_data(message, subject)
    assert "http" not in message.lower().replace("http 400", "")  # no URL


def test_refused_credentials_are_permanent(vendor: VendorHarness) -> None:
    subject = vendor.subject_with_data()
    with vendor.standin.refusing_credentials(), pytest.raises(PermanentError) as caught:
        _erase(vendor, subject)
    assert "credentials" in str(caught.value)
    assert caught.value.code == "credentials_refused"
    assert_no_personal_data(str(caught.value), subject)


def test_timeout_is_retryable_and_bounded(vendor: VendorHarness) -> None:
    subject = vendor.subject_with_data()
    vendor.standin.hang_next(1)
    started = time.monotonic()
    with pytest.raises(RetryableError) as caught:
        _erase(vendor, subject)
    assert time.monotonic() - started < 2.5  # the stand-in hangs for 3 s; the client gives up at 1 s
    assert caught.value.code == "timeout"
    assert_no_personal_data(str(caught.value), subject)
    assert _erase(vendor, subject).outcome == CONFIRMED[vendor.system]
