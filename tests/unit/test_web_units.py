"""oubli web's pure parts: signed_request verification, codes and their seal, languages, the token bucket,
security headers and the body cap (through a tiny ASGI app)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from devkit.sampledata import SCHEMAS
from worker.web import codes, i18n, identity, signed
from worker.web.security import CSP, BodyLimit, RateLimit, SecurityHeaders, TokenBuckets

SECRET = b"app-secret"
NOW = 1_800_000_000.0


def make(payload: dict[str, object], secret: bytes = SECRET) -> str:
    return signed.sign(payload, secret)


def verify(value: str) -> signed.SignedRequest:
    return signed.verify(value, SECRET, now=NOW, max_age=3600, skew=300)


def test_a_signed_request_as_meta_builds_it_verifies() -> None:
    found = verify(make({"algorithm": "HMAC-SHA256", "issued_at": int(NOW) - 10, "user_id": "10229"}))
    assert found.user_id == "10229" and "10229" not in repr(found)
    padded = make({"algorithm": "HMAC-SHA256", "issued_at": int(NOW), "user_id": 10229})
    signature, payload = padded.split(".")
    assert verify(f"{signature}=.{payload}").user_id == "10229"  # padding on the signature is tolerated


@pytest.mark.parametrize(("value", "reason"), [
    (make({"algorithm": "HMAC-SHA256", "issued_at": int(NOW), "user_id": "1"}, b"other"), "bad_signature"),
    (make({"algorithm": "HMAC-SHA1", "issued_at": int(NOW), "user_id": "1"}), "algorithm"),
    (make({"issued_at": int(NOW), "user_id": "1"}), "algorithm"),
    (make({"algorithm": "HMAC-SHA256", "issued_at": int(NOW) - 3601, "user_id": "1"}), "stale"),
    (make({"algorithm": "HMAC-SHA256", "issued_at": int(NOW) + 301, "user_id": "1"}), "stale"),
    (make({"algorithm": "HMAC-SHA256", "issued_at": "now", "user_id": "1"}), "malformed"),
    (make({"algorithm": "HMAC-SHA256", "issued_at": True, "user_id": "1"}), "malformed"),
    (make({"algorithm": "HMAC-SHA256", "issued_at": int(NOW), "user_id": "a@b.c"}), "malformed"),
    (make({"algorithm": "HMAC-SHA256", "issued_at": int(NOW)}), "malformed"),
    (make({"algorithm": "HMAC-SHA256", "issued_at": int(NOW), "user_id": "١٢٣"}), "malformed"),
    ("abc", "malformed"), ("a.b.c", "malformed"), ("!!.??", "malformed"), ("x" * 5000 + ".y", "malformed"),
])
def test_bad_signed_requests_are_refused_with_a_reason_for_metrics(value: str, reason: str) -> None:
    with pytest.raises(signed.BadSignedRequest) as refused:
        verify(value)
    assert refused.value.reason == reason


def test_a_payload_that_is_not_json_is_malformed_even_when_signed() -> None:
    import hashlib
    import hmac

    payload = signed.b64encode(b"not json")
    signature = signed.b64encode(hmac.new(SECRET, payload.encode(), hashlib.sha256).digest())
    with pytest.raises(signed.BadSignedRequest, match="malformed"):
        verify(f"{signature}.{payload}")


def test_codes_are_random_alphanumeric_and_only_the_same_user_unseals_them() -> None:
    code = codes.new_code()
    assert len(code) == 40 and code.isalnum() and codes.looks_like_code(code) and code != codes.new_code()
    sealed = codes.seal(code, b"key", "10229", 1)
    assert code not in sealed and codes.unseal(sealed, b"key", "10229", 1) == code
    assert codes.unseal(sealed, b"key", "10230", 1) != code and codes.unseal(sealed, b"key", "10229", 2) != code
    assert codes.code_hash(code) != code and len(codes.code_hash(code)) == 64
    assert codes.user_ref(b"key", "10229") == codes.user_ref(b"key", "10229") != codes.user_ref(b"k2", "10229")
    assert not codes.looks_like_code("../../etc/passwd") and not codes.looks_like_code("A" * 40)


@pytest.mark.parametrize(("query", "header", "expected"), [
    (None, None, "fr"), ("en", "fr-FR", "en"), ("de", "en-GB,en;q=0.9", "en"), (None, "de-DE,en;q=0.5,fr;q=0.8", "fr"),
    (None, "en;q=0", "fr"), (None, "en;q=bad,fr", "fr"), (None, "pt-BR", "fr"), (None, "EN-us", "en"),
])
def test_the_language_comes_from_the_query_then_accept_language_then_french(query: str | None, header: str | None,
                                                                             expected: str) -> None:
    assert i18n.choose(query, header) == expected


def test_dates_read_naturally_in_both_languages() -> None:
    assert i18n.day(datetime(2027, 1, 1, tzinfo=UTC), "fr") == "1er janvier 2027"
    assert i18n.day(datetime(2027, 8, 2, tzinfo=UTC), "en") == "2 August 2027"
    assert set(i18n.TEXT) and all(set(v) == {"fr", "en"} for v in i18n.TEXT.values())


def test_the_token_bucket_admits_a_burst_then_the_rate() -> None:
    clock = [0.0]
    buckets = TokenBuckets(rate=1.0, burst=2, clock=lambda: clock[0])
    assert [buckets.admit("a"), buckets.admit("a")] == [0.0, 0.0]
    assert buckets.admit("a") == pytest.approx(1.0) and buckets.admit("b") == 0.0
    clock[0] = 1.0
    assert buckets.admit("a") == 0.0


def _app(limit: int = 64, burst: int = 100) -> TestClient:
    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    app = Starlette(routes=[Route("/status/x", echo, methods=["GET", "POST"]), Route("/other", echo)])
    wrapped = SecurityHeaders(RateLimit(BodyLimit(app, limit), TokenBuckets(1.0, burst), ("/status/",)))
    return TestClient(wrapped)  # type: ignore[arg-type]


def test_every_answer_carries_the_security_headers() -> None:
    answer = _app().get("/status/x")
    assert answer.headers["content-security-policy"] == CSP and answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer" and answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"


def test_a_body_over_the_cap_is_413_declared_or_streamed() -> None:
    client = _app(limit=64)
    assert client.post("/status/x", content=b"x" * 64).text == "64"
    assert client.post("/status/x", content=b"x" * 65).status_code == 413

    def chunks():  # no Content-Length: counted as it arrives
        yield b"x" * 40
        yield b"x" * 40

    assert client.post("/status/x", content=chunks()).status_code == 413


def test_only_the_public_prefixes_are_rate_limited() -> None:
    client = _app(burst=2)
    assert [client.get("/status/x").status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/other").status_code == 200
    assert int(client.get("/status/x").headers["retry-after"]) >= 1


def test_signing_is_deterministic_for_the_docs_example() -> None:
    value = make({"algorithm": "HMAC-SHA256", "issued_at": 1, "user_id": "1"})
    assert value == make({"algorithm": "HMAC-SHA256", "issued_at": 1, "user_id": "1"}) and "=" not in value


def test_the_identity_lookup_trims_what_the_shop_stored_and_still_refuses_what_is_not_an_email(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'orders.db'}", poolclass=sa.pool.NullPool)
    SCHEMAS["orders_db"].create_all(engine)
    now = datetime(2026, 11, 24, tzinfo=UTC)
    stored = {"C-1": (" h11@x.fr", " +33612345678\n"), "C-2": ("\u00a0h12@x.fr\r\n", None),
              "C-3": (" not an email ", "+33 6 12"), "C-4": ("a\x1fb@x.fr ", None)}
    with engine.begin() as conn:
        for n, (customer_id, (email, phone)) in enumerate(stored.items()):
            conn.execute(SCHEMAS["orders_db"].tables["customers"].insert().values(
                customer_id=customer_id, email=email, phone=phone, classification="individual", created_at=now))
            conn.execute(SCHEMAS["orders_db"].tables["customer_identifiers"].insert().values(
                customer_id=customer_id, kind=identity.KIND, value=str(100 + n), recorded_at=now))
    lookup = identity.FacebookIdentity(engine)
    try:
        found = {str(100 + n): lookup.customer(str(100 + n)) for n in range(4)}
    finally:
        lookup.close()
    assert {user: (c.emails, c.phones) for user, c in found.items() if c is not None} == {
        "100": (("h11@x.fr",), ("+33612345678",)),
        "101": (("h12@x.fr",), ()),
        "102": ((), ()),
        "103": ((), ()),  # a control character inside is not whitespace to trim
    }


def test_a_signed_payload_nested_too_deep_is_malformed_not_a_crash() -> None:
    payload = "[" * 1500 + "]" * 1500
    encoded = signed.b64encode(payload.encode())
    import hashlib
    import hmac

    value = f"{signed.b64encode(hmac.new(SECRET, encoded.encode(), hashlib.sha256).digest())}.{encoded}"
    with pytest.raises(signed.BadSignedRequest) as refused:
        verify(value)
    assert refused.value.reason == "malformed"
