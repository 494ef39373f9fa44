"""Google Analytics User Deletion connector: one upsert per id, resumable runs, OAuth, config."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from devkit.standins import GA_PROPERTY_ID, settings_for
from devkit.standins.google import ACCESS_TOKEN, GoogleAnalyticsStandIn, google_error
from devkit.standins.harness import FakeClock, MemoryIdentity, build, drive, fresh_limiters, make_subject  # noqa: F401
from worker.core.connector import Pending, Result
from worker.core.errors import ConfigError, PermanentError, RetryableError, Throttled

pytestmark = pytest.mark.timeout(30)
ga = GoogleAnalyticsStandIn.fixture()


def test_one_upsert_per_id_with_the_documented_body(ga: GoogleAnalyticsStandIn) -> None:
    clock, identity = FakeClock(), MemoryIdentity()
    connector = build("google_analytics", ga, clock, identity, rate_limit={"per_second": 100, "burst": 10})
    subject = make_subject(identifiers={"ga_client_id": ["111.222"], "ga_app_instance_id": ["app-1"]})
    identity.add(subject.customer_id, "ga_user_id", "U-7")
    result = connector.erase(subject)
    assert isinstance(result, Result) and result.outcome == "requested"
    assert result.expected_by == clock.now() + timedelta(days=63)
    assert result.vendor_ref and result.vendor_ref.startswith("deletionRequestTime:")
    assert sorted((r["id"]["type"], r["id"]["userId"]) for r in ga.requests) == [
        ("APP_INSTANCE_ID", "app-1"), ("CLIENT_ID", "111.222"), ("USER_ID", "U-7")]
    assert all(r["kind"] == "analytics#userDeletionRequest" and r["propertyId"] == GA_PROPERTY_ID
               for r in ga.requests)
    connector.close()


def test_a_run_cut_short_by_the_limiter_resumes_without_redoing_ids(ga: GoogleAnalyticsStandIn) -> None:
    clock = FakeClock()
    connector = build("google_analytics", ga, clock)  # 1.5/s, burst 1: one id per 0.67 s
    subject = make_subject(identifiers={"ga_client_id": ["1.1", "2.2", "3.3"]})
    first = connector.erase(subject)
    assert isinstance(first, Pending) and first.vendor_ref == "progress:1/3"
    assert first.poll_after == pytest.approx(1 / 1.5)
    with pytest.raises(Throttled):
        connector.poll(subject, first.vendor_ref)  # too early: refused, nothing sent
    clock.advance(first.poll_after)
    second = connector.poll(subject, first.vendor_ref)
    assert isinstance(second, Pending) and second.vendor_ref == "progress:2/3"
    clock.advance(second.poll_after)
    done = connector.poll(subject, second.vendor_ref)
    assert isinstance(done, Result) and done.outcome == "requested"
    assert [r["id"]["userId"] for r in ga.requests] == ["1.1", "2.2", "3.3"]  # each exactly once
    connector.close()


def test_a_changed_id_list_restarts_from_the_first_id(ga: GoogleAnalyticsStandIn) -> None:
    clock = FakeClock()
    connector = build("google_analytics", ga, clock, rate_limit={"per_second": 100, "burst": 10})
    subject = make_subject(identifiers={"ga_client_id": ["1.1", "2.2"]})
    result = connector.poll(subject, "progress:1/3")  # made when three ids were known
    assert isinstance(result, Result) and len(ga.requests) == 2
    with pytest.raises(PermanentError):
        connector.poll(subject, "somebody-else's-ref")
    connector.close()


def test_oauth_token_is_fetched_once_and_refreshed_when_it_expires(ga: GoogleAnalyticsStandIn) -> None:
    clock = FakeClock()
    connector = build("google_analytics", ga, clock, rate_limit={"per_second": 100, "burst": 10})
    for i in range(3):
        connector.erase(make_subject(identifiers={"ga_client_id": [f"{i}.0"]}))
    assert ga.tokens_issued == 1
    clock.advance(3600)
    connector.erase(make_subject(identifiers={"ga_client_id": ["9.0"]}))
    assert ga.tokens_issued == 2
    connector.close()


def test_a_fixed_access_token_and_a_web_property(ga: GoogleAnalyticsStandIn) -> None:
    settings = settings_for("google_analytics", ga, access_token=ACCESS_TOKEN, web_property_id="UA-1-1")
    del settings["oauth"], settings["property_id"]
    from connectors import google_analytics
    from worker.core.connector import ConnectorContext

    connector = google_analytics.create("ga", settings, ConnectorContext(now=FakeClock().now))
    result = connector.erase(make_subject(identifiers={"ga_user_id": ["u1"]}))
    assert isinstance(result, Result) and result.outcome == "requested"
    assert ga.requests[-1]["webPropertyId"] == "UA-1-1" and "propertyId" not in ga.requests[-1]
    assert ga.tokens_issued == 0
    connector.close()


def test_403_rate_limit_reason_is_retryable_with_the_vendor_delay(ga: GoogleAnalyticsStandIn) -> None:
    connector = build("google_analytics", ga, FakeClock())
    reply = google_error(403, "PERMISSION_DENIED", "userRateLimitExceeded", "User Rate Limit Exceeded")
    ga.fail_next(1, status=403, body=reply.body, headers={"Retry-After": "3"})
    with pytest.raises(RetryableError) as caught:
        connector.erase(make_subject(identifiers={"ga_client_id": ["1.1"]}))
    assert caught.value.retry_after == 3.0 and "userRateLimitExceeded" in str(caught.value)
    with pytest.raises(Throttled):
        connector.erase(make_subject(identifiers={"ga_client_id": ["1.1"]}))
    connector.close()


def test_a_failing_identity_lookup_is_retryable_and_clean(ga: GoogleAnalyticsStandIn) -> None:
    class Broken:
        def identifiers(self, subject: object, kind: str) -> tuple[str, ...]:
            raise ConnectionError("orders db at 10.0.0.7 refused marie@example.fr")

    connector = build("google_analytics", ga, FakeClock(), Broken())  # type: ignore[arg-type]
    with pytest.raises(RetryableError) as caught:
        connector.erase(make_subject(identifiers={"ga_client_id": ["1.1"]}))
    assert caught.value.code == "identity_lookup" and "marie" not in str(caught.value)
    connector.close()


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"property_id": None}, "set exactly one"),
    ({"web_property_id": "UA-1-1"}, "set exactly one"),
    ({"identifier_kinds": ["ga_client_id", "email"]}, "unknown kinds"),
    ({"allow_insecure_http": False}, "must use https"),
    ({"oauth": {"client_id": "x", "refresh_token": "y"}}, "oauth.client_secret"),
])
def test_bad_settings_are_refused_without_echoing_values(
        ga: GoogleAnalyticsStandIn, overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build("google_analytics", ga, FakeClock(), None, **overrides)
    assert problem in str(caught.value)
    assert "standin-client-secret" not in str(caught.value)


def test_a_2xx_without_the_deletion_request_is_no_acknowledgement(ga: GoogleAnalyticsStandIn) -> None:
    connector = build("google_analytics", ga, FakeClock())
    ga.fail_next(1, status=200, body=b"<html>proxy says hello</html>")
    with pytest.raises(PermanentError) as caught:
        connector.erase(make_subject(identifiers={"ga_client_id": ["111.222"]}))
    assert caught.value.code == "vendor_protocol" and "111.222" not in str(caught.value)
    connector.close()


@pytest.mark.parametrize("stamp", ["marie.dupont@example.fr", "+33612345678", "C-100234", "2026-13-45 at noon"])
def test_a_stamp_that_is_no_timestamp_never_reaches_the_receipt(ga: GoogleAnalyticsStandIn, stamp: str) -> None:
    """The stamp becomes the receipt's vendor_ref, and the receipt carries no personal data: a vendor (or a proxy)
    that answers with something else in its place, such as what it was sent, acknowledges without a stamp."""
    connector = build("google_analytics", ga, FakeClock(), rate_limit={"per_second": 100, "burst": 10})
    ga.fail_next(1, status=200, body={"kind": "analytics#userDeletionRequest", "deletionRequestTime": stamp})
    result = connector.erase(make_subject(identifiers={"ga_client_id": ["111.222"]}))
    assert isinstance(result, Result) and result.outcome == "requested"
    assert result.vendor_ref is None
    honest = connector.erase(make_subject(identifiers={"ga_client_id": ["111.222"]}))
    assert isinstance(honest, Result) and honest.vendor_ref is not None
    assert honest.vendor_ref.startswith("deletionRequestTime:20")
    connector.close()


@pytest.mark.parametrize("lifetime", [b"1e400", b"Infinity", b"NaN", b"1e300", b"-5"])
def test_a_token_lifetime_out_of_any_range_is_no_crash(ga: GoogleAnalyticsStandIn, lifetime: bytes) -> None:
    """``expires_in`` is the token endpoint's to fill: a number datetime cannot add (infinite, 1e300) raised
    OverflowError, which the executor can only call an unexpected connector bug. Now a lifetime that is no finite
    number is a vendor_protocol error, and a finite one is kept within a day (a 401 refreshes it anyway)."""
    connector = build("google_analytics", ga, FakeClock(), rate_limit={"per_second": 100, "burst": 10})
    ga.fault_exempt.discard("token")  # the next reply is the token endpoint's
    ga.fail_next(1, status=200, body=b'{"access_token": "ya29.odd", "expires_in": ' + lifetime + b"}")
    subject = make_subject(identifiers={"ga_client_id": ["111.222"]})
    if lifetime in (b"1e400", b"Infinity", b"NaN"):
        with pytest.raises(PermanentError) as caught:
            connector.erase(subject)
        assert caught.value.code == "vendor_protocol"
    else:
        with pytest.raises(PermanentError) as refused:  # the odd token itself is refused: a 401
            connector.erase(subject)
        assert refused.value.code == "credentials_refused"
        result = connector.erase(subject)  # and the next call fetches a good one
        assert isinstance(result, Result) and result.outcome == "requested"
    connector.close()


def test_a_vendor_429_part_way_keeps_the_ids_already_accepted(ga: GoogleAnalyticsStandIn) -> None:
    """The vendor's own limit (429, Retry-After) met after some ids were accepted: the run stops there and resumes
    from the first id not accepted once Retry-After has passed. It used to fail the whole call, and the retry sent
    the accepted ids again, spending the 500-a-day quota on them each time the vendor said to slow down."""
    clock = FakeClock()
    connector = build("google_analytics", ga, clock, rate_limit={"per_second": 100, "burst": 10})
    ga.max_per_second = 1  # the stand-in answers 429 (Retry-After: 1) to the second upsert within a second
    subject = make_subject(identifiers={"ga_client_id": ["1.1", "2.2", "3.3"]})
    first = connector.erase(subject)
    assert isinstance(first, Pending) and first.vendor_ref == "progress:1/3"
    assert first.poll_after == pytest.approx(1.0), "the vendor's Retry-After"
    ga.max_per_second = None
    clock.advance(first.poll_after)
    done = drive(connector, subject, clock, lambda: connector.poll(subject, first.vendor_ref))
    assert done.outcome == "requested"
    assert [r["id"]["userId"] for r in ga.requests] == ["1.1", "2.2", "3.3"]  # each accepted exactly once
    with pytest.raises(RetryableError):  # met on the first id of a run, it is the call's failure, as before
        ga.rate_limit_next(1, retry_after="1")
        clock.advance(2)
        connector.erase(subject)
    connector.close()
