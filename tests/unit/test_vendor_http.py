"""Shared vendor helpers: Retry-After parsing, vendor codes, secrets, settings, https."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from connectors.http import HttpSettings, classify, parse_retry_after, safe_code
from connectors.vendor import Options, Progress, Secret
from worker.core.errors import ConfigError, PermanentError, RetryableError

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after": "7"}, 7.0),
    ({"retry-after": " 2.5 "}, 2.5),
    ({"retry-after": "Tue, 24 Nov 2026 10:01:30 GMT"}, 90.0),
    ({"retry-after": "Tue, 24 Nov 2026 09:00:00 GMT"}, 0.0),  # in the past: at once
    ({"ratelimit-reset": "12"}, 12.0),
    ({"x-ratelimit-reset": str(int(NOW.timestamp()) + 30)}, 30.0),  # an epoch timestamp
    ({"retry-after": "soon"}, None),
    ({"retry-after": "99999999"}, 86_400.0),  # capped at a day
    ({}, None),
])
def test_retry_after_in_seconds_or_http_date(headers: dict[str, str], seconds: float | None) -> None:
    assert parse_retry_after(httpx.Headers(headers), NOW) == seconds


def _answer_to(method: str, url: str, **kwargs: object) -> httpx.Response:
    return httpx.Response(400, request=httpx.Request(method, url, **kwargs))  # type: ignore[arg-type]


def test_vendor_codes_are_short_tokens_never_free_text() -> None:
    response = _answer_to("GET", "https://x/v1/customers/88")
    assert safe_code("RESOURCE_EXHAUSTED", response) == "RESOURCE_EXHAUSTED"
    assert safe_code("dailyLimitExceeded", response) == "dailyLimitExceeded"
    assert safe_code("Object with ID '10229' does not exist", response) is None
    assert safe_code("marie@example.fr", response) is None
    assert safe_code(True, response) is None and safe_code(None, response) is None
    assert safe_code(190, response) is None  # a number passes only when documented
    assert safe_code(190, response, documented={190}) == "190"


_SHOPIMIND = _answer_to("DELETE", "https://x/v1/customers/dupont")
_NOSTO = _answer_to("DELETE", "https://x/v1/customers/redact/marie.dupont%40example.fr")
_BULK = _answer_to("POST", "https://x/v1/customers/bulk-delete",
                   json=[{"customer_id": "Jean_Martin"}, {"customer_id": "88"}])


@pytest.mark.parametrize(("response", "echo"), [
    (_SHOPIMIND, "88"), (_SHOPIMIND, "C-100234"), (_SHOPIMIND, "+33612345678"), (_SHOPIMIND, "cust_1"),
    (_SHOPIMIND, "a1b2c3"), (_SHOPIMIND, "dupont"), (_SHOPIMIND, "DUPONT"), (_SHOPIMIND, "dupont_unknown"),
    (_SHOPIMIND, "unknownDupont"), (_NOSTO, "marie"), (_NOSTO, "marie_dupont"), (_NOSTO, "MARIE_DUPONT_EXAMPLE_FR"),
    (_NOSTO, "unknown_Dupont"), (_BULK, "Jean_Martin"), (_BULK, "martin"), (_BULK, "no_jean_here"),
])
def test_a_code_that_could_be_an_identifier_is_never_echoed(response: httpx.Response, echo: str) -> None:
    assert safe_code(echo, response) is None
    assert safe_code(190, _answer_to("DELETE", "https://x/v25.0/190/permissions"), documented={190}) is None


def test_documented_codes_still_pass_next_to_the_request_they_answer() -> None:
    ads = _answer_to("POST", "https://x/v1/audienceMembers:remove", json={
        "destinations": [{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
                          "productDestinationId": "555"}],
        "audienceMembers": [{"userData": {"userIdentifiers": [{"emailAddress": "ab" * 32}]}}], "encoding": "HEX"})
    for code in ("INVALID_PRODUCT_DESTINATION_ID", "INVALID_HEX_ENCODING", "INVALID_ARGUMENT", "PERMISSION_DENIED"):
        assert safe_code(code, ads) == code
    analytics = _answer_to("POST", "https://x/analytics/v3/userDeletion/userDeletionRequests:upsert", json={
        "kind": "analytics#userDeletionRequest", "id": {"type": "CLIENT_ID", "userId": "123.456"},
        "propertyId": "123456789"})
    for code in ("invalid", "invalidParameter", "dailyLimitExceeded", "rateLimitExceeded", "RESOURCE_EXHAUSTED"):
        assert safe_code(code, analytics) == code
    token = _answer_to("POST", "https://x/token", data={"grant_type": "refresh_token", "client_id": "abc"})
    assert safe_code("invalid_grant", token) == "invalid_grant"


@pytest.mark.parametrize(("status", "kind", "code"), [
    (429, RetryableError, "vendor_rate_limited"), (500, RetryableError, "vendor_unavailable"),
    (503, RetryableError, "vendor_unavailable"), (408, RetryableError, "vendor_unavailable"),
    (401, PermanentError, "credentials_refused"), (403, PermanentError, "credentials_refused"),
    (400, PermanentError, "vendor_rejected"), (404, PermanentError, "vendor_rejected"),
    # Redirects are not followed: a temporary one (a maintenance page) is waited out, a permanent one needs a person.
    (302, RetryableError, "vendor_redirected"), (307, RetryableError, "vendor_redirected"),
    (301, PermanentError, "vendor_moved"), (308, PermanentError, "vendor_moved"),
    (300, PermanentError, "vendor_rejected"),
])
def test_classification_by_status(status: int, kind: type[Exception], code: str) -> None:
    response = httpx.Response(status, headers={"retry-after": "3"})
    error = classify("nosto", "customer redact", response, NOW, "SOME_CODE")
    assert type(error) is kind and error.code == code
    assert str(error).startswith(f"nosto: customer redact got HTTP {status} (SOME_CODE)")
    if isinstance(error, RetryableError):
        assert error.retry_after == 3.0


def test_secrets_never_show_in_repr_or_str() -> None:
    secret = Options("s", {"token": "hunter2"}).secret("token")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{secret}"
    assert "hunter2" not in repr({"settings": secret})
    assert secret.reveal() == "hunter2" and secret == Secret("hunter2")


def test_settings_errors_name_the_key_not_the_value() -> None:
    opts = Options("nosto", {"timeout_seconds": "fast", "api_token": "", "rate_limit": 5})
    for read in (lambda: opts.number("timeout_seconds"), lambda: opts.secret("api_token"),
                 lambda: opts.section("rate_limit"), lambda: opts.text("missing")):
        with pytest.raises(ConfigError) as caught:
            read()
        assert str(caught.value).startswith("system nosto: setting ")
        assert "fast" not in str(caught.value)
    assert Options("s", {"n": "2.5", "f": "true"}).number("n") == 2.5  # ${ENV} values arrive as text
    assert Options("s", {"f": "true"}).flag("f") is True


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://api.nosto.com", True), ("http://127.0.0.1:8080", False), ("ftp://x", False), ("/relative", False),
])
def test_base_url_must_be_https(url: str, allowed: bool) -> None:
    opts = Options("nosto", {"base_url": url})
    if allowed:
        assert HttpSettings.parse(opts, "https://default").base_url == url
    else:
        with pytest.raises(ConfigError):
            HttpSettings.parse(opts, "https://default")
    insecure = Options("nosto", {"base_url": "http://127.0.0.1:1", "allow_insecure_http": "true"})
    assert HttpSettings.parse(insecure, "https://default").base_url == "http://127.0.0.1:1"


def test_timeouts_are_bounded_and_connect_never_exceeds_the_total() -> None:
    settings = HttpSettings.parse(Options("s", {"timeout_seconds": 0.2}), "https://x")
    assert settings.timeout == 0.2 and settings.connect_timeout == 0.2


def test_progress_markers_round_trip_and_hold_no_identifier() -> None:
    assert Progress(2, 5, "any").ref() == "progress:2/5:any"
    assert Progress.parse("progress:2/5:any", 5) == Progress(2, 5, "any")
    assert Progress.parse("progress:2/5", 4) == Progress(0, 4)  # the list changed: start over
    assert Progress.parse("request-123", 5) is None


def test_a_bad_quota_time_zone_is_a_config_error() -> None:
    from connectors.vendor import build_gate
    from worker.core.connector import ConnectorContext
    from worker.core.limits import RateSpec

    opts = Options("ga", {"quota_timezone": "Mars/Olympus_Mons"})
    with pytest.raises(ConfigError, match="quota_timezone"):
        build_gate(opts, ConnectorContext(now=lambda: NOW), buckets={"b": RateSpec(1, 1)}, quotas={"q": 5})
