"""Sample data for every internal system, deterministic from a seed.

``seed_systems(urls, customers=..., seed=..., as_of=...)`` creates the sample schemas and loads
them; ``seed_recordings(s3, bucket, ...)`` puts the call recordings in a bucket. Customer ``N`` is
``C-{100000+N}`` and depends only on ``(seed, N, as_of)``; ``C-100234`` is Marie Dupont, the
subject of the contract's example command, present in every system.

Distributions (per customer): 70 % individuals, 27 % professionals, 3 % public bodies; 18 % never
ordered, otherwise 1 + Exp(mean 1.8) orders (5.0 for professionals), up to 60; 1 + Exp(1.4) lines
per order; invoices due on order (individuals) or at 30 days (professionals), a credit note per
return (7 %); 55 % in the loyalty programme, 35 % newsletter subscribers (15 % since unsubscribed),
12 % with 1-3 contact-form messages over 18 months, 6 % with 1-3 call recordings, 12 % of accounts
inactive for more than two years.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devkit.sampledata.bundle import DEMO_INDEX, Bundle, Recording, bundle, customer_id
from devkit.sampledata.load import DEFAULT_KEY_TEMPLATE, TableLoader, recording_key, upload_recordings
from devkit.shop_schemas import contact_forms, loyalty, newsletter, orders

SCHEMAS: dict[str, sa.MetaData] = {
    "orders_db": orders.metadata,
    "loyalty": loyalty.metadata,
    "newsletter": newsletter.metadata,
    "contact_forms": contact_forms.metadata,
}
__all__ = [
    "DEFAULT_KEY_TEMPLATE",
    "DEMO_INDEX",
    "SCHEMAS",
    "Bundle",
    "Recording",
    "SeedReport",
    "bundle",
    "create_schemas",
    "customer_id",
    "generate",
    "recording_key",
    "seed_recordings",
    "seed_systems",
]


@dataclass
class SeedReport:
    customers: int
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    recordings: int = 0
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(sum(tables.values()) for tables in self.rows.values())


def generate(seed: int, customers: int, as_of: datetime, start: int = 0) -> Iterator[Bundle]:
    for index in range(start, start + customers):
        yield bundle(seed, index, as_of)


def create_schemas(engines: Mapping[str, sa.Engine]) -> None:
    for system, engine in engines.items():
        SCHEMAS[system].create_all(engine)


def seed_systems(
    urls: Mapping[str, str],
    *,
    customers: int,
    seed: int,
    as_of: datetime,
    batch_rows: int = 20_000,
    s3: Any = None,
    bucket: str | None = None,
    key_template: str = DEFAULT_KEY_TEMPLATE,
) -> SeedReport:
    """Creates the schemas named in ``urls`` (system id -> SQLAlchemy URL) and loads them.

    With ``s3`` and ``bucket``, the recordings are uploaded too.
    """
    unknown = sorted(set(urls) - set(SCHEMAS))
    if unknown:
        raise ValueError(f"no sample schema for {', '.join(unknown)}")
    started = time.perf_counter()
    engines = {system: sa.create_engine(url, hide_parameters=True) for system, url in urls.items()}
    try:
        create_schemas(engines)
        loaders = {s: TableLoader(e, SCHEMAS[s], batch_rows=batch_rows) for s, e in engines.items()}
        report = SeedReport(customers)
        pending: list[Recording] = []
        for item in generate(seed, customers, as_of):
            for system, loader in loaders.items():
                loader.add(item.rows.get(system, {}))
            if s3 is not None and bucket:
                pending.extend(item.recordings)
                if len(pending) >= 500:
                    report.recordings += upload_recordings(s3, bucket, pending, key_template)
                    pending = []
        for loader in loaders.values():
            loader.finish()
        if s3 is not None and bucket and pending:
            report.recordings += upload_recordings(s3, bucket, pending, key_template)
        report.rows = {system: dict(loader.counts) for system, loader in loaders.items()}
    finally:
        for engine in engines.values():
            engine.dispose()
    report.seconds = time.perf_counter() - started
    return report


def seed_recordings(
    s3: Any, bucket: str, *, customers: int, seed: int, as_of: datetime, key_template: str = DEFAULT_KEY_TEMPLATE
) -> int:
    return upload_recordings(
        s3, bucket, (r for b in generate(seed, customers, as_of) for r in b.recordings), key_template
    )
