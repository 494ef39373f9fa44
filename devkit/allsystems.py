"""All ten systems wired together locally: sample data, the vendor stand-ins and one config.

Shared by the end-to-end test and ``scripts/demo.py``, so the demo runs what the suite checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from devkit import sampledata, standins
from devkit.sampledata.bundle import DEMO_IDENTIFIERS, DEMO_INDEX, bundle

INTERNAL_SQL = ("orders_db", "loyalty", "newsletter", "contact_forms")
SEED = 42


@dataclass(frozen=True)
class DemoSubject:
    customer_id: str
    email: str
    phone: str
    identifiers: dict[str, list[str]]


# The retention policy's rules for the sample schemas: docs/retention.md shows them, the demo dry-runs them,
# tests/integration/test_retention.py sweeps with them.
RETENTION_RULES: list[dict[str, Any]] = [
    {"name": "inactive-accounts", "source": "orders_db", "table": "customers", "key": {"customer_id": "customer_id"},
     "timestamp": ["last_login_at", "created_at"], "period": {"years": 2}, "emails": ["email"], "phones": ["phone"],
     "unless": [{"table": "orders", "key": "customer_id", "newer": "placed_at"},
                {"system": "loyalty", "table": "loyalty_accounts", "key": "customer_id",
                 "newer": "last_activity_at"}],
     "reason": "account inactive for 2 years (retention policy)"},
    {"name": "contact-messages", "source": "contact_forms", "table": "contact_messages", "key": {"email": "email"},
     "timestamp": "received_at", "period": {"years": 1}, "systems": ["contact_forms"],
     "reason": "contact-form messages are kept 1 year (retention policy)"},
    {"name": "expired-invoices", "source": "orders_db", "table": "invoices", "key": {"customer_id": "customer_id"},
     "timestamp": "due_on", "period": {"years_setting": "billing_retention_years", "years": 3},
     "expires_when": "any_row", "unless": [{"table": "customers", "key": "customer_id"}], "systems": ["orders_db"],
     "reason": "billing retention period ended"},
]


def demo_subject(as_of: datetime) -> DemoSubject:
    """C-100234, Marie Dupont of the contract's example: present in every system."""
    person = bundle(SEED, DEMO_INDEX, as_of).person
    identifiers: dict[str, list[str]] = {}
    for kind, value in DEMO_IDENTIFIERS:
        identifiers.setdefault(kind, []).append(value)
    return DemoSubject(person.customer_id, person.email, person.phone, identifiers)


def seed(sql_urls: dict[str, str], s3: Any, recordings_bucket: str, as_of: datetime,
         customers: int = 300) -> sampledata.SeedReport:
    return sampledata.seed_systems(sql_urls, customers=customers, seed=SEED, as_of=as_of, s3=s3,
                                   bucket=recordings_bucket)


def start_vendors(subject: DemoSubject) -> standins.StandIns:
    standins.start_all()
    vendors = standins.running()
    vendors.seed_subject(emails=[subject.email], phones=[subject.phone], identifiers=subject.identifiers)
    return vendors


def systems_config(sql_urls: dict[str, str], *, recordings_bucket: str, s3: dict[str, str],
                   vendors: standins.StandIns) -> dict[str, Any]:
    systems: dict[str, Any] = {
        "orders_db": {"connector": "orders_db", "settings": {"url": sql_urls["orders_db"],
                                                             "billing_retention_years": 3}},
        "loyalty": {"connector": "loyalty", "settings": {"url": sql_urls["loyalty"]}},
        "newsletter": {"connector": "newsletter", "settings": {"url": sql_urls["newsletter"],
                                                               "suppression_key": "local-suppression-key"}},
        "contact_forms": {"connector": "contact_forms", "settings": {"url": sql_urls["contact_forms"]}},
        "call_recordings": {"connector": "call_recordings", "settings": {
            "bucket": recordings_bucket, "endpoint_url": s3["endpoint_url"],
            "access_key_id": s3["access_key_id"], "secret_access_key": s3["secret_access_key"]}},
    }
    for system_id, settings in vendors.settings().items():
        systems[system_id] = {"connector": system_id, "settings": settings}
    return systems
