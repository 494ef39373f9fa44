"""An erasure deletes its subject's earlier export packages: a package is personal data too.

The packages are found through the store, not the bucket, so that nothing personal has to be
written into object keys or tags: the store knows each request's ``subject_ref`` (a keyed hash)
and the order requests of one subject arrived in (``seq``). Every export of the subject recorded
before the erasure is forgotten: its package (every version), the package's record and any staged
files left by an export that never finished. An export recorded after the erasure is not touched.

Runs as the erasure's ``_package`` step (``worker.receipts.PACKAGE_TASK``), which the store starts
only once every system of the erasure has confirmed. The subject's earlier requests are terminal
by then (an erasure waits for them, SPEC invariant 7), so no package can appear behind it. A repeat
finds nothing left and deletes nothing.
"""

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
