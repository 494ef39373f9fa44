"""The support lookup: a bearer token or a trusted proxy header, never the customer id on the page."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from devkit.pipeline import record
from tests import web_env
from worker import states
from worker.store.repository import Store
from worker.web.app import create_app

AUTH = {"authorization": f"Bearer {web_env.SUPPORT_TOKEN}"}


@pytest.fixture
def env(pg_url: str, pg_schema_urls: Callable[[], str], kafka_bootstrap: str) -> Iterator[tuple[str, TestClient]]:
    settings, services = web_env.build(pg_url, pg_schema_urls(), kafka_bootstrap,
                                       support_proxy_header="X-Auth-Request-Email")
    store = Store(services.engine, topics=settings.kafka.topics, policy=states.RetryPolicy(), actor="test")
    request_id = record(store, {"orders_db": 8}, customer_id="C-100234", emails=["marie.dupont@example.fr"])
    with TestClient(create_app(services)) as client:
        yield request_id, client
    services.engine.dispose()


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong-token-0123456789"},
                                     {"authorization": f"Basic {web_env.SUPPORT_TOKEN}"},
                                     {"x-auth-request-email": ""}])
def test_support_pages_need_a_token_or_the_proxy_header(env: Any, headers: dict[str, str]) -> None:
    request_id, client = env
    for answer in (client.get(f"/support/requests/{request_id}", headers=headers),
                   client.get("/support", headers=headers),
                   client.post("/support/search", data={"customer_id": "C-100234"}, headers=headers)):
        assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")
        assert request_id not in answer.text


def test_a_request_page_shows_what_oubli_status_shows_with_the_audit_trail(env: Any) -> None:
    request_id, client = env
    page = client.get(f"/support/requests/{request_id}", headers=AUTH)
    assert page.status_code == 200 and request_id in page.text
    assert "orders_db" in page.text and "Audit trail" in page.text and "accepted" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert not [who for who in web_env.IDENTITIES if who in page.text]
    by_proxy = client.get(f"/support/requests/{request_id}", headers={"x-auth-request-email": "agent@retailer.example"})
    assert by_proxy.status_code == 200 and request_id in by_proxy.text
    assert client.get("/support/requests/no-such-request", headers=AUTH).status_code == 404


def test_search_by_customer_id_is_a_post_and_never_echoes_the_id(env: Any) -> None:
    request_id, client = env
    found = client.post("/support/search", data={"customer_id": "C-100234"}, headers=AUTH)
    assert found.status_code == 200 and request_id in found.text and "C-100234" not in found.text
    none = client.post("/support/search", data={"customer_id": "C-999999"}, headers=AUTH)
    assert none.status_code == 200 and request_id not in none.text and "C-999999" not in none.text
    assert client.get("/support/search", headers=AUTH).status_code == 405


def test_a_request_id_that_cannot_be_one_is_404_without_the_store(env: Any) -> None:
    _request_id, client = env
    for bad in ("a%00b", "a%0Ab", "a%1Bb", "a%20b", "x" * 129):
        assert client.get(f"/support/requests/{bad}", headers=AUTH).status_code == 404, bad


def test_an_unexpected_error_is_a_counted_500_without_detail(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.metrics import WEB_REQUESTS
    from worker.web import app as web_app

    request_id, client = env

    def broken(_receipt: Any) -> str:
        raise RuntimeError("no match for marie.dupont@example.fr")

    monkeypatch.setattr(web_app, "format_receipt", broken)
    counted = WEB_REQUESTS.labels(route="/support/", status="500")
    before = counted._value.get()
    answer = client.get(f"/support/requests/{request_id}", headers=AUTH)
    assert answer.status_code == 500 and "example.fr" not in answer.text and "RuntimeError" not in answer.text
    assert counted._value.get() == before + 1
