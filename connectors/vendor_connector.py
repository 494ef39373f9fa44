"""The shared shape of vendor connectors: one rate-limit gate, one HTTP client, and a per-target job
that survives our own throttling by resuming from a progress marker in ``vendor_ref``."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

import httpx

from connectors.http import VendorHttp, parse_retry_after
from connectors.ratelimit import Gate
from connectors.vendor import Progress
from worker.core.connector import CallResult, ConnectorContext, ExportWriter, Pending, Result, Subject
from worker.core.errors import PermanentError, QuotaDeferred, Throttled

T = TypeVar("T")


class VendorConnector(abc.ABC):
    """Base of the vendor connectors: one gate, one HTTP client, and the defaults of the contract.

    ``call`` passes the gate first (raising ``Throttled``/``QuotaDeferred`` without any I/O), then
    sends.
    """

    system: str

    def __init__(self, system: str, context: ConnectorContext, http: VendorHttp, gate: Gate) -> None:
        self.system = system
        self.context = context
        self.http = http
        self.gate = gate

    def call(self, method: str, path: str, *, op: str, **kwargs: Any) -> httpx.Response:
        self.gate.admit()
        response = self.http.send(method, path, op=op, **kwargs)
        if response.status_code == 429:
            # Every caller of this vendor in the fleet waits, not just this one: the hold is in the store.
            wait = parse_retry_after(response.headers, self.context.now())
            self.gate.hold(wait if wait is not None else 1.0)
        return response

    @abc.abstractmethod
    def erase(self, subject: Subject) -> CallResult: ...

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        return Result("not_supported", detail=f"{self.system}: the vendor API offers no export")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        raise PermanentError(f"{self.system}: no async job of this connector matches the reference",
                             code="unknown_vendor_ref")

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:  # never the settings: they hold credentials
        return f"{type(self).__name__}(system={self.system!r})"


class PerTargetConnector(VendorConnector, Generic[T]):
    """A connector whose job is one vendor call per target (an id, an address), resumable through ``Progress``.

    A subclass supplies ``no_targets`` (the ``not_found`` detail when a subject has no target),
    ``_targets`` (in a stable order, so that a resumed run walks the same list), ``_step`` (the
    call for one target, returning a short answer) and ``_finished`` (the result once every target
    is done). When our own limiter cuts a run short after some progress, the run returns a
    ``Pending`` whose ``vendor_ref`` lets ``poll`` resume from there. ``job`` names what a run does:
    ``erase`` and ``poll`` run ``"erase"``; a vendor with more jobs starts and resumes them itself.
    """

    no_targets: ClassVar[str]

    @abc.abstractmethod
    def _targets(self, subject: Subject) -> Sequence[T]: ...

    @abc.abstractmethod
    def _step(self, job: str, target: T) -> str: ...

    @abc.abstractmethod
    def _finished(self, job: str, targets: Sequence[T], note: str, answers: Sequence[str]) -> Result:
        """``answers`` are those of the calls this run made, not of the runs it resumes."""

    def _combine(self, note: str, answer: str) -> str:
        """Folds an answer into the note that a resumed run starts from; by default nothing is kept."""
        return ""

    def erase(self, subject: Subject) -> CallResult:
        return self._start(subject, "erase")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        return self._resume(subject, "erase", vendor_ref)

    def _start(self, subject: Subject, job: str) -> CallResult:
        targets = self._targets(subject)
        if not targets:
            return Result("not_found", detail=self.no_targets)
        return self._run(job, targets, Progress(0, len(targets)))

    def _resume(self, subject: Subject, job: str, vendor_ref: str) -> CallResult:
        targets = self._targets(subject)
        progress = Progress.parse(vendor_ref, len(targets))
        if progress is None or not targets:
            return super().poll(subject, vendor_ref)
        return self._run(job, targets, progress)

    def _run(self, job: str, targets: Sequence[T], progress: Progress) -> CallResult:
        note = progress.note
        answers: list[str] = []
        for index in range(progress.done, len(targets)):
            try:
                answers.append(self._step(job, targets[index]))
            except (Throttled, QuotaDeferred) as exc:
                if index == progress.done:
                    raise
                return Pending(Progress(index, len(targets), note).ref(), poll_after=exc.retry_after or 1.0)
            note = self._combine(note, answers[-1])
        return self._finished(job, targets, note, answers)
