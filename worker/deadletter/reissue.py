"""Reissuing a dead-lettered command under a new request_id, for ``oubli dlq replay``.

``Reissuer.plan`` decides per record, from the store's ``requests`` table (read-only): send it
byte-identical, or (a rejected id and a configuration fault, or a code named by ``--code``) carry it
out as a new request, re-signed, with ``x-oubli-replay-of: <old id>``. The new id is
``uuid5(old id, keyed body digest)``, so repeats deduplicate. The rule in full: docs/architecture.md."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from worker import messages
from worker.deadletter.topic import REPLAY_OF, DeadLetter, DlqError, Headers
from worker.store import db
from worker.store.faults import is_outage
from worker.store.schema import requests

CONFLICT = "conflicting_duplicate"
# The worker's configuration was at fault, not the command: once fixed, the same body is accepted.
FIXABLE = frozenset({"unknown_system", "bad_signature", "export_not_configured", "no_systems"})
NAMED_ONLY = frozenset({CONFLICT})  # replayed only by a run that names the code with --code
_NAMESPACE = uuid.UUID("6f0b1e4c-5a1d-5b0e-9c3a-0dd1e7b1a5c0")  # fixed forever: ids must be reproducible
_LOOKUP_CHUNK = 500


def new_request_id(request_id: str, digest: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{request_id}\n{digest}"))


@dataclass(frozen=True)
class Known:
    status: str
    digest: str | None  # None: rejected at intake, no body recorded


Lookup = Callable[[Collection[str]], Mapping[str, Known]]


@dataclass(frozen=True)
class Outgoing:
    """What a replay sends for one dead letter (the key is the letter's)."""

    value: bytes | None
    headers: Headers
    kept: bool = False  # the store knows the request_id, and it is sent unchanged
    replay_of: str | None = None  # reissued: the record's request_id ...
    request_id: str | None = None  # ... and the new one


def unchanged(letters: Sequence[DeadLetter], topic: str, by: str) -> list[Outgoing]:
    return [Outgoing(letter.value, letter.replay_headers(topic, by)) for letter in letters]


class Reissuer:
    def __init__(self, lookup: Lookup, *, subject_key: bytes, signing_secret: bytes | None,
                 named: frozenset[str]) -> None:
        self.lookup = lookup
        self.subject_key = subject_key
        self.signing_secret = signing_secret
        self.named = named  # the codes given with --code

    def plan(self, letters: Sequence[DeadLetter], topic: str, by: str) -> list[Outgoing]:
        """What to send for each letter, in order; one store read for the lot."""
        documents = [_document(letter.value) for letter in letters]
        ids = {i for i in map(messages.peek_request_id, documents) if i is not None}
        known = self.lookup(ids) if ids else {}
        return [self._one(letter, document, known, topic, by) for letter, document in zip(letters, documents,
                                                                                           strict=True)]

    def _one(self, letter: DeadLetter, document: dict[str, Any] | None, known: Mapping[str, Known], topic: str,
             by: str) -> Outgoing:
        headers = letter.replay_headers(topic, by)
        request_id = messages.peek_request_id(document)
        stored = known.get(request_id) if request_id is not None else None
        if document is None or request_id is None or stored is None:
            return Outgoing(letter.value, headers)
        if not self._may_reissue(letter.code, stored, messages.body_digests(self.subject_key, document)) \
                or not self._authentic(letter):
            return Outgoing(letter.value, headers, kept=True)
        # The digest as sent, as before absent and null counted the same: a letter replayed again keeps its new id.
        new_id = new_request_id(request_id, messages.sent_digest(self.subject_key, document))
        value = json.dumps({**document, "request_id": new_id}, ensure_ascii=False, separators=(",", ":")).encode()
        if len(value) > messages.MAX_COMMAND_BYTES:
            return Outgoing(letter.value, headers, kept=True)
        signed: Headers = [(messages.SIGNATURE_HEADER, messages.sign(value, self.signing_secret).encode())
                           ] if self.signing_secret is not None else []
        headers = [(k, v) for k, v in headers if k.lower() != messages.SIGNATURE_HEADER]  # in any case: re-signed
        return Outgoing(value, [*signed, (REPLAY_OF, request_id.encode()), *headers], replay_of=request_id,
                        request_id=new_id)

    def _may_reissue(self, code: str, stored: Known, digests: Collection[str]) -> bool:
        if stored.digest in digests:
            return False  # rule 2: a copy of a recorded command
        if stored.digest is None:
            return code in FIXABLE or code in self.named  # rule 3
        return code == CONFLICT and code in self.named  # rule 4

    def _authentic(self, letter: DeadLetter) -> bool:
        if self.signing_secret is None:
            return True  # the worker checks no signature: the old one is dropped
        signature = messages.header(letter.headers, messages.SIGNATURE_HEADER)
        return letter.value is not None and messages.verify_signature(letter.value, signature, self.signing_secret)


def _document(value: bytes | None) -> dict[str, Any] | None:
    """The value as a JSON object, read leniently: None for anything intake could not read either."""
    if value is None or len(value) > messages.MAX_COMMAND_BYTES:
        return None
    try:
        document = json.loads(value.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return document if isinstance(document, dict) else None


class StoreIndex:
    """Which request ids the store knows, and how: read-only queries on ``requests``, engine made on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: sa.Engine | None = None

    def lookup(self, ids: Collection[str]) -> dict[str, Known]:
        found: dict[str, Known] = {}
        ordered = sorted(ids)
        try:
            with self._connect().connect() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SET TRANSACTION READ ONLY"))
                for start in range(0, len(ordered), _LOOKUP_CHUNK):
                    rows = conn.execute(sa.select(requests.c.request_id, requests.c.status, requests.c.body_digest)
                                        .where(requests.c.request_id.in_(ordered[start:start + _LOOKUP_CHUNK])))
                    found.update({row.request_id: Known(row.status, row.body_digest) for row in rows})
                conn.rollback()
        except sa.exc.SQLAlchemyError as exc:
            if is_outage(exc):
                raise  # the store is down, not misnamed: the CLI's exit 4 (worker.support.cli_error)
            reason = type(getattr(exc, "orig", None) or exc).__name__
            raise DlqError(f"cannot read requests from the store {self._shown()} ({reason}): is store_url the "
                           "worker's, and migrated?") from None
        return found

    def _connect(self) -> sa.Engine:
        if self._engine is None:
            url = sa.engine.make_url(self.url)
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
                    and not Path(url.database or "").exists():
                raise DlqError(f"the store {self._shown()} does not exist: is store_url the worker's?")
            self._engine = db.create_engine(self.url, pool_size=1)
        return self._engine

    def _shown(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
