"""Task claims: which due tasks a worker may start, within every system's limit across all workers.

A claim is a version compare-and-set plus a lease, so two workers never run one task; on PostgreSQL a
system's claims queue on an advisory lock, so the running-task count is exact. Recovery in seconds:
leases are short and renewed, expired ones are offered first, and a restarted worker (same
``worker_id``) reclaims its own at once (``reclaim_own_leases``)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from worker import receipts, states
from worker.core.connector import Subject
from worker.states import RequestStatus, SystemState
from worker.store import order, turns
from worker.store.base import StoreBase, dicts
from worker.store.records import OPEN_STATUSES, ClaimedTask, StoreConflict, TaskUpdate, subject_of, task_state
from worker.store.schema import CLAIMABLE_PREDICATE, RUNNING_PREDICATE, audit_events, requests, tasks
from worker.store.sets import among_bound, pairs_among

CLAIMABLE_VALUES = sorted(s.value for s in states.CLAIMABLE)  # also the predicate of ix_tasks_claim
CLAIM_COLUMNS = ("state", "attempts", "next_attempt_at", "lease_losses", "lease_owner", "lease_expires_at", "version")


def claim_order() -> list[sa.ColumnElement[Any]]:
    """Waiting tasks of one system: standard before background, earliest deadline, then intake order.

    ``tasks.background`` and ``tasks.due_at`` copy the request's priority and deadline at intake, so
    that ``ix_tasks_claim`` (system, background, due_at, request_seq) serves this order directly.
    """
    return [tasks.c.background, tasks.c.due_at.asc().nulls_last(), tasks.c.request_seq]


def _gates(system: str | None = None) -> list[sa.ColumnElement[bool]]:
    """A task waits for an earlier open request of its subject, for ``_identity``, and (a final step)
    for every real sibling. With ``system`` known, the gates are written for it alone: plain anti-joins
    that probe the primary key, where the general form makes PostgreSQL scan every task."""
    earlier = requests.alias("earlier")
    earlier_open = sa.select(sa.literal(1)).select_from(earlier).where(
        earlier.c.subject_ref == requests.c.subject_ref, earlier.c.seq < requests.c.seq,
        earlier.c.status.in_(OPEN_STATUSES),
    )
    sibling = tasks.alias("sibling")
    unconfirmed_sibling = sa.select(sa.literal(1)).select_from(sibling).where(
        sibling.c.request_id == tasks.c.request_id, sibling.c.system.not_in(list(receipts.FINAL_TASKS)),
        sibling.c.state != SystemState.CONFIRMED,
    )
    unresolved_identity = sa.select(sa.literal(1)).select_from(sibling).where(
        sibling.c.request_id == tasks.c.request_id, sibling.c.system == receipts.IDENTITY_TASK,
        sibling.c.state != SystemState.CONFIRMED,
    )
    if system is None:
        return [~sa.exists(earlier_open),
                sa.or_(tasks.c.system.not_in(list(receipts.FINAL_TASKS)), ~sa.exists(unconfirmed_sibling)),
                sa.or_(tasks.c.system == receipts.IDENTITY_TASK, ~sa.exists(unresolved_identity))]
    gates = [~sa.exists(earlier_open)]
    if system in receipts.FINAL_TASKS:
        gates.append(~sa.exists(unconfirmed_sibling))
    if system != receipts.IDENTITY_TASK:
        gates.append(~sa.exists(unresolved_identity))
    return gates


# The claim's statements are built once (per set of systems) with bound parameters: building one of
# them, with its aliases and the union of a select per system, cost more CPU than running it.
@functools.cache
def _running_statement() -> sa.Select[Any]:
    """Per system, across all workers: calls in flight (running tasks whose lease has not run out), and
    running tasks whose lease has (their worker died: they are claimed again first)."""
    expired = tasks.c.lease_expires_at < sa.bindparam("now")
    return (sa.select(tasks.c.system, sa.func.count().filter(sa.not_(expired)).label("n"),
                      sa.func.count().filter(expired).label("expired"))
            .where(tasks.c.state == SystemState.RUNNING)
            .group_by(tasks.c.system))


# The same on PostgreSQL, an index range per system. The single scan above is a bitmap scan there, which
# visits every entry a finished task left in ``ix_tasks_running`` until vacuum: 30,000 heap tuples and 1.8 ms
# a claim after a burst, where an index-only scan per system marks those entries dead as it passes them, so
# the next claim skips them (0.1 ms).
RUNNING_PG = sa.text(f"""
SELECT w.system, r.n, r.expired
FROM unnest(CAST(:systems AS text[])) AS w(system)
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE tasks.lease_expires_at >= :now) AS n,
           count(*) FILTER (WHERE tasks.lease_expires_at < :now) AS expired
    FROM tasks WHERE tasks.system = w.system AND tasks.{RUNNING_PREDICATE}
) AS r
""")  # noqa: S608 - a constant; every value is a bound parameter


@functools.cache
def _expired_statement() -> sa.Select[Any]:
    return (sa.select(tasks.c.request_id, tasks.c.system)
            .join(requests, requests.c.request_id == tasks.c.request_id)
            .where(tasks.c.state == SystemState.RUNNING, tasks.c.lease_expires_at < sa.bindparam("now"),
                   tasks.c.system.in_(sa.bindparam("systems", expanding=True)), *_gates())
            .order_by(tasks.c.lease_expires_at, tasks.c.request_seq))


@functools.lru_cache(maxsize=256)
def _waiting_statement(systems: tuple[str, ...]) -> sa.Select[Any]:
    """SQLite's form (PostgreSQL's: ``WAITING_PG``). Per system (limit ``n<i>``, the i-th of ``systems``)
    its first waiting tasks in claim order; all of them merged in that order. Parameters: ``now`` and
    ``n0`` .. ``n<k>``."""
    waiting = [
        sa.select(tasks.c.request_id, tasks.c.system, tasks.c.background, tasks.c.due_at, tasks.c.request_seq)
        .join(requests, requests.c.request_id == tasks.c.request_id)
        .where(tasks.c.system == system,
               sa.text(f"tasks.{CLAIMABLE_PREDICATE} AND NOT tasks.held AND NOT tasks.blocked"),
               tasks.c.next_attempt_at <= sa.bindparam("now"), *_gates(system))
        .order_by(*claim_order()).limit(sa.bindparam(f"n{i}", type_=sa.Integer))
        for i, system in enumerate(systems)
    ]
    if len(waiting) == 1:
        return waiting[0]
    union = sa.union_all(*(w.subquery().select() for w in waiting)).subquery()
    return sa.select(union.c.request_id, union.c.system).order_by(
        union.c.background, union.c.due_at.asc().nulls_last(), union.c.request_seq)


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))  # our own constants, never input


# The same on PostgreSQL as one statement whatever the number of systems, which also locks what it finds: a
# lateral index range per system (``ix_tasks_claim``, whose predicate this repeats) under FOR UPDATE ... SKIP
# LOCKED of the task and its request, the queue's classic form. Rows another transaction holds are passed over
# inside each range, so they never use up a system's share; the locked rows are re-read at their latest version and
# the task's conditions checked again. Finding and then locking the candidates by key cost two statements, two index
# probes per task and the arrays of every candidate's key sent back (4.5 of 15.5 s of PostgreSQL per 10,000
# requests). Planning the union of ``_waiting_statement`` took 9 ms a claim, fifty times its run; this is planned
# once for all. The gates of ``_gates`` are written for ``w.system``: for an ordinary system the first operand of
# each OR holds, so its sibling probe is never run. ``OFFSET 0`` keeps each probe a per-candidate lookup by primary
# key: without it the planner may answer an EXISTS under an OR with a hashed subplan instead, which read every task
# of the store on each claim (50 ms of an 84 ms claim at 200,000 tasks).
WAITING_PG = sa.text(f"""
SELECT c.*
FROM unnest(CAST(:systems AS text[]), CAST(:limits AS integer[])) AS w(system, n)
CROSS JOIN LATERAL (
    SELECT tasks.*, requests.kind, requests.subject_json, requests.status AS request_status
    FROM tasks JOIN requests ON requests.request_id = tasks.request_id
    WHERE tasks.system = w.system AND tasks.{CLAIMABLE_PREDICATE} AND NOT tasks.held AND NOT tasks.blocked
      AND tasks.next_attempt_at <= :now
      AND NOT EXISTS (SELECT 1 FROM requests AS earlier WHERE earlier.subject_ref = requests.subject_ref
                      AND earlier.seq < requests.seq AND earlier.status IN ({_sql_list(OPEN_STATUSES)}))
      AND (w.system NOT IN ({_sql_list(receipts.FINAL_TASKS)})
           OR NOT EXISTS (SELECT 1 FROM tasks AS sibling WHERE sibling.request_id = tasks.request_id
                          AND sibling.system NOT IN ({_sql_list(receipts.FINAL_TASKS)})
                          AND sibling.state <> '{SystemState.CONFIRMED.value}' OFFSET 0))
      AND (w.system = '{receipts.IDENTITY_TASK}'
           OR NOT EXISTS (SELECT 1 FROM tasks AS sibling WHERE sibling.request_id = tasks.request_id
                          AND sibling.system = '{receipts.IDENTITY_TASK}'
                          AND sibling.state <> '{SystemState.CONFIRMED.value}' OFFSET 0))
    ORDER BY tasks.background, tasks.due_at ASC NULLS LAST, tasks.request_seq
    LIMIT w.n
    FOR UPDATE OF tasks, requests SKIP LOCKED
) AS c
ORDER BY c.background, c.due_at ASC NULLS LAST, c.request_seq
LIMIT :total
""")  # noqa: S608 - constants only; every value is a bound parameter


def _lock_select() -> sa.Select[Any]:
    """The task with its request's kind, subject and status, locked as ``WAITING_PG`` locks them."""
    return (sa.select(tasks, requests.c.kind, requests.c.subject_json, requests.c.status.label("request_status"))
            .join(requests, requests.c.request_id == tasks.c.request_id)
            .with_for_update(of=[tasks, requests], skip_locked=True))


@functools.cache
def _lock_statement() -> sa.Select[Any]:
    """PostgreSQL's lock of the candidates, built once (``sets.pairs_among`` with its arrays bound at execution,
    the due condition with ``now``): building it took as long as running it, every claim."""
    text_array = postgresql.ARRAY(sa.Text)
    zipped = sa.select(sa.func.unnest(sa.bindparam("firsts", type_=text_array)),
                       sa.func.unnest(sa.bindparam("seconds", type_=text_array)))
    return _lock_select().where(tasks.c.request_id == sa.any_(sa.bindparam("leading", type_=text_array)),
                                sa.tuple_(tasks.c.request_id, tasks.c.system).in_(zipped),
                                Claims._due(sa.bindparam("now")))


@functools.cache
def _open_statement(dialect: str) -> sa.Update:
    """Accepted requests a claim opened are in progress now (built once: most claims run it)."""
    return (requests.update().where(among_bound(dialect, requests.c.request_id, "ids"))
            .values(status=RequestStatus.IN_PROGRESS, updated_at=sa.bindparam("now")))


CLAIM_LOCKS_PG = sa.text("SELECT pg_advisory_xact_lock(k) "
                         "FROM (SELECT unnest(CAST(:keys AS bigint[])) AS k ORDER BY 1) AS ordered")


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for a PostgreSQL advisory lock."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Claims(StoreBase):
    def claim_due(self, *, now: datetime, lease_until: datetime, limits: Mapping[str, int],
                  room: int, held: Collection[tuple[str, str]] = ()) -> list[ClaimedTask]:
        """Claims up to ``room`` due tasks in one transaction, keeping each system's running tasks,
        across every worker, within ``limits[system]``.

        The order (``claim_order``): expired leases first (their work was due before anything still
        waiting), then standard before background work, then the earliest deadline (``due_at``), then
        intake order. ``held`` are (request_id, system) pairs whose calls this worker still has in
        flight: never claimed again here, even if their lease ran out while the store was unreachable.
        """
        if room <= 0 or not limits:
            return []
        with self.engine.begin() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                # Every system's claim lock, in one order, in one statement: the running counts below stay
                # exact across workers until this transaction ends, and two workers cannot deadlock.
                keys = sorted({_lock_key(f"claim:{system}") for system in limits})
                conn.execute(CLAIM_LOCKS_PG, {"keys": keys})
            counts = (conn.execute(RUNNING_PG, {"now": now, "systems": sorted(limits)}).all() if postgres
                      else conn.execute(_running_statement(), {"now": now}).all())
            running = {row.system: row.n for row in counts}
            expired = {row.system for row in counts if row.expired}
            wanted = {s: min(room, limit - running.get(s, 0)) for s, limit in limits.items()}
            wanted = {s: n for s, n in wanted.items() if n > 0}
            if not wanted:
                return []
            rows = self._lock_candidates(conn, now, wanted, room, held, expired)
            return self._claim_rows(conn, rows, now, lease_until, wanted, room) if rows else []

    @staticmethod
    def _due(now: datetime | sa.BindParameter[Any]) -> sa.ColumnElement[bool]:
        return sa.or_(
            sa.and_(tasks.c.state.in_(CLAIMABLE_VALUES), tasks.c.next_attempt_at <= now),
            sa.and_(tasks.c.state == SystemState.RUNNING, tasks.c.lease_expires_at < now),
        )

    def _lock_candidates(self, conn: sa.Connection, now: datetime, wanted: Mapping[str, int], room: int,
                         held: Collection[tuple[str, str]], expired: Collection[str]) -> list[dict[str, Any]]:
        """The rows to claim, locked, in claim order: at most ``wanted[system]`` each besides ``held`` (on
        PostgreSQL also ``room`` in all, besides expired leases), which are (request_id, system) pairs this worker
        still has calls in flight for, never claimed again here. Each row is the task's with its request's kind,
        subject and status.

        Expired leases (``expired`` names the systems that have some) come first, from a scan of the running
        tasks (few: at most the fleet's calls in flight). Waiting tasks come, per system, from an index in claim
        order (``ix_tasks_claim``), so a backlog of any size costs a short index range per system, not a sort of
        every due task. FOR UPDATE ... SKIP LOCKED of the task and its request: a request a result is being
        recorded for is left for the next tick instead of waited for, so claims never wait on a row and never
        deadlock. A candidate may have moved on since it was found: the due condition is checked on the locked row.
        """
        systems = tuple(sorted(wanted))
        extra = len(held)
        lapsed = [s for s in systems if s in expired]
        pairs = [(r[0], r[1]) for r in conn.execute(_expired_statement(), {"now": now, "systems": lapsed})
                 ] if lapsed else []
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            waiting = dicts(conn.execute(WAITING_PG, {"now": now, "systems": list(systems), "total": room + extra,
                                                      "limits": [wanted[s] + extra for s in systems]}))
        else:
            limits = {f"n{i}": wanted[system] + extra for i, system in enumerate(systems)}
            pairs += [(r[0], r[1]) for r in conn.execute(_waiting_statement(systems), {"now": now, **limits})]
            waiting = []
        pairs = list(dict.fromkeys(p for p in pairs if p not in held))
        locked = self._lock_pairs(conn, pairs, now) if pairs else []
        order = {pair: i for i, pair in enumerate(pairs)}
        rows = sorted(locked, key=lambda r: order[(r["request_id"], r["system"])])
        return rows + [r for r in waiting if (r["request_id"], r["system"]) not in held]

    @staticmethod
    def _lock_pairs(conn: sa.Connection, pairs: list[tuple[str, str]], now: datetime) -> list[dict[str, Any]]:
        if conn.dialect.name == "postgresql":
            firsts = [request_id for request_id, _ in pairs]
            arrays = {"leading": sorted(set(firsts)), "firsts": firsts, "seconds": [system for _, system in pairs]}
            return dicts(conn.execute(_lock_statement(), {"now": now, **arrays}))
        return dicts(conn.execute(
            _lock_select().where(pairs_among(conn, tasks.c.request_id, tasks.c.system, pairs), Claims._due(now))))

    def _claim_rows(self, conn: sa.Connection, rows: list[dict[str, Any]], now: datetime,
                    lease_until: datetime, wanted: dict[str, int], room: int) -> list[ClaimedTask]:
        """Applies the state machine to each locked row in Python, and writes every claim, audit event and request
        status in a few statements."""
        claimed: list[ClaimedTask] = []
        writes: list[dict[str, Any]] = []
        audits: list[dict[str, Any]] = []
        stuck: list[dict[str, Any]] = []
        subjects: dict[str, Subject] = {}  # read once per request: its ten tasks share one
        for row in rows:
            if len(claimed) >= room or wanted.get(row["system"], 0) <= 0 or row["subject_json"] is None:
                continue
            request_id, system = row["request_id"], row["system"]
            before = task_state(row)
            current = before
            if current.state is SystemState.RUNNING:  # its worker died mid-call
                current = states.transition(current, states.LeaseExpired(), now, self.policy)
                audits.append(self._audit_row(request_id, system, now, "lease_expired", from_state=before.state,
                                              to_state=current.state, attempt=current.attempts,
                                              error_code=current.error_code))
                if current.state not in states.CLAIMABLE:  # it died under this call too often: a person looks
                    stuck.append({**row, "after": current})
                    continue
            after = states.transition(current, states.Claim(), now, self.policy)
            writes.append({"request_id": request_id, "system": system, "_version": row["version"],
                           "state": after.state.value, "attempts": after.attempts, "next_attempt_at": None,
                           "lease_losses": after.lease_losses, "lease_owner": self.actor,
                           "lease_expires_at": lease_until, "version": row["version"] + 1})
            audits.append(self._audit_row(request_id, system, now, "claimed", from_state=current.state,
                                          to_state=after.state, attempt=after.attempts))
            wanted[system] -= 1
            subject = subjects.get(request_id)
            if subject is None:
                subject = subjects[request_id] = subject_of(request_id, row["subject_json"])
            claimed.append(ClaimedTask(
                request_id=request_id, system=system, kind=row["kind"], subject=subject,
                polling=current.state is SystemState.WAITING_VENDOR, vendor_ref=row["vendor_ref"],
                attempt=after.attempts, version=row["version"] + 1,
            ))
        written = self._update_many(conn, tasks, ("request_id", "system"), CLAIM_COLUMNS, writes, guard="version")
        if written != len(writes):  # cannot happen under the row locks; never hand out a task twice
            raise StoreConflict("a claimed task changed under its lock")
        # The request status, derived: a claim makes an accepted request in progress, and only that.
        # Its receipt is coalesced into the next one (a result's): ``accepted`` and the end always go out.
        accepted = {r["request_id"] for r in rows if r["request_status"] == RequestStatus.ACCEPTED}
        opened = sorted({t.request_id for t in claimed} & accepted)
        if opened:
            # By key alone: the rows are locked, so their status is the one read. A status test here let the
            # planner pick the status index on a young store and read every accepted request (1.2 ms a claim).
            conn.execute(_open_statement(conn.dialect.name), {"ids": opened, "now": now})
            audits += [self._audit_row(r, None, now, "status_changed", from_state=RequestStatus.ACCEPTED,
                                       to_state=RequestStatus.IN_PROGRESS) for r in opened]
        self._insert_many(conn, audit_events, audits)
        for row in stuck:
            self._give_up(conn, row, now)
        return claimed

    def _give_up(self, conn: sa.Connection, row: Mapping[str, Any], now: datetime) -> None:
        """A task whose worker died under it too often fails (rare): written the long way, with its receipt."""
        request = self._lock_request(conn, row["request_id"])
        rows = self._task_rows(conn, row["request_id"])
        task = next(r for r in rows if r["system"] == row["system"])
        if task["version"] != row["version"]:
            return
        task.update(self._write_task(conn, row["request_id"], row["system"], row["version"], row["after"],
                                     TaskUpdate()))
        self._refresh_request(conn, request, now, rows=rows, force_receipt=True)

    def renew_leases(self, claimed: Iterable[ClaimedTask], lease_until: datetime) -> int:
        """Extends the leases this worker still holds; returns how many. A lost lease (the version
        moved on) stays lost: that call's result will not be recorded either."""
        rows = [{"request_id": t.request_id, "system": t.system, "_version": t.version, "lease_expires_at": lease_until}
                for t in claimed]
        if not rows:
            return 0
        with self.engine.begin() as conn:
            # One statement for all of them; the owner check rides on the version (only a claim moves both).
            return self._update_many(conn, tasks, ("request_id", "system"), ("lease_expires_at",), rows,
                                     guard="version", owner=self.actor)

    def hand_back(self, claimed: Iterable[ClaimedTask], until: datetime) -> int:
        """At shutdown, once the drain is over: the leases of calls still running end at ``until``, a moment
        after this process is gone, not a whole lease later. Another worker then takes them over in seconds,
        as it does a SIGKILLed worker's (audited ``lease_expired``). The version moves on, as in
        ``reclaim_own_leases``, so nothing of this incarnation can renew or record them any more."""
        rows = [{"request_id": t.request_id, "system": t.system, "_version": t.version, "lease_expires_at": until,
                 "version": t.version + 1} for t in claimed]
        if not rows:
            return 0
        with self.engine.begin() as conn:
            return self._update_many(conn, tasks, ("request_id", "system"), ("lease_expires_at", "version"), rows,
                                     guard="version", owner=self.actor)

    def reclaim_own_leases(self, now: datetime) -> int:
        """Ends, at once, the leases held under this worker's id: they belong to a dead incarnation.

        Call it only at start-up, before this process claims anything, and only while holding the
        worker's identity lock (``worker.store.identity``): that lock proves no other live process
        uses this id, so nothing can still be running these tasks. The version moves on too, so even
        a process that lost its identity lock could no longer record or renew them. The tasks are
        then claimed again like any expired lease (audited ``lease_expired``), ahead of the backlog.
        """
        with self.engine.begin() as conn:
            return conn.execute(tasks.update().where(
                tasks.c.state == SystemState.RUNNING, tasks.c.lease_owner == self.actor,
            ).values(lease_expires_at=now - timedelta(seconds=1), version=tasks.c.version + 1)).rowcount

    def release_missed_turns(self) -> int:
        """Releases held tasks whose request's turn has come (``worker.store.turns``); returns how many."""
        with self.engine.begin() as conn:
            return turns.release_missed_turns(conn)

    def unblock_missed(self) -> int:
        """Releases blocked tasks whose siblings have all confirmed (``worker.store.order``); returns how many."""
        with self.engine.begin() as conn:
            return order.unblock_missed(conn)
