"""The connector contract: ``Subject`` in, a typed result (``Result``, ``Pending``) or an error of
``worker.core.errors`` out; never Kafka, offsets or the store.

Every method may block (with its own timeouts), is idempotent (a repeat confirms ``not_found`` or
``requested``), raises only ``RetryableError``, ``PermanentError`` or ``NeedsPersonError``, and puts
no personal data in messages, ``detail`` or ``vendor_ref``. ``create(system_id, settings, context)``
builds a connector; ``close`` releases its pools."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, BinaryIO, Literal, Protocol, get_args, runtime_checkable

from worker.core.errors import ConnectorError
from worker.core.limits import Limits

OutcomeName = Literal[
    "erased", "anonymized", "not_found", "retained", "requested", "exported", "not_supported",
]
OUTCOMES: frozenset[str] = frozenset(get_args(OutcomeName))  # what the executor lets a connector's call confirm


@dataclass(frozen=True)
class Subject:
    """Whom a request is about. Holds personal data: never log it, never put it in an error."""

    request_id: str
    subject_ref: str
    customer_id: str
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    identifiers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # How the request is scheduled, and what the sender knows of the subject's activity: the gate
    # spends a background call from the reserve-limited share of a quota (``worker.core.limits``).
    priority: str = "standard"
    last_activity_at: datetime | None = None

    def ids(self, kind: str) -> tuple[str, ...]:
        return self.identifiers.get(kind, ())

    def __repr__(self) -> str:  # keeps personal data out of tracebacks and debug output
        return f"Subject(request_id={self.request_id!r}, subject_ref={self.subject_ref!r})"


@dataclass(frozen=True)
class Retained:
    """Data kept under a legal exception, reported in the receipt with its basis and end date."""

    category: str
    legal_basis: str
    until: date


@dataclass(frozen=True)
class Result:
    """A confirmation. ``records`` counts what an export wrote; ``detail`` is a PII-free reason."""

    outcome: OutcomeName
    retained: tuple[Retained, ...] = ()
    vendor_ref: str | None = None
    expected_by: datetime | None = None
    records: int = 0
    detail: str | None = None


@dataclass(frozen=True)
class Pending:
    """An async vendor job was accepted; poll it with ``vendor_ref`` after ``poll_after`` seconds."""

    vendor_ref: str
    poll_after: float = 30.0


CallResult = Result | Pending


class ExportWriter(Protocol):
    """Where a connector puts what it exports for one request. Each name is a file in the package.

    Files are staged as they are written, so a connector can stream large objects without holding
    them in memory.
    """

    def write_json(self, name: str, data: Any) -> None: ...

    def write_rows(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """A flat table: written as ``name.json`` and ``name.csv``."""
        ...

    def write_stream(self, name: str, stream: BinaryIO, *, content_type: str = "application/octet-stream") -> None: ...


class IdentityLookup(Protocol):
    """Finds a subject's identifiers that a command did not carry, for example stored GA client ids."""

    def identifiers(self, subject: Subject, kind: str) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class ConnectorContext:
    """What the orchestrator lends every connector. ``now`` is injectable so tests control time.

    ``limits`` is where named rate limits live (see ``worker.core.limits``): the worker lends the
    store-backed ones, shared by every worker; ``None`` means this process's registry.
    """

    now: Callable[[], datetime]
    identity: IdentityLookup | None = None
    limits: Limits | None = None


@runtime_checkable
class Connector(Protocol):
    system: str

    def erase(self, subject: Subject) -> CallResult: ...

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult: ...

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult: ...

    def close(self) -> None: ...


class ConnectorFactory(Protocol):
    def __call__(self, system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> Connector: ...


@dataclass(frozen=True)
class Residue:
    """What a verification found in one table (or object store location): ``count`` rows or objects
    that still hold the subject's personal data (0 when clean). Never a value."""

    table: str
    count: int


@runtime_checkable
class Verifier(Protocol):
    """Optional: a connector that can check its own erasure, once every system of the request confirmed.

    ``verify`` re-runs the system's match for the subject and returns one ``Residue`` per table it
    checked. Data kept under a declared legal exception (``retained``) is not residue. Same rules as
    ``erase``: may block, times out by itself, raises only the errors of ``worker.core.errors``.
    """

    def verify(self, subject: Subject) -> Sequence[Residue]: ...


@runtime_checkable
class BatchVerifier(Verifier, Protocol):
    """Optional, on top of ``Verifier``: checks many subjects in one go, where the system can share the cost of a
    check among them (one connection, one reflection). The ``_verify`` step checks a batch of requests at once.

    ``verify_many`` returns, for each subject in order, what ``verify`` would: its residues, or the
    ``ConnectorError`` that subject's check raised (an ambiguous match, say), so one subject cannot fail the
    others. An error that stops every check (the database is down) is raised.
    """

    def verify_many(self, subjects: Sequence[Subject]) -> Sequence[Sequence[Residue] | ConnectorError]: ...


@dataclass(frozen=True)
class Sighting:
    """One row (or object) of a system, for the resurrection scan: its table and the identifiers it
    holds, as ``(kind, value)`` pairs (``customer_id``, ``email``, ``phone``). Personal data: never log it."""

    table: str
    identifiers: tuple[tuple[str, str], ...]

    def __repr__(self) -> str:
        return f"Sighting(table={self.table!r}, kinds={[kind for kind, _ in self.identifiers]!r})"


@runtime_checkable
class IdentifierSource(Protocol):
    """Optional: a connector whose system the resurrection scan can read, a row at a time.

    ``sightings`` streams every row that could name a subject (tables whose erasure deletes or
    anonymises; never rows kept under a retention rule), so memory stays flat whatever the size.
    It may block; it raises only the errors of ``worker.core.errors``.
    """

    def sightings(self) -> Iterator[Sighting]: ...
