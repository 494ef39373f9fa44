"""All ten systems wired together locally: sample data, the vendor stand-ins and one config.

Shared by the end-to-end test and ``scripts/demo.py``, so the demo runs what the suite checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tests import standins
from worker import sampledata
from worker.sampledata.bundle import DEMO_IDENTIFIERS, DEMO_INDEX, bundle

INTERNAL_SQL = ("orders_db", "loyalty", "newsletter", "contact_forms")
SEED = 42


@dataclass(frozen=True)
class DemoSubject:
    customer_id: str
    email: str
    phone: str
    identifiers: dict[str, list[str]]


def demo_subject(as_of: datetime) -> DemoSubject:
    """C-100234, Marie Dupont of the SPEC's example: present in every system."""
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
