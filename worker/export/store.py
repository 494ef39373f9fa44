"""The export store: staging per request and system, then one ZIP package per request (S3).

``writer(request_id, system)`` stages a connector's files (clearing an earlier attempt's first);
``build_package`` checks them against each system's staging record (``StagingLost`` when some are gone:
no package leaves out what a system exported) and streams them into one idempotent package, and returns
a presigned url no later than the signing credentials' expiry; ``discard_staging`` and ``forget`` delete,
every version. Calls may block on S3 and raise ``RetryableError``/``PermanentError`` naming request ids
and S3 codes only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from worker.core.errors import RetryableError, StagingLost
from worker.core.s3errors import error_code, s3_error
from worker.export import lifecycle
from worker.export.package import StagedFile, fingerprint, list_staged, write_package
from worker.export.settings import ExportSettings, export_settings
from worker.export.signing import signing_expiry
from worker.export.staging import StagingWriter, record_key, request_key

DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys
# A url that would die within minutes (the signing session is about to end and could not be
# renewed) is no use to anyone: try again later instead.
MIN_URL_LIFETIME = timedelta(minutes=5)


@dataclass(frozen=True)
class ExportInfo:
    url: str
    expires_at: datetime
    sha256: str
    size_bytes: int
    object_key: str


class ExportStore:
    def __init__(self, s3_client: Any, settings: ExportSettings) -> None:
        self._client = s3_client
        self.settings = settings
        # botocore presigns S3 urls with SigV2 unless the client's config names a signature version;
        # SigV2 urls carry no enforced lifetime cap. Keep SigV4 query signing for this client.
        s3_client.meta.events.register_first("choose-signer.s3", _keep_sigv4_presign, unique_id="oubli-sigv4-presign")
        self._lifecycle_lock = threading.Lock()
        self._lifecycle_done = settings.lifecycle == "external"

    @classmethod
    def from_settings(cls, s3_client: Any, settings: Mapping[str, Any]) -> ExportStore:
        """Validates the ``export:`` section (``ConfigError`` when unusable)."""
        return cls(s3_client, export_settings(settings))

    def writer(self, request_id: str, system: str, *, fresh: bool = True) -> StagingWriter:
        self.ensure_lifecycle()
        writer = StagingWriter(self._client, self.settings, request_id, system)
        if fresh:
            self._delete_versions(writer.base)
            self._delete_versions(writer.record_key, exact=True)  # names files of the attempt just cleared
        return writer

    def package_key(self, request_id: str) -> str:
        return f"{self.settings.prefix}packages/{request_key(request_id)}.zip"

    def build_package(self, request_id: str, records: Mapping[str, int], now: datetime) -> ExportInfo:
        self.ensure_lifecycle()
        key = self.package_key(request_id)
        files = list_staged(self._client, self.settings.bucket, self._staging(request_id))
        inputs = fingerprint(files, records)
        previous = self._read_sidecar(key)
        if previous is not None and (previous["inputs"] == inputs or not files) and self._still_there(key, previous):
            return self._info(key, previous, now)
        checksums = self._check_staged(request_id, files, records)
        self._abort_stale_uploads(key)
        sink = write_package(self._client, self.settings, key, request_id, files, records, now, checksums)
        if sink.version_id is not None:
            self._delete_versions(key, keep=sink.version_id)
        done = {
            "inputs": inputs,
            "sha256": sink.sha256,
            "size_bytes": sink.size,
            "version_id": sink.version_id,
        }
        self._put_json(self._sidecar(key), done)
        return self._info(key, done, now)

    def discard_staging(self, request_id: str) -> None:
        self._delete_versions(self._staging(request_id))

    def discard_package(self, request_id: str) -> None:
        """Removes a package (every version) and its record, for example once its url has expired."""
        key = self.package_key(request_id)
        self._delete_versions(key)
        self._delete_versions(self._sidecar(key))

    def forget(self, request_ids: Iterable[str], object_keys: Iterable[str] = ()) -> int:
        """Deletes those requests' packages (and any package at ``object_keys``), records and staging."""
        ids = tuple(request_ids)
        packages: set[str] = set()
        for key in {*(self.package_key(r) for r in ids), *object_keys}:
            packages |= self._delete_versions(key, exact=True)
            self._delete_versions(self._sidecar(key), exact=True)
        for request_id in ids:
            self._delete_versions(self._staging(request_id))
        return len(packages)

    def ensure_lifecycle(self) -> None:
        """Puts the bucket's lifecycle rules in place, once per process (a failure is tried again)."""
        if self._lifecycle_done:
            return
        with self._lifecycle_lock:
            if not self._lifecycle_done:
                lifecycle.ensure(self._client, self.settings)
                self._lifecycle_done = True

    # -- helpers ---------------------------------------------------------------------------------
    def _check_staged(self, request_id: str, files: list[StagedFile], records: Mapping[str, int]) -> dict[str, str]:
        """Raises ``StagingLost`` naming each system whose staged files are not all there, at the sizes its
        staging record gives; returns the recorded sha256 of each staged file (by key). Without a record
        (staged by an earlier version), a system that reported records must have staged something."""
        staging = self._staging(request_id)
        present = {f.key: f.size for f in files}
        lost: list[str] = []
        checksums: dict[str, str] = {}
        for system in sorted(set(records) | {f.system for f in files}):
            base = f"{staging}{system}/"
            record = self._read_json(record_key(base), "reading an export staging record")
            if record is None:
                if records.get(system, 0) > 0 and not any(key.startswith(base) for key in present):
                    lost.append(system)
                continue
            expected = {base + f["name"]: f for f in record.get("files", [])}
            if any(present.get(k) != int(f["size_bytes"]) for k, f in expected.items()):
                lost.append(system)
            checksums.update({k: str(f["sha256"]) for k, f in expected.items()})
        if lost:
            raise StagingLost(f"export: staged files of {', '.join(lost)} are gone; they export again",
                              systems=tuple(lost))
        return checksums

    def _staging(self, request_id: str) -> str:
        return f"{self.settings.prefix}staging/{request_key(request_id)}/"

    @staticmethod
    def _sidecar(key: str) -> str:
        return key.removesuffix(".zip") + ".done.json"

    def _info(self, key: str, done: Mapping[str, Any], now: datetime) -> ExportInfo:
        start = now.astimezone(UTC)
        expires_at = start + timedelta(hours=self.settings.url_ttl_hours)
        try:
            session_end = signing_expiry(self._client)
        except Exception as exc:
            raise s3_error(exc, "refreshing the credentials that sign the export url") from None
        if session_end is not None and session_end < expires_at:
            if session_end - start < MIN_URL_LIFETIME:
                raise RetryableError("export: the signing credentials expire within minutes", code="s3_credentials")
            expires_at = session_end
        params: dict[str, Any] = {"Bucket": self.settings.bucket, "Key": key}
        if done.get("version_id"):
            params["VersionId"] = done["version_id"]  # the url serves exactly the package hashed here
        lifetime = int((expires_at - start).total_seconds())
        try:
            url = self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=lifetime)
        except Exception as exc:
            raise s3_error(exc, "signing the export url") from None
        return ExportInfo(
            url=url,
            expires_at=expires_at,
            sha256=str(done["sha256"]),
            size_bytes=int(done["size_bytes"]),
            object_key=key,
        )

    def _read_sidecar(self, key: str) -> dict[str, Any] | None:
        return self._read_json(self._sidecar(key), "reading the export package record")

    def _read_json(self, key: str, doing: str) -> dict[str, Any] | None:
        try:
            body = self._client.get_object(Bucket=self.settings.bucket, Key=key)["Body"]
            with body:
                data = json.loads(body.read())
        except Exception as exc:
            if error_code_of(exc) in {"NoSuchKey", "404"}:
                return None
            raise s3_error(exc, doing) from None
        return data if isinstance(data, dict) else None

    def _still_there(self, key: str, done: Mapping[str, Any]) -> bool:
        params: dict[str, Any] = {"Bucket": self.settings.bucket, "Key": key}
        if done.get("version_id"):
            params["VersionId"] = done["version_id"]
        try:
            head = self._client.head_object(**params)
        except Exception as exc:
            if error_code_of(exc) in {"NoSuchKey", "404", "NoSuchVersion", "400"}:
                return False
            raise s3_error(exc, "checking the export package") from None
        return int(head.get("ContentLength", -1)) == int(done["size_bytes"])

    def _put_json(self, key: str, data: Mapping[str, Any]) -> None:
        try:
            self._client.put_object(
                Bucket=self.settings.bucket,
                Key=key,
                Body=json.dumps(data).encode(),
                ContentType="application/json",
                **self.settings.sse_args(),
            )
        except Exception as exc:
            raise s3_error(exc, "recording the export package") from None

    def _abort_stale_uploads(self, key: str) -> None:
        """Parts of a package whose build crashed: abandoned, so they neither linger nor cost."""
        try:
            listed = self._client.list_multipart_uploads(Bucket=self.settings.bucket, Prefix=key)
            for upload in listed.get("Uploads", []):
                if upload["Key"] == key:
                    self._client.abort_multipart_upload(
                        Bucket=self.settings.bucket, Key=key, UploadId=upload["UploadId"]
                    )
        except Exception as exc:
            raise s3_error(exc, "aborting a stale export upload") from None

    def _delete_versions(self, prefix: str, keep: str | None = None, *, exact: bool = False) -> set[str]:
        """Deletes every version and delete marker under ``prefix`` (only at it when ``exact``),
        except ``keep``. Returns the keys that had an object version (not only delete markers)."""
        bucket = self.settings.bucket
        held: set[str] = set()
        try:
            batch: list[dict[str, str]] = []
            for page in self._client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
                versions = [(item, True) for item in page.get("Versions", [])]
                for item, is_version in [*versions, *((m, False) for m in page.get("DeleteMarkers", []))]:
                    if item["VersionId"] == keep or not item["Key"].startswith(prefix):
                        continue
                    if exact and item["Key"] != prefix:
                        continue
                    if is_version:
                        held.add(item["Key"])
                    batch.append({"Key": item["Key"], "VersionId": item["VersionId"]})
                    if len(batch) == DELETE_BATCH:
                        self._delete_batch(batch)
                        batch = []
            if batch:
                self._delete_batch(batch)
        except Exception as exc:
            raise s3_error(exc, "deleting export objects") from None
        return held

    def _delete_batch(self, batch: list[dict[str, str]]) -> None:
        response = self._client.delete_objects(Bucket=self.settings.bucket, Delete={"Objects": batch, "Quiet": True})
        errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchVersion"]
        if errors:
            codes = sorted({str(e.get("Code")) for e in errors})
            raise RetryableError(f"deleting export objects: {len(errors)} not deleted ({', '.join(codes)})")


def _keep_sigv4_presign(signature_version: str, **_: Any) -> str | None:
    if signature_version.endswith("-query") and "v4" in signature_version:
        return signature_version
    return None


def error_code_of(exc: Exception) -> str | None:
    return error_code(exc) if isinstance(exc, ClientError) else None
