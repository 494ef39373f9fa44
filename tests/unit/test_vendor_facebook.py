"""Facebook Login connector: revoke permissions per app-scoped id; Graph error codes; X-App-Usage."""

from __future__ import annotations

import pytest

from devkit.standins.facebook import FacebookStandIn, graph_error
from devkit.standins.harness import FakeClock, MemoryIdentity, build, fresh_limiters, make_subject  # noqa: F401
from tests.conformance import MemoryExportWriter, assert_result_is_clean
from worker.core.connector import Result
from worker.core.errors import PermanentError, RetryableError, Throttled

pytestmark = pytest.mark.timeout(30)
fb = FacebookStandIn.fixture()


def test_revokes_each_known_id_and_reports_erased(fb: FacebookStandIn) -> None:
    fb.seed("10229")
    identity = MemoryIdentity()
    subject = make_subject(identifiers={"facebook_user_id": ["10229"]})
    identity.add(subject.customer_id, "facebook_user_id", "30001")  # stale id Facebook never knew
    connector = build("facebook", fb, FakeClock(), identity)
    result = connector.erase(subject)
    assert isinstance(result, Result) and result.outcome == "erased"
    assert not fb.holds("10229") and fb.count("revoke") == 2
    connector.close()


def test_an_id_facebook_does_not_know_is_not_found_and_its_message_never_leaks(fb: FacebookStandIn) -> None:
    connector = build("facebook", fb, FakeClock())
    subject = make_subject(identifiers={"facebook_user_id": ["987654321"]})
    result = connector.erase(subject)
    assert isinstance(result, Result) and result.outcome == "not_found"
    assert_result_is_clean(result, subject)  # Graph's message quoted the id
    connector.close()


def test_throttling_without_retry_after_waits_the_configured_backoff(fb: FacebookStandIn) -> None:
    fb.seed("1")
    clock = FakeClock()
    connector = build("facebook", fb, clock, throttle_backoff_seconds=120)
    fb.throttle_next()
    with pytest.raises(RetryableError) as caught:
        connector.erase(make_subject(identifiers={"facebook_user_id": ["1"]}))
    assert caught.value.retry_after == 120 and "graph error 4/" in str(caught.value)
    with pytest.raises(Throttled):
        connector.erase(make_subject(identifiers={"facebook_user_id": ["1"]}))
    clock.advance(120)
    again = connector.erase(make_subject(identifiers={"facebook_user_id": ["1"]}))
    assert isinstance(again, Result) and again.outcome == "erased"
    connector.close()


@pytest.mark.parametrize(("code", "subcode", "error"), [
    (190, 463, PermanentError), (10, None, PermanentError), (2, None, RetryableError),
    (17, None, RetryableError),
])
def test_graph_error_codes_are_classified(
        fb: FacebookStandIn, code: int, subcode: int | None, error: type[Exception]) -> None:
    fb.seed("5")
    connector = build("facebook", fb, FakeClock())
    fb.fail_next(1, status=400, body=graph_error(400, code, "msg about 5", subcode=subcode).body)
    with pytest.raises(error) as caught:
        connector.erase(make_subject(identifiers={"facebook_user_id": ["5"]}))
    assert "msg about" not in str(caught.value)
    connector.close()


def test_app_usage_near_the_limit_pauses_calls_before_meta_refuses_them(fb: FacebookStandIn) -> None:
    for asid in ("1", "2"):
        fb.seed(asid)
    fb.hourly_budget = 1  # the first call reports 100 % usage
    clock = FakeClock()
    connector = build("facebook", fb, clock, throttle_backoff_seconds=60)
    first = connector.erase(make_subject(identifiers={"facebook_user_id": ["1"]}))
    assert isinstance(first, Result) and first.outcome == "erased"
    with pytest.raises(Throttled) as caught:
        connector.erase(make_subject(identifiers={"facebook_user_id": ["2"]}))
    assert caught.value.retry_after == pytest.approx(60)
    assert fb.count("revoke") == 1
    connector.close()


def test_an_identifier_that_is_no_asid_is_refused_before_any_call(fb: FacebookStandIn) -> None:
    connector = build("facebook", fb, FakeClock())
    subject = make_subject(identifiers={"facebook_user_id": ["../me"]})
    with pytest.raises(PermanentError) as caught:
        connector.erase(subject)
    assert "../me" not in str(caught.value) and fb.count() == 0
    connector.close()


def test_export_is_not_supported(fb: FacebookStandIn) -> None:
    connector = build("facebook", fb, FakeClock())
    result = connector.export(make_subject(), MemoryExportWriter())
    assert isinstance(result, Result) and result.outcome == "not_supported"
    connector.close()


def test_an_undocumented_graph_code_is_never_quoted_it_could_be_the_user_id(fb: FacebookStandIn) -> None:
    connector = build("facebook", fb, FakeClock())
    fb.fail_next(1, status=400, body={"error": {"code": 10229, "error_subcode": 10229, "message": "x"}})
    with pytest.raises(PermanentError) as caught:
        connector.erase(make_subject(identifiers={"facebook_user_id": ["10229"]}))
    assert "10229" not in str(caught.value) and "?/-" in str(caught.value)
    connector.close()


@pytest.mark.parametrize("retry_after", ["0", "Thu, 01 Jan 2026 00:00:00 GMT"])
def test_a_retry_after_that_says_now_is_honoured_not_replaced_by_the_backoff(fb: FacebookStandIn,
                                                                           retry_after: str) -> None:
    """``Retry-After: 0`` (or a date already past) is the vendor's answer, not a missing one: the app's calls were
    held for the configured backoff (300 s by default) because 0 read as no header at all."""
    fb.seed("1")
    clock = FakeClock()
    connector = build("facebook", fb, clock)
    fb.rate_limit_next(1, retry_after=retry_after)
    with pytest.raises(RetryableError) as caught:
        connector.erase(make_subject(identifiers={"facebook_user_id": ["1"]}))
    assert caught.value.retry_after == 0
    clock.advance(1)  # the app's own rate (2/s) aside, nothing holds the next call back
    again = connector.erase(make_subject(identifiers={"facebook_user_id": ["1"]}))
    assert isinstance(again, Result) and again.outcome == "erased"
    connector.close()
