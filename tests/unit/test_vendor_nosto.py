"""Nosto GDPR connector: redact and takeout by email over HTTP Basic, https only."""

from __future__ import annotations

import logging

import pytest

from connectors import nosto
from devkit.standins import settings_for
from devkit.standins.harness import FakeClock, build, fresh_limiters, make_subject  # noqa: F401
from devkit.standins.nosto import API_TOKEN, NostoStandIn
from tests.conformance import MemoryExportWriter
from worker.core.connector import ConnectorContext, Pending, Result
from worker.core.errors import ConfigError, PermanentError

pytestmark = pytest.mark.timeout(30)
standin = NostoStandIn.fixture()


def test_redaction_is_queued_for_each_form_of_the_address(standin: NostoStandIn) -> None:
    standin.seed("marie.dupont+shop@example.fr")
    clock = FakeClock()
    connector = build("nosto", standin, clock)
    result = connector.erase(make_subject(emails=[" Marie.Dupont+shop@Example.fr"]))
    assert isinstance(result, Result) and result.outcome == "requested"
    assert result.expected_by is not None and (result.expected_by - clock.now()).total_seconds() == 24 * 3600
    assert sorted(standin.redactions) == ["Marie.Dupont+shop@Example.fr", "marie.dupont+shop@example.fr"]
    assert not standin.holds("marie.dupont+shop@example.fr")
    connector.close()


def test_takeout_is_queued_and_erases_nothing(standin: NostoStandIn) -> None:
    standin.seed("a@example.org")
    connector = build("nosto", standin, FakeClock())
    result = connector.export(make_subject(emails=["a@example.org"]), MemoryExportWriter())
    assert isinstance(result, Result) and result.outcome == "requested" and "takeout" in (result.detail or "")
    assert standin.takeouts == ["a@example.org"] and standin.holds("a@example.org")
    connector.close()


def test_a_limited_run_resumes_through_poll(standin: NostoStandIn) -> None:
    clock = FakeClock()
    connector = build("nosto", standin, clock, rate_limit={"per_second": 1, "burst": 1})
    subject = make_subject(emails=["a@example.org", "b@example.org"])
    first = connector.erase(subject)
    assert isinstance(first, Pending) and first.vendor_ref == "redact+progress:1/2"
    clock.advance(first.poll_after)
    done = connector.poll(subject, first.vendor_ref)
    assert isinstance(done, Result) and done.outcome == "requested"
    assert standin.redactions == ["a@example.org", "b@example.org"]
    connector.close()


def test_plain_http_is_refused_unless_explicitly_allowed(standin: NostoStandIn) -> None:
    settings = settings_for("nosto", standin)
    del settings["allow_insecure_http"]
    with pytest.raises(ConfigError) as caught:
        nosto.create("nosto", settings, ConnectorContext(now=FakeClock().now))
    assert "https" in str(caught.value) and API_TOKEN not in str(caught.value)
    https = nosto.create("nosto", {"api_token": API_TOKEN}, ConnectorContext(now=FakeClock().now))
    https.close()  # the default base URL is https://api.nosto.com


def test_missing_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="api_token"):
        nosto.create("nosto", {}, ConnectorContext(now=FakeClock().now))


def test_logs_never_carry_the_address_or_the_token(standin: NostoStandIn, caplog: pytest.LogCaptureFixture) -> None:
    connector = build("nosto", standin, FakeClock())
    # httpx's own level too: worker.logs keeps it at WARNING in production, and another test may
    # have configured that already in this process.
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="httpx"):
        connector.erase(make_subject(emails=["secret.person@example.org"]))
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "HTTP Request" in text  # httpx logged the call ...
    assert "secret.person" not in text and "secret.person%40" not in text  # ... without the path
    assert API_TOKEN not in text
    connector.close()


@pytest.mark.parametrize("echo", ["marie", "marie_dupont", "DUPONT"])
def test_an_error_code_echoing_part_of_the_address_never_reaches_the_message(standin: NostoStandIn,
                                                                              echo: str) -> None:
    connector = build("nosto", standin, FakeClock())
    standin.fail_next(2, status=400, body={"code": echo})
    with pytest.raises(PermanentError) as caught:
        connector.erase(make_subject(emails=["marie.dupont@example.fr"]))
    assert "HTTP 400" in str(caught.value) and "marie" not in str(caught.value).lower()
    assert "dupont" not in str(caught.value).lower()
    connector.close()
