"""A web service against a real store, broker and orders database, for the web tests (integration, e2e).

Marie Dupont (C-100234, Facebook app-scoped id 10229) is loaded from the sample data with her orders and
invoices; a second customer, C-WEB-2, has the Facebook id 20002 and nothing else.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from devkit.pipeline import raw_settings, read_topic, settings_from
from devkit.sampledata import SCHEMAS, TableLoader, bundle
from devkit.sampledata.bundle import DEMO_INDEX
from worker.config import Settings
from worker.store import db
from worker.web import signed
from worker.web.app import Services
from worker.web.server import build_services

APP_SECRET = "test-app-secret-0123456789abcdef"
SUPPORT_TOKEN = "support-token-0123456789abcdef"
SIGNING_SECRET = "signing-secret-for-web-tests"
MARIE_FB, SECOND_FB, UNKNOWN_FB = "10229", "20002", "99999999"
# Everything that would identify the test people: none may appear in a page, a log or an answer.
IDENTITIES = ("C-100234", "marie.dupont@example.fr", "+33612345678", "Marie", "Dupont", "C-WEB-2",
              "second@example.fr", MARIE_FB, SECOND_FB)


def seed_orders(url: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    metadata = SCHEMAS["orders_db"]
    metadata.create_all(engine)
    loader = TableLoader(engine, metadata)
    loader.add(bundle(7, DEMO_INDEX, datetime(2026, 11, 1, tzinfo=UTC)).rows["orders_db"])
    loader.flush()
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO customers (customer_id, email, classification, created_at) "
                             "VALUES ('C-WEB-2', 'second@example.fr', 'individual', :now)"), {"now": now})
        conn.execute(sa.text("INSERT INTO customer_identifiers (customer_id, kind, value, recorded_at) "
                             "VALUES ('C-WEB-2', 'facebook_user_id', :fb, :now)"), {"fb": SECOND_FB, "now": now})
    engine.dispose()


def web_raw(store_url: str, orders_url: str, bootstrap: str, extra_systems: dict[str, Any] | None = None,
            **web: Any) -> dict[str, Any]:
    systems: dict[str, Any] = {
        "orders_db": {"connector": "orders_db", "settings": {"url": orders_url, "billing_retention_years": 3}},
        "shopimind": {"connector": "devkit.fakes", "settings": {"url": store_url, "outcome": "requested"}},
        **(extra_systems or {}),
    }
    return raw_settings(store_url=store_url, bootstrap=bootstrap, systems=systems, identity_system="orders_db",
                        signing_secret=SIGNING_SECRET,
                        web={"facebook_app_secret": APP_SECRET, "support_tokens": [SUPPORT_TOKEN],
                             "public_base_url": "https://privacy.example.test", "rate_per_minute": 6000,
                             "rate_burst": 1000, "contact": {"email": "dpo@vet-securite.example"}, **web})


def build(store_url: str, orders_url: str, bootstrap: str, extra_systems: dict[str, Any] | None = None,
          **web: Any) -> tuple[Settings, Services]:
    seed_orders(orders_url)
    settings = settings_from(web_raw(store_url, orders_url, bootstrap, extra_systems, **web))
    db.migrate(db.create_engine(settings.store_url))
    return settings, build_services(settings)


def signed_request(user_id: str, *, issued_at: float | None = None, algorithm: str = "HMAC-SHA256",
                   secret: str = APP_SECRET) -> str:
    payload = {"algorithm": algorithm, "expires": 0, "issued_at": int(issued_at or time.time()), "user_id": user_id}
    return signed.sign(payload, secret.encode())


def commands(settings: Settings) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    return [(json.loads(m.value() or b"{}"), dict(m.headers() or []))
            for m in read_topic(settings, settings.kafka.topics.commands)]

