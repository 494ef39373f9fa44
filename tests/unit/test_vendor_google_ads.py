"""Google Ads Customer Match removal via the Data Manager API: hashed members, an async job polled
until it settles, and its failure modes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors.google_ads import sha256_hex
from devkit.standins import ADS_LIST_ID
from devkit.standins.google import DataManagerStandIn
from devkit.standins.harness import FakeClock, build, fresh_limiters, make_subject  # noqa: F401
from tests.conformance import settle
from worker.core.connector import Pending, Result, Subject
from worker.core.errors import NeedsPersonError, PermanentError

pytestmark = pytest.mark.timeout(30)
EMAIL_HASH = "5c90285452dff6c6cfa9163f35b0078e5b116976f3216ba662e5c66399f43918"  # marie.dupont@example.fr
PHONE_HASH = "42d573cfc315801d4cd8eddd5416b416a0bf298b9b9e12d6b07442c91db42bd8"  # +33612345678


@pytest.fixture
def ads() -> Iterator[DataManagerStandIn]:
    standin = DataManagerStandIn()
    standin.start()
    standin.seed(ADS_LIST_ID, EMAIL_HASH, PHONE_HASH)
    yield standin
    standin.stop()


def _marie() -> Subject:
    return make_subject(emails=[" Marie.Dupont@Example.fr"], phones=["+33 6 12 34 56 78"])


def test_async_removal_finishes_after_several_polls(ads: DataManagerStandIn) -> None:
    ads.polls_to_finish = 4
    clock = FakeClock()
    connector = build("google_ads", ads, clock)
    subject = _marie()
    pending = connector.erase(subject)
    assert isinstance(pending, Pending) and pending.poll_after == 1
    for _ in range(4):
        assert ads.holds(EMAIL_HASH)  # nothing changes while the job is processing
        clock.advance(pending.poll_after)
        again = connector.poll(subject, pending.vendor_ref)
        assert again == pending
    done = connector.poll(subject, pending.vendor_ref)
    assert isinstance(done, Result) and done.outcome == "requested" and done.vendor_ref == pending.vendor_ref
    assert not ads.holds(EMAIL_HASH) and not ads.holds(PHONE_HASH)
    assert ads.count("remove") == 1 and ads.count("retrieve") == 5
    connector.close()


def test_the_request_carries_only_hashes_and_the_documented_shape(ads: DataManagerStandIn) -> None:
    connector = build("google_ads", ads, FakeClock(), login_account={"account_id": "555"})
    settle(connector, _marie(), connector.erase(_marie()))
    body = ads.bodies[0]
    assert body["encoding"] == "HEX"
    assert body["destinations"] == [{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
                                     "productDestinationId": ADS_LIST_ID,
                                     "loginAccount": {"accountType": "GOOGLE_ADS", "accountId": "555"}}]
    identifiers = [i for m in body["audienceMembers"] for i in m["userData"]["userIdentifiers"]]
    assert identifiers == [{"emailAddress": EMAIL_HASH}, {"phoneNumber": PHONE_HASH}]
    assert "marie" not in repr(body).lower() and "3361234" not in repr(body)
    connector.close()


def test_gmail_addresses_send_both_hash_forms(ads: DataManagerStandIn) -> None:
    connector = build("google_ads", ads, FakeClock())
    connector.erase(make_subject(emails=["Cloudy.SanFrancisco+shopping@gmail.com"]))
    sent = {i["emailAddress"] for m in ads.bodies[0]["audienceMembers"] for i in m["userData"]["userIdentifiers"]}
    assert sent == {sha256_hex("cloudy.sanfrancisco+shopping@gmail.com"), sha256_hex("cloudysanfrancisco@gmail.com")}
    connector.close()


def test_a_failed_job_is_permanent_and_names_the_reason(ads: DataManagerStandIn) -> None:
    ads.next_outcome = "FAILED"
    connector = build("google_ads", ads, FakeClock())
    subject = _marie()
    with pytest.raises(PermanentError) as caught:
        settle(connector, subject, connector.erase(subject))
    assert caught.value.code == "vendor_job_failed" and "INVALID_USER_LIST" in str(caught.value)
    assert ads.holds(EMAIL_HASH)
    connector.close()


def test_a_partial_success_needs_a_person(ads: DataManagerStandIn) -> None:
    ads.next_outcome = "PARTIAL_SUCCESS"
    connector = build("google_ads", ads, FakeClock())
    with pytest.raises(NeedsPersonError):
        settle(connector, _marie(), connector.erase(_marie()))
    connector.close()


def test_a_request_the_vendor_forgot_is_sent_again(ads: DataManagerStandIn) -> None:
    connector = build("google_ads", ads, FakeClock())
    subject = _marie()
    again = connector.poll(subject, "0f1e2d3c-unknown")
    assert isinstance(again, Pending) and again.vendor_ref in ads.jobs
    assert ads.count("remove") == 1
    connector.close()


def test_a_phone_that_is_not_e164_needs_a_person_before_any_call(ads: DataManagerStandIn) -> None:
    connector = build("google_ads", ads, FakeClock())
    with pytest.raises(NeedsPersonError) as caught:
        connector.erase(make_subject(emails=["a@b.c"], phones=["06 12 34 56 78"]))
    assert "06 12" not in str(caught.value) and ads.count() == 0
    connector.close()


def test_a_reference_that_is_no_request_id_is_refused(ads: DataManagerStandIn) -> None:
    connector = build("google_ads", ads, FakeClock())
    with pytest.raises(PermanentError):
        connector.poll(_marie(), "../../etc/passwd")
    connector.close()


def test_export_is_not_supported(ads: DataManagerStandIn) -> None:
    from tests.conformance import MemoryExportWriter

    connector = build("google_ads", ads, FakeClock())
    result = connector.export(_marie(), MemoryExportWriter())
    assert isinstance(result, Result) and result.outcome == "not_supported"
    connector.close()


def test_blank_addresses_are_skipped_not_hashed(ads: DataManagerStandIn) -> None:
    connector = build("google_ads", ads, FakeClock())
    result = connector.erase(make_subject(emails=["   ", "not-an-address"]))
    assert isinstance(result, Result) and result.outcome == "not_found" and ads.count() == 0
    assert repr(connector) == "GoogleAdsConnector(system='google_ads')"
    connector.close()


def test_a_status_answered_without_the_documented_list_is_a_protocol_error(ads: DataManagerStandIn) -> None:
    connector = build("google_ads", ads, FakeClock())
    pending = connector.erase(_marie())
    assert isinstance(pending, Pending)
    ads.fail_next(1, status=200, body=b"<html>maintenance</html>")
    with pytest.raises(PermanentError) as caught:
        connector.poll(_marie(), pending.vendor_ref)
    assert caught.value.code == "vendor_protocol"
    connector.close()
