"""Meta's data deletion callback against a real store, broker and orders database (docs/web.md).

Each refusal is a 400 (413 for a body over the limit) with the same body and no command on the topic;
a verified call publishes one signed erasure command and answers {url, confirmation_code}.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from tests import web_env
from worker import messages
from worker.core.timefmt import utcnow
from worker.store.schema import web_confirmations
from worker.web.app import create_app
from worker.web.deletion import DeletionCallback, Publisher, PublishFailed
from worker.web.identity import FacebookIdentity
from worker.web.security import CSP

URL = "/facebook/data-deletion"
REFUSED = {"error": "invalid_request"}


@pytest.fixture
def env(pg_url: str, pg_schema_urls: Callable[[], str], kafka_bootstrap: str) -> Iterator[tuple[Any, Any, TestClient]]:
    settings, services = web_env.build(pg_url, pg_schema_urls(), kafka_bootstrap)
    with TestClient(create_app(services)) as client:
        yield settings, services, client
    services.engine.dispose()


def post(client: TestClient, value: str) -> Any:
    return client.post(URL, data={"signed_request": value})


def test_a_verified_callback_publishes_one_signed_erasure_and_answers_url_and_code(env: Any) -> None:
    settings, services, client = env
    value = web_env.signed_request(web_env.MARIE_FB)
    with capture_logs() as logs:
        answer = post(client, value)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    code = body["confirmation_code"]
    assert body["url"] == f"https://privacy.example.test/status/{code}" and len(code) == 40
    assert code.isalnum()  # Meta asks for an alphanumeric confirmation code
    assert answer.headers["cache-control"] == "no-store" and answer.headers["content-security-policy"] == CSP

    [(command, headers)] = web_env.commands(settings)
    assert command["requested_by"] == "facebook-data-deletion" and command["kind"] == "erasure"
    assert command["subject"]["customer_id"] == "C-100234"
    assert command["subject"]["identifiers"] == {"facebook_user_id": [web_env.MARIE_FB]}
    assert command["subject"]["emails"] == ["marie.dupont@example.fr"] and command["systems"] is None
    assert "priority" not in command or command["priority"] == "standard"
    assert not messages.schema_errors("command.v1", command)
    raw = [m.value() for m in web_env.read_topic(settings, settings.kafka.topics.commands)][0]
    assert messages.verify_signature(raw, headers[messages.SIGNATURE_HEADER], web_env.SIGNING_SECRET.encode())

    # The code maps to the request, is not its id, and is kept only hashed.
    assert code != command["request_id"] and code not in command["request_id"]
    with services.engine.connect() as conn:
        rows = conn.execute(sa.select(web_confirmations)).mappings().all()
    assert [r["request_id"] for r in rows] == [command["request_id"]] and rows[0]["published_at"] is not None
    assert code not in str([dict(r) for r in rows])
    # Never in the logs: the code, the signed_request, the user id.
    assert logs and not any(secret in str(logs) for secret in (code, value, value.split(".")[1], web_env.MARIE_FB))


def test_a_replay_or_a_second_call_of_the_same_user_gets_the_same_request_and_code(env: Any) -> None:
    settings, _services, client = env
    value = web_env.signed_request(web_env.MARIE_FB)
    first = post(client, value).json()
    assert post(client, value).json() == first  # the very same signed_request again
    again = post(client, web_env.signed_request(web_env.MARIE_FB, issued_at=time.time() - 5)).json()
    assert again == first  # a new signed_request of the same user while the request is open
    assert len(web_env.commands(settings)) == 1


REFUSALS = ("bad_signature", "other_secret", "wrong_algorithm", "expired", "future", "malformed", "not_a_form",
            "no_field", "too_many_fields", "non_numeric_user")


def test_bad_stale_or_malformed_requests_are_refused_without_detail_and_publish_nothing(env: Any) -> None:
    settings, _services, client = env
    good = web_env.signed_request(web_env.MARIE_FB)
    answers = {
        "bad_signature": post(client, ("A" if good[0] != "A" else "B") + good[1:]),
        "other_secret": post(client, web_env.signed_request(web_env.MARIE_FB, secret="another-app-secret")),
        "wrong_algorithm": post(client, web_env.signed_request(web_env.MARIE_FB, algorithm="HMAC-SHA1")),
        "expired": post(client, web_env.signed_request(web_env.MARIE_FB, issued_at=time.time() - 7200)),
        "future": post(client, web_env.signed_request(web_env.MARIE_FB, issued_at=time.time() + 3600)),
        "malformed": post(client, "no-dot-here"),
        "not_a_form": client.post(URL, json={"signed_request": good}),
        "no_field": client.post(URL, data={"something": "else"}),
        "too_many_fields": client.post(URL, data={"signed_request": good, **{f"f{i}": "x" for i in range(9)}}),
        "non_numeric_user": post(client, web_env.signed_request("me@example.fr")),
    }
    assert set(answers) == set(REFUSALS)
    for case, answer in answers.items():
        assert (answer.status_code, answer.json()) == (400, REFUSED), case
    assert web_env.commands(settings) == []


def test_a_body_over_the_limit_is_413_and_publishes_nothing(env: Any) -> None:
    settings, _services, client = env
    answer = client.post(URL, data={"signed_request": web_env.signed_request(web_env.MARIE_FB), "pad": "x" * 9000})
    assert answer.status_code == 413
    assert web_env.commands(settings) == []


def test_an_unknown_user_gets_a_code_whose_page_says_no_data_was_held(env: Any) -> None:
    settings, _services, client = env
    answer = post(client, web_env.signed_request(web_env.UNKNOWN_FB))
    assert answer.status_code == 200
    code = answer.json()["confirmation_code"]
    assert web_env.commands(settings) == []
    page = client.get(f"/status/{code}?lang=en")
    assert page.status_code == 200 and "we held no data linked to your Facebook account" in page.text
    assert post(client, web_env.signed_request(web_env.UNKNOWN_FB)).json()["confirmation_code"] == code


def test_the_status_page_of_a_fresh_request_says_received_with_the_deadline(env: Any) -> None:
    _settings, _services, client = env
    code = post(client, web_env.signed_request(web_env.MARIE_FB)).json()["confirmation_code"]
    page = client.get(f"/status/{code}", headers={"accept-language": "fr-FR,fr;q=0.9,en;q=0.8"})
    assert page.status_code == 200 and '<html lang="fr">' in page.text
    assert "Nous avons reçu votre demande." in page.text and "Délai légal de réponse" in page.text
    assert page.headers["cache-control"] == "private, max-age=60" and page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    english = client.get(f"/status/{code}", headers={"accept-language": "en-GB,en;q=0.9"})
    assert '<html lang="en">' in english.text and "We have received your request." in english.text
    assert not [who for who in web_env.IDENTITIES if who in page.text + english.text]
    assert client.get("/status/" + "a" * 40).status_code == 404  # well-formed, unknown
    assert client.get("/status/" + "A" * 40).status_code == 404
    assert client.get("/status/short").status_code == 404


def test_public_endpoints_are_rate_limited_per_client(pg_url: str, pg_schema_urls: Callable[[], str],
                                                      kafka_bootstrap: str) -> None:
    _settings, services = web_env.build(pg_url, pg_schema_urls(), kafka_bootstrap, rate_per_minute=60, rate_burst=3)
    with TestClient(create_app(services)) as client:
        answers = [client.get("/status/" + "a" * 40).status_code for _ in range(5)]
        assert answers[:3] == [404, 404, 404] and answers[3:] == [429, 429]
        assert client.get("/healthz").status_code == 200  # probes are not limited
    services.engine.dispose()


def test_the_erasure_scope_is_config(pg_url: str, pg_schema_urls: Callable[[], str], kafka_bootstrap: str) -> None:
    settings, services = web_env.build(pg_url, pg_schema_urls(), kafka_bootstrap, erasure_systems=["orders_db"])
    with TestClient(create_app(services)) as client:
        assert post(client, web_env.signed_request(web_env.SECOND_FB)).status_code == 200
    [(command, _headers)] = web_env.commands(settings)
    assert command["systems"] == ["orders_db"] and command["subject"]["customer_id"] == "C-WEB-2"
    services.engine.dispose()


def test_a_broker_outage_answers_503_and_the_next_call_publishes_the_same_request(env: Any) -> None:
    settings, services, _client = env
    publisher = Publisher(settings)
    calls: list[str] = []

    def flaky(command: dict[str, Any]) -> None:
        calls.append(command["request_id"])
        if len(calls) == 1:
            raise PublishFailed("the command was not acknowledged")
        publisher.publish(command)

    services.callback = DeletionCallback(settings, services.confirmations, FacebookIdentity.from_settings(settings),
                                         flaky, utcnow)
    with TestClient(create_app(services)) as client:
        down = post(client, web_env.signed_request(web_env.MARIE_FB))
        assert down.status_code == 503 and down.json() == {"error": "unavailable"}
        assert web_env.commands(settings) == []
        answer = post(client, web_env.signed_request(web_env.MARIE_FB))
        assert answer.status_code == 200
        [(command, _headers)] = web_env.commands(settings)
        assert calls == [command["request_id"]] * 2  # the same request, published once it could be
        # A third call finds the row published: the same answer, nothing more on the topic.
        assert post(client, web_env.signed_request(web_env.MARIE_FB)).json() == answer.json()
        assert len(web_env.commands(settings)) == 1 and len(calls) == 2


def test_an_account_email_with_whitespace_around_it_reaches_the_command_trimmed(env: Any) -> None:
    """Shops store what forms sent: ' second@example.fr\t' is still the account's email, and without it
    the email-keyed systems (newsletter, contact forms, vendors) would answer not_found."""
    settings, services, client = env
    orders = sa.create_engine(settings.systems["orders_db"].settings["url"], poolclass=sa.pool.NullPool)
    with orders.begin() as conn:
        conn.execute(sa.text("UPDATE customers SET email = :email, phone = :phone WHERE customer_id = 'C-WEB-2'"),
                     {"email": " second@example.fr\t", "phone": "+33612345678 "})
    orders.dispose()
    assert post(client, web_env.signed_request(web_env.SECOND_FB)).status_code == 200
    [(command, _headers)] = web_env.commands(settings)
    assert command["subject"]["emails"] == ["second@example.fr"]
    assert command["subject"]["phones"] == ["+33612345678"]


def _link_accounts(orders_url: str, facebook_user_id: str, accounts: dict[str, str]) -> None:
    """Customer accounts (id -> email) in the identity system, each linked to ``facebook_user_id``."""
    engine = sa.create_engine(orders_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        for customer_id, email in accounts.items():
            conn.execute(sa.text("INSERT INTO customers (customer_id, email, classification, created_at) "
                                 "VALUES (:c, :e, 'individual', :now)"),
                         {"c": customer_id, "e": email, "now": utcnow()})
            conn.execute(sa.text("INSERT INTO customer_identifiers (customer_id, kind, value, recorded_at) "
                                 "VALUES (:c, 'facebook_user_id', :f, :now)"),
                         {"c": customer_id, "f": facebook_user_id, "now": utcnow()})
    engine.dispose()


def _needs_person() -> float:
    from worker.metrics import REGISTRY

    return REGISTRY.get_sample_value("oubli_web_deletion_callbacks_total", {"result": "needs_person"}) or 0.0


def test_a_customer_no_command_can_carry_gets_a_code_and_a_person_is_told(
        pg_url: str, pg_schema_urls: Callable[[], str], kafka_bootstrap: str) -> None:
    orders_url = pg_schema_urls()
    settings, services = web_env.build(pg_url, orders_url, kafka_bootstrap)
    # A customer id with a space: command.v1 refuses it, whatever is retried.
    _link_accounts(orders_url, "30003", {"H 8": "h.eight@example.fr"})
    before = _needs_person()
    with TestClient(create_app(services)) as client, capture_logs() as logs:
        answer = post(client, web_env.signed_request("30003"))
        assert answer.status_code == 200, answer.text  # not 503: Meta would retry for ever, and nobody learn
        code = answer.json()["confirmation_code"]
        assert answer.json()["url"] == f"https://privacy.example.test/status/{code}"
        again = post(client, web_env.signed_request("30003"))  # Meta, or the person, calling again
        assert again.status_code == 200 and again.json() == answer.json()
        page = client.get(f"/status/{code}", headers={"accept-language": "en-GB,en;q=0.9"})
    assert page.status_code == 200 and "one of our systems needs our team" in page.text
    assert web_env.commands(settings) == []  # nothing the worker would dead-letter
    with services.engine.connect() as conn:
        [row] = conn.execute(sa.select(web_confirmations)).mappings().all()
    assert row["request_id"] and row["published_at"] is None
    told = [e for e in logs if e["event"] == "web_callback_needs_person"]
    assert [e["request_id"] for e in told] == [row["request_id"]] * 2
    assert told[0]["problems"] == ["$.subject.customer_id: pattern violated"]
    assert _needs_person() - before == 2
    shown = repr(logs) + page.text
    assert "H 8" not in shown and "h.eight" not in shown and "30003" not in shown
    services.engine.dispose()


def test_a_facebook_id_linked_to_two_accounts_erases_the_first_and_a_person_is_told_of_the_other(
        pg_url: str, pg_schema_urls: Callable[[], str], kafka_bootstrap: str) -> None:
    """One command names one customer. The second account was left with its data while the person's page
    said completed: now the first is erased and the log names the request for a person to erase the other."""
    orders_url = pg_schema_urls()
    settings, services = web_env.build(pg_url, orders_url, kafka_bootstrap)
    _link_accounts(orders_url, "30004", {"H-14": "h-14@example.fr", "H-15": "h-15@example.fr"})
    before = _needs_person()
    with TestClient(create_app(services)) as client, capture_logs() as logs:
        answer = post(client, web_env.signed_request("30004"))
    assert answer.status_code == 200, answer.text
    [(command, _)] = web_env.commands(settings)
    assert command["subject"]["customer_id"] == "H-14"
    told = [e for e in logs if e["event"] == "web_callback_more_accounts"]
    assert [(e["request_id"], e["other_accounts"]) for e in told] == [(command["request_id"], 1)]
    assert _needs_person() - before == 1
    assert "H-15" not in repr(logs) and "h-15" not in repr(logs)
    services.engine.dispose()
