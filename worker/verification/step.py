"""The ``_verify`` step of an erasure: runs once every system confirmed, before ``completed``.

Each confirmed internal system whose connector is a ``Verifier`` re-checks the subject. Residue in a
system reopens that system as ``failed`` (``verification_failed``, tables and counts, no values) and
fails this step too, so the request turns ``action_required``; ``oubli retry`` runs both again.
When every check is clean, each is audited with its counts and, if the erasure covered every
configured system and a tombstone key is set, the subject's tombstones are laid. Vendors are not
checked (they stay ``requested``), nor systems a person confirmed by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from worker import states
from worker.core.connector import Connector, Residue, Subject, Verifier
from worker.core.identifiers import keyed_hash
from worker.receipts import is_internal
from worker.store.records import ClaimedTask, TaskUpdate
from worker.store.verification import VERIFICATION_FAILED, VerificationStore

log = structlog.get_logger("oubli.verification")

# Outcomes a connector reported itself: those are what a check can contradict.
CHECKED_OUTCOMES = frozenset({"erased", "anonymized", "not_found", "retained"})


def tombstone_hashes(key: bytes, subject: Subject) -> set[tuple[str, str]]:
    """(kind, keyed hash) of each identifier: customer id, emails, phones and vendor ids."""
    values = [("customer_id", subject.customer_id), *(("email", e) for e in subject.emails),
              *(("phone", p) for p in subject.phones),
              *((kind, v) for kind, ids in subject.identifiers.items() for v in ids)]
    return {(kind, keyed_hash(key, kind, value)) for kind, value in values if value and value.strip()}


def summary(residues: Sequence[Residue]) -> str:
    """``customers 0, orders 1``: tables and counts, never a value."""
    return ", ".join(f"{r.table} {r.count}" for r in residues) or "nothing to check"


class VerificationStep:
    def __init__(self, store: VerificationStore, connectors: Mapping[str, Connector], *, clock: Callable[[], datetime],
                 tombstone_key: bytes | None = None, tombstone_days: int = 1095) -> None:
        self.store = store
        self.connectors = dict(connectors)
        self.clock = clock
        self.tombstone_key = tombstone_key
        self.tombstone_days = tombstone_days

    def run(self, task: ClaimedTask) -> tuple[states.Event, TaskUpdate]:
        """Called from a worker thread; blocks on each system's check. Raises what a connector raises."""
        rows = self.store.task_rows(task.request_id)
        clean: dict[str, str] = {}
        dirty: dict[str, str] = {}
        for row in rows:
            connector = self.connectors.get(row["system"])
            if (is_internal(row["system"]) or row["state"] != states.SystemState.CONFIRMED
                    or row["outcome"] not in CHECKED_OUTCOMES or not isinstance(connector, Verifier)):
                continue
            residues = list(connector.verify(task.subject))
            left = [r for r in residues if r.count]
            if left:
                dirty[row["system"]] = summary(left)
            else:
                clean[row["system"]] = summary(residues)
        now = self.clock()
        if dirty:
            self.store.reopen(task.request_id, dirty, now)
            log.warning("verification_failed", request_id=task.request_id, systems=sorted(dirty))
            return (states.Fail(VERIFICATION_FAILED, f"data left after the erasure in {', '.join(sorted(dirty))}",
                                retryable=False), TaskUpdate())
        hashes = self._hashes(task.subject, rows)
        if hashes:
            self.store.lay_tombstones(task.request_id, hashes, now=now, subject_ref=task.subject.subject_ref,
                                      expires_at=now + timedelta(days=self.tombstone_days))
        log.info("verified", request_id=task.request_id, systems=sorted(clean), tombstones=len(hashes))
        return states.Confirm("verified"), TaskUpdate(records=len(clean), verified=clean)

    def _hashes(self, subject: Subject, rows: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
        """Only for an erasure of every configured system: a narrower one (the sweeper's contact-form
        expiry, say) does not mean the subject must stay gone everywhere."""
        if self.tombstone_key is None:
            return set()
        targeted = {row["system"] for row in rows if not is_internal(row["system"])}
        if not set(self.connectors) <= targeted:
            return set()
        return tombstone_hashes(self.tombstone_key, subject)
