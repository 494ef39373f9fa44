"""The ``_verify`` step of an erasure: runs once every system confirmed, before ``completed``.

Each confirmed internal system whose connector is a ``Verifier`` re-checks the subject. Residue in a
system reopens that system as ``failed`` (``verification_failed``, tables and counts, no values) and
fails this step too, so the request turns ``action_required``; ``oubli retry`` runs both again.
When every check is clean, each is audited with its counts and, if the erasure covered every
configured system and a tombstone key is set, the subject's tombstones are laid. Vendors are not
checked (they stay ``requested``), nor systems a person confirmed by hand.

The executor hands the step a batch of requests at once (``run_many``): under a burst, one store read and one
call per system check them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from worker import states
from worker.core.connector import BatchVerifier, Connector, Residue, Subject, Verifier
from worker.core.errors import ConnectorError
from worker.core.identifiers import keyed_hash
from worker.receipts import is_internal
from worker.store.records import ClaimedTask, TaskUpdate
from worker.store.verification import VERIFICATION_FAILED, Burial, VerificationStore

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


Checked = Sequence[Residue] | ConnectorError  # one system's check of one subject


class VerificationStep:
    def __init__(self, store: VerificationStore, connectors: Mapping[str, Connector], *, clock: Callable[[], datetime],
                 tombstone_key: bytes | None = None, tombstone_days: int = 1095) -> None:
        self.store = store
        self.connectors = dict(connectors)
        self.clock = clock
        self.tombstone_key = tombstone_key
        self.tombstone_days = tombstone_days

    def run_many(self, tasks: Sequence[ClaimedTask]) -> list[tuple[states.Event, TaskUpdate] | ConnectorError]:
        """The step of each task, in order: its outcome, or the error one of its checks raised. Called from a worker
        thread; blocks. One read of the store for every task's systems, one call per system for every subject it
        checks (``BatchVerifier``), one transaction for every clean erasure's tombstones. Raises what stops every
        check: the store or a system that cannot be reached."""
        rows = self.store.task_rows([task.request_id for task in tasks])
        wanted: dict[str, list[int]] = {}  # system -> the tasks whose request it confirmed and can check
        for index, task in enumerate(tasks):
            for row in rows.get(task.request_id, ()):
                if self._checks(row):
                    wanted.setdefault(row["system"], []).append(index)
        checked: list[dict[str, Checked]] = [{} for _ in tasks]
        for system, indexes in sorted(wanted.items()):
            found = _verify_all(self.connectors[system], [tasks[i].subject for i in indexes])
            for index, result in zip(indexes, found, strict=True):
                checked[index][system] = result
        now = self.clock()
        outcomes: list[tuple[states.Event, TaskUpdate] | ConnectorError] = []
        burials: list[Burial] = []
        dirty_requests: list[tuple[str, dict[str, str]]] = []
        for task, checks in zip(tasks, checked, strict=True):
            error = next((c for _, c in sorted(checks.items()) if isinstance(c, ConnectorError)), None)
            residues = {system: c for system, c in checks.items() if not isinstance(c, ConnectorError)}
            dirty = {system: summary(left) for system, found in residues.items()
                     if (left := [r for r in found if r.count])}
            if error is not None:
                outcomes.append(error)
            elif dirty:
                dirty_requests.append((task.request_id, dirty))
                outcomes.append((states.Fail(VERIFICATION_FAILED, f"data left after the erasure in "
                                             f"{', '.join(sorted(dirty))}", retryable=False), TaskUpdate()))
            else:
                clean = {system: summary(found) for system, found in sorted(residues.items())}
                hashes = self._hashes(task.subject, rows.get(task.request_id, ()))
                burials.append(Burial(task.request_id, task.subject.subject_ref, hashes))
                # Routine, and in the audit trail (a ``verified`` event per system): a line each only at debug.
                log.debug("verified", request_id=task.request_id, systems=sorted(clean), tombstones=len(hashes))
                outcomes.append((states.Confirm("verified"), TaskUpdate(records=len(clean), verified=clean)))
        # Tombstones first: if the store fails here, no system was reopened yet and the whole batch is retried.
        self.store.lay_tombstones(burials, now=now, expires_at=now + timedelta(days=self.tombstone_days))
        for request_id, dirty in dirty_requests:
            self.store.reopen(request_id, dirty, now)
            log.warning("verification_failed", request_id=request_id, systems=sorted(dirty))
        return outcomes

    def _checks(self, row: Mapping[str, Any]) -> bool:
        """A system this step checks: one that confirmed by itself and whose connector can check."""
        return (not is_internal(row["system"]) and row["state"] == states.SystemState.CONFIRMED
                and row["outcome"] in CHECKED_OUTCOMES and isinstance(self.connectors.get(row["system"]), Verifier))

    def _hashes(self, subject: Subject, rows: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
        """Only for an erasure of every configured system: a narrower one (the sweeper's contact-form
        expiry, say) does not mean the subject must stay gone everywhere."""
        if self.tombstone_key is None:
            return set()
        targeted = {row["system"] for row in rows if not is_internal(row["system"])}
        if not set(self.connectors) <= targeted:
            return set()
        return tombstone_hashes(self.tombstone_key, subject)


def _verify_all(connector: Connector, subjects: Sequence[Subject]) -> Sequence[Checked]:
    """``BatchVerifier.verify_many``, or ``verify`` for each subject with its connector error caught."""
    if isinstance(connector, BatchVerifier):
        return connector.verify_many(subjects)
    assert isinstance(connector, Verifier)  # noqa: S101 - _checks let only verifiers through
    found: list[Checked] = []
    for subject in subjects:
        try:
            found.append(list(connector.verify(subject)))
        except ConnectorError as exc:
            found.append(exc)
    return found
