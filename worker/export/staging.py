"""Stages what a connector exports as S3 objects, one per file, before the package is built.

A staged file lives at ``{prefix}staging/{request_id}/{system}/{name}`` (the id as ``request_key`` gives
it) with server-side encryption. Writing the same name again replaces it, so a retried export converges on the same
staging area. Once the connector returns, ``seal`` writes the list of what it staged (names, sizes,
sha256) to ``{prefix}staging/{request_id}/{system}.json``: the packager checks the files against it, so
that files lost meanwhile are noticed rather than left out of the package. Nothing is held whole in
memory: rows are spooled to a temporary file (in memory up to a few MiB) and streams are copied part
by part.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import IO, Any, BinaryIO
from uuid import UUID

from worker.core.csvcells import spreadsheet_safe
from worker.core.errors import PermanentError
from worker.export.multipart import MultipartSink
from worker.export.settings import ExportSettings

CHUNK = 1 << 20
SPOOL_BYTES = 4 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}(/[A-Za-z0-9][A-Za-z0-9._-]{0,119}){0,3}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_SYSTEM = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def request_key(request_id: str) -> str:
    """The request id as it goes into an object key: itself when it is plain (what oubli and most senders
    make), else ``_`` and the sha256 of it.

    command.v1 lets an id hold any printable character but whitespace, and a ``/``, ``?``, ``%`` or a
    non-ASCII letter in a key would address another folder or break the presigned URL. Refusing such an id
    here failed every system of an export that intake had accepted, for good. A plain id starts with a
    letter or a digit, so no id a sender picks can take another id's digest form (and its staging area)."""
    if _REQUEST_ID.match(request_id):
        return request_id
    return "_" + hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()


def check_system(system: str) -> str:
    if not _SYSTEM.match(system):
        raise PermanentError("export: system id cannot form an object key", code="export_bad_name")
    return system


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise PermanentError(
            "export: file name not allowed (letters, digits, . _ - and at most 3 folders)",
            code="export_bad_name",
        )
    return name


def json_default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot export a {type(value).__name__} as JSON")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # The subject opens the CSV in a spreadsheet; name.json beside it keeps the value exactly as held.
        return spreadsheet_safe(value)
    if isinstance(value, int | float | Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return json.dumps(value, default=json_default, ensure_ascii=False)


class StagingWriter:
    """``worker.core.connector.ExportWriter`` for one request and one system."""

    def __init__(self, client: Any, settings: ExportSettings, request_id: str, system: str) -> None:
        self._client = client
        self._settings = settings
        self.base = f"{settings.prefix}staging/{request_key(request_id)}/{check_system(system)}/"
        self.record_key = record_key(self.base)
        self.written: dict[str, dict[str, Any]] = {}

    def seal(self) -> None:
        """Records what was staged. Written last, so an expiry by age takes it after the files, not before."""
        files = [{"name": name, **meta} for name, meta in sorted(self.written.items())]
        body = json.dumps({"files": files}).encode()
        self._upload_chunks_at(self.record_key, iter([body]), "application/json")

    def write_json(self, name: str, data: Any) -> None:
        name = check_name(name if "." in name.rsplit("/", 1)[-1] else f"{name}.json")
        body = json.dumps(data, default=json_default, ensure_ascii=False, indent=2).encode("utf-8")
        self._upload(name, io.BytesIO(body), "application/json")

    def write_rows(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        check_name(f"{name}.json")
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b") as spool:
            columns = _spool_rows(rows, spool)
            spool.seek(0)
            self._upload_chunks(f"{name}.json", _json_array(spool), "application/json")
            spool.seek(0)
            self._upload_chunks(f"{name}.csv", _csv_lines(spool, columns), "text/csv; charset=utf-8")

    def write_stream(self, name: str, stream: BinaryIO, *, content_type: str = "application/octet-stream") -> None:
        self._upload(check_name(name), stream, content_type)

    def _upload(self, name: str, stream: IO[bytes], content_type: str) -> None:
        self._upload_chunks(name, iter(lambda: stream.read(CHUNK), b""), content_type)

    def _upload_chunks(self, name: str, chunks: Iterator[bytes], content_type: str) -> None:
        size, sha256 = self._upload_chunks_at(self.base + name, chunks, content_type)
        self.written[name] = {"size_bytes": size, "sha256": sha256}

    def _upload_chunks_at(self, key: str, chunks: Iterator[bytes], content_type: str) -> tuple[int, str]:
        extra = {**self._settings.sse_args(), "ContentType": content_type}
        with MultipartSink(
            self._client,
            self._settings.bucket,
            key,
            part_size=self._settings.part_size,
            extra_args=extra,
        ) as sink:
            for chunk in chunks:
                sink.write(chunk)
            sink.complete()
        return sink.size, sink.sha256


def record_key(base: str) -> str:
    """Where a system's staging record lives: next to its folder, so it is never taken for a staged file."""
    return base.removesuffix("/") + ".json"


def _spool_rows(rows: Iterable[Mapping[str, Any]], spool: IO[bytes]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        for column in row:
            columns.setdefault(str(column), None)
        line = json.dumps({str(k): v for k, v in row.items()}, default=json_default, ensure_ascii=False)
        spool.write(line.encode("utf-8") + b"\n")
    return list(columns)


def _json_array(spool: IO[bytes]) -> Iterator[bytes]:
    first = True
    yield b"["
    for line in spool:
        yield (b"\n  " if first else b",\n  ") + line.rstrip(b"\n")
        first = False
    yield b"\n]\n" if not first else b"]\n"


def _csv_lines(spool: IO[bytes], columns: list[str]) -> Iterator[bytes]:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    yield "\ufeff".encode()  # a BOM, so spreadsheet software reads the file as UTF-8
    writer.writerow(columns)
    for line in spool:
        row = json.loads(line)
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
        if text.tell() >= CHUNK:
            yield text.getvalue().encode("utf-8")
            text.seek(0)
            text.truncate()
    yield text.getvalue().encode("utf-8")
