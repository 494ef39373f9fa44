"""Streams every staged file of a request into one ZIP, written to S3 as it is produced.

Layout: ``README.en.md``/``README.fr.md`` (GDPR Art. 15 information), ``manifest.json`` (per system:
records, files, sha256) and ``{system}/{name}``. Text is deflated, media stored as is; entries carry
data descriptors (the sink cannot seek)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.core.errors import StagingLost
from worker.core.s3errors import s3_error
from worker.export.multipart import MultipartSink
from worker.export.readme import PackagedSystem, render
from worker.export.settings import ExportSettings

CHUNK = 1 << 20
_DEFLATE = (".json", ".csv", ".txt", ".md", ".xml", ".html", ".ndjson")


@dataclass(frozen=True)
class StagedFile:
    system: str
    name: str
    key: str
    size: int
    etag: str


def list_staged(client: Any, bucket: str, staging: str) -> list[StagedFile]:
    """Every staged file under ``staging`` (``.../staging/{request_id}/``), sorted by path."""
    files: list[StagedFile] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=staging):
            for item in page.get("Contents", []):
                system, _, name = item["Key"][len(staging) :].partition("/")
                if system and name:
                    files.append(StagedFile(system, name, item["Key"], int(item["Size"]), item["ETag"]))
    except Exception as exc:
        raise s3_error(exc, "listing staged export files") from None
    return sorted(files, key=lambda f: (f.system, f.name))


def fingerprint(files: list[StagedFile], records: Mapping[str, int]) -> str:
    """Identifies the package's inputs: same staged objects and counts, same package."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.key}\0{f.etag}\0{f.size}\n".encode())
    digest.update(json.dumps(dict(sorted(records.items()))).encode())
    return digest.hexdigest()


def write_package(
    client: Any,
    settings: ExportSettings,
    key: str,
    request_id: str,
    files: list[StagedFile],
    records: Mapping[str, int],
    now: datetime,
    checksums: Mapping[str, str] | None = None,
) -> MultipartSink:
    """Writes the ZIP to ``key`` and returns the completed sink (its sha256, size and version). A staged file
    whose sha256 differs from ``checksums`` (by key) raises ``StagingLost``: nothing is published."""
    generated_at = now.astimezone(UTC).replace(microsecond=0)
    stamp = generated_at.timetuple()[:6]
    extra = {
        **settings.sse_args(),
        "ContentType": "application/zip",
        # The key's name, not the id: an id may hold a quote or non-ASCII text, which this header cannot carry.
        "ContentDisposition": f'attachment; filename="{key.rsplit("/", 1)[-1]}"',
    }
    with MultipartSink(client, settings.bucket, key, part_size=settings.part_size, extra_args=extra) as sink:
        with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            manifest_files = _copy_files(client, settings.bucket, archive, files, stamp, checksums or {})
            systems = _systems(files, records, manifest_files)
            manifest = {
                "schema_version": 1,
                "request_id": request_id,
                "generated_at": generated_at.isoformat().replace("+00:00", "Z"),
                "systems": systems,
            }
            packaged = [
                PackagedSystem(s, v["records"], tuple(f["name"] for f in v["files"])) for s, v in systems.items()
            ]
            _add_text(archive, "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", stamp)
            for lang in ("en", "fr"):
                text = render(settings.readme, lang, request_id, generated_at, packaged)
                _add_text(archive, f"README.{lang}.md", text, stamp)
        sink.complete()
    return sink


def _copy_files(
    client: Any, bucket: str, archive: zipfile.ZipFile, files: list[StagedFile], stamp: tuple[int, ...],
    checksums: Mapping[str, str],
) -> dict[str, list[dict[str, Any]]]:
    listed: dict[str, list[dict[str, Any]]] = {}
    for staged in files:
        path = f"{staged.system}/{staged.name}"
        info = zipfile.ZipInfo(path, date_time=(stamp[0], stamp[1], stamp[2], stamp[3], stamp[4], stamp[5]))
        info.file_size = staged.size  # lets zipfile decide on ZIP64 before it knows the data
        info.compress_type = zipfile.ZIP_DEFLATED if path.lower().endswith(_DEFLATE) else zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        digest = hashlib.sha256()
        size = 0
        with archive.open(info, mode="w") as entry:
            for chunk in _read_object(client, bucket, staged.key):
                digest.update(chunk)
                size += len(chunk)
                entry.write(chunk)
        if checksums.get(staged.key, digest.hexdigest()) != digest.hexdigest():
            raise StagingLost(f"export: a staged file of {staged.system} changed after it was staged",
                              systems=(staged.system,))
        listed.setdefault(staged.system, []).append({"name": path, "size_bytes": size, "sha256": digest.hexdigest()})
    return listed


def _read_object(client: Any, bucket: str, key: str) -> Iterator[bytes]:
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            while chunk := body.read(CHUNK):
                yield chunk
        finally:
            body.close()
    except Exception as exc:
        raise s3_error(exc, "reading a staged export file") from None


def _systems(
    files: list[StagedFile], records: Mapping[str, int], listed: Mapping[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    names = sorted(set(records) | {f.system for f in files})
    return {name: {"records": int(records.get(name, 0)), "files": listed.get(name, [])} for name in names}


def _add_text(archive: zipfile.ZipFile, name: str, text: str, stamp: tuple[int, ...]) -> None:
    info = zipfile.ZipInfo(name, date_time=(stamp[0], stamp[1], stamp[2], stamp[3], stamp[4], stamp[5]))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, text.encode("utf-8"))
