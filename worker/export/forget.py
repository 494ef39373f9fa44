"""An erasure deletes its subject's earlier export packages: a package is personal data too.

Found through the store (``subject_ref`` and intake order), never the bucket, so nothing personal is
written into keys or tags. Runs as the erasure's ``_package`` step, once every system confirmed; the
subject's earlier requests are terminal by then (an erasure waits for them). A repeat deletes
nothing."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import sqlalchemy as sa

from worker.core.errors import PermanentError
from worker.store.schema import requests


@runtime_checkable
class PackageForgetter(Protocol):
    def forget(self, request_ids: Iterable[str], object_keys: Iterable[str] = ()) -> int: ...


def earlier_exports(engine: sa.Engine, request_id: str) -> tuple[list[str], list[str]]:
    """Request ids and recorded package keys of the exports of ``request_id``'s subject before it."""
    erasure = requests.alias("erasure")
    query = (
        sa.select(requests.c.request_id, requests.c.export_json)
        .join(erasure, erasure.c.subject_ref == requests.c.subject_ref)
        .where(erasure.c.request_id == request_id, requests.c.seq < erasure.c.seq, requests.c.kind == "export")
        .order_by(requests.c.seq)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    keys = [str(json.loads(row.export_json).get("object_key")) for row in rows if row.export_json]
    return [row.request_id for row in rows], [k for k in keys if k.endswith(".zip")]


def forget_earlier_exports(engine: sa.Engine, exports: object, request_id: str) -> int:
    """Deletes the earlier export packages of ``request_id``'s subject; returns how many there were."""
    if not isinstance(exports, PackageForgetter):
        raise PermanentError("exports are not configured on this worker", code="not_configured")
    request_ids, object_keys = earlier_exports(engine, request_id)
    if not request_ids:
        return 0
    return exports.forget(request_ids, object_keys)
