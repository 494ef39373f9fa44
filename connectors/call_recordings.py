"""``call_recordings``: customer-service call recordings in a versioned S3 bucket, under a per-customer
key prefix (``key_prefix``, e.g. ``recordings/{customer_id}/``).

Erasure deletes every version and delete marker under the prefix; a version under Object Lock or a
legal hold is reported as retained, never bypassed. Export writes each version's audio and a
``recordings`` table; ``verify``/``sightings`` serve the checks after erasure. No key (it may embed
the customer id) appears in an error or a result. Settings and rationale: docs/architecture.md."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import boto3
from botocore.config import Config

from worker.core.connector import (
    CallResult,
    ConnectorContext,
    ExportWriter,
    Residue,
    Result,
    Retained,
    Sighting,
    Subject,
)
from worker.core.errors import ConfigError, PermanentError, RetryableError
from worker.core.s3errors import is_retryable_code, s3_error

DELETE_BATCH = 1000
MAX_PASSES = 5
CATEGORY = "call recordings"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
NAME_CHARS = 80  # leaves room for the hash and version tags within the staging name limit (120)


@dataclass(frozen=True)
class RecordingsSettings:
    bucket: str
    key_prefix: str = "recordings/{customer_id}/"
    metadata_customer_key: str = "customer-id"
    legal_hold_review_days: int = 30
    client: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def prefix(self, customer_id: str) -> str:
        if not customer_id or "/" in customer_id or customer_id in (".", "..") or not customer_id.isprintable():
            raise PermanentError("call_recordings: the customer id cannot form a key prefix", code="bad_subject")
        return self.key_prefix.format(customer_id=customer_id)


def parse(system_id: str, raw: Mapping[str, Any]) -> RecordingsSettings:
    where = f"system {system_id}"
    client_keys = {
        "endpoint_url",
        "region",
        "access_key_id",
        "secret_access_key",
        "connect_timeout_s",
        "read_timeout_s",
    }
    unknown = sorted(
        set(raw) - client_keys - {"bucket", "key_prefix", "metadata_customer_key", "legal_hold_review_days"}
    )
    if unknown:
        raise ConfigError(f"{where}: unknown settings {', '.join(unknown)}")
    bucket, layout = raw.get("bucket"), str(raw.get("key_prefix", "recordings/{customer_id}/"))
    if not isinstance(bucket, str) or not bucket:
        raise ConfigError(f"{where}: settings.bucket is required")
    # The prefix must end at a "/" after the customer id, or C-1's prefix would also match C-10.
    if layout.count("{customer_id}") != 1 or not layout.endswith("/") or "/" not in layout.split("{customer_id}")[1]:
        raise ConfigError(f"{where}: key_prefix must contain {{customer_id}} once and end with '/' after it")
    try:
        layout.format(customer_id="x")
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"{where}: key_prefix may use only the {{customer_id}} placeholder") from None
    days = raw.get("legal_hold_review_days", 30)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 366:
        raise ConfigError(f"{where}: legal_hold_review_days must be an integer from 1 to 366")
    return RecordingsSettings(
        bucket=bucket,
        key_prefix=layout,
        metadata_customer_key=str(raw.get("metadata_customer_key", "customer-id")),
        legal_hold_review_days=days,
        client={k: raw[k] for k in client_keys if k in raw},
    )


def _seconds(client: Mapping[str, Any], key: str, default: float) -> float:
    """A timeout: a finite number of seconds above zero (an infinite one is no deadline at all)."""
    value = client.get(key, default)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not 0 < seconds < math.inf:
        raise ConfigError(f"call_recordings: {key} must be a finite number of seconds above 0")
    return seconds


def make_client(settings: RecordingsSettings) -> Any:
    c = settings.client
    config = Config(
        connect_timeout=_seconds(c, "connect_timeout_s", 5),
        read_timeout=_seconds(c, "read_timeout_s", 30),
        retries={"total_max_attempts": 1},  # the orchestrator retries; never nest retries
        signature_version="s3v4",
    )
    return boto3.client(
        "s3",
        endpoint_url=c.get("endpoint_url") or None,  # "" from an unset ${VAR:-}: the AWS default
        region_name=c.get("region") or "eu-west-1",
        aws_access_key_id=c.get("access_key_id") or None,
        aws_secret_access_key=c.get("secret_access_key") or None,
        config=config,
    )


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> CallRecordingsConnector:
    parsed = parse(system_id, settings)
    return CallRecordingsConnector(system_id, parsed, context, make_client(parsed))


@dataclass(frozen=True)
class _Version:
    key: str
    version_id: str
    is_marker: bool
    is_latest: bool = False
    size: int = 0
    last_modified: datetime | None = None


class CallRecordingsConnector:
    def __init__(self, system: str, settings: RecordingsSettings, context: ConnectorContext, client: Any) -> None:
        self.system = system
        self.settings = settings
        self._context = context
        self._client = client

    def erase(self, subject: Subject) -> CallResult:
        prefix = self.settings.prefix(subject.customer_id)
        locked: dict[tuple[str, str], tuple[str, date]] = {}
        found = False
        for _ in range(MAX_PASSES):
            pending = [v for v in self._versions(prefix) if (v.key, v.version_id) not in locked]
            if not pending:
                break
            found = True
            for start in range(0, len(pending), DELETE_BATCH):
                locked.update(self._delete_batch(pending[start : start + DELETE_BATCH]))
        else:
            raise RetryableError(f"{self.system}: recordings kept appearing while erasing", code="not_settled")
        if locked:
            latest: dict[str, date] = {}
            for basis, until in locked.values():
                latest[basis] = max(until, latest.get(basis, until))
            return Result("retained", retained=tuple(Retained(CATEGORY, b, u) for b, u in sorted(latest.items())))
        return Result("erased") if found else Result("not_found")

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        prefix = self.settings.prefix(subject.customer_id)
        versions = sorted(
            (v for v in self._versions(prefix) if not v.is_marker),
            key=lambda v: (v.key, not v.is_latest, v.last_modified or datetime.min),
        )
        rows: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        names = FileNames()
        for version in versions:
            try:
                got = self._client.get_object(
                    Bucket=self.settings.bucket, Key=version.key, VersionId=version.version_id
                )
            except Exception as exc:
                raise s3_error(exc, f"{self.system}: reading a recording") from None
            metadata = {k.lower(): v for k, v in got.get("Metadata", {}).items()}
            owner = metadata.get(self.settings.metadata_customer_key)
            if owner is not None and owner != subject.customer_id:
                got["Body"].close()
                continue
            relative = version.key[len(prefix) :]
            seen[relative] = seen.get(relative, 0) + 1
            name = names.name(relative, version.version_id, seen[relative])
            with got["Body"] as body:
                writer.write_stream(name, body, content_type=str(got.get("ContentType") or "application/octet-stream"))
            rows.append(
                {
                    "file": name,
                    "key": version.key,
                    "version_id": version.version_id,
                    "is_latest": version.is_latest,
                    "size_bytes": version.size,
                    "last_modified": version.last_modified,
                    "content_type": got.get("ContentType"),
                    **metadata,
                }
            )
        if not rows:
            return Result("not_found")
        writer.write_rows("recordings", rows)
        return Result("exported", records=len(rows))

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        raise PermanentError(f"{self.system}: no async jobs to poll", code="no_async")

    def verify(self, subject: Subject) -> Sequence[Residue]:
        versions = list(self._versions(self.settings.prefix(subject.customer_id)))
        unlocked = [v for v in versions if not v.is_marker and self._lock(v) is None]
        return [Residue("versions", len(unlocked)), Residue("delete_markers", sum(v.is_marker for v in versions))]

    def sightings(self) -> Iterator[Sighting]:
        root, _, after = self.settings.key_prefix.partition("{customer_id}")
        if not after.startswith("/"):
            return  # the customer id is not a whole path segment: its prefixes cannot be listed apart
        try:
            pages = self._client.get_paginator("list_object_versions").paginate(
                Bucket=self.settings.bucket, Prefix=root, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    customer_id = str(common["Prefix"])[len(root) :].rstrip("/")
                    if customer_id:
                        yield Sighting("recordings", (("customer_id", customer_id),))
        except Exception as exc:
            raise s3_error(exc, f"{self.system}: listing recording prefixes") from None

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            close()

    # -- helpers ---------------------------------------------------------------------------------
    def _versions(self, prefix: str) -> Iterator[_Version]:
        listed: list[_Version] = []
        try:
            pages = self._client.get_paginator("list_object_versions").paginate(
                Bucket=self.settings.bucket, Prefix=prefix
            )
            for page in pages:
                listed += [
                    _Version(
                        v["Key"],
                        v["VersionId"],
                        False,
                        bool(v.get("IsLatest")),
                        int(v.get("Size", 0)),
                        v.get("LastModified"),
                    )
                    for v in page.get("Versions", [])
                ]
                listed += [
                    _Version(m["Key"], m["VersionId"], True, bool(m.get("IsLatest")))
                    for m in page.get("DeleteMarkers", [])
                ]
        except Exception as exc:
            raise s3_error(exc, f"{self.system}: listing recordings") from None
        return iter([v for v in listed if v.key.startswith(prefix)])

    def _delete_batch(self, batch: list[_Version]) -> dict[tuple[str, str], tuple[str, date]]:
        objects = [{"Key": v.key, "VersionId": v.version_id} for v in batch]
        try:
            response = self._client.delete_objects(
                Bucket=self.settings.bucket, Delete={"Objects": objects, "Quiet": False}
            )
        except Exception as exc:
            raise s3_error(exc, f"{self.system}: deleting recordings") from None
        deleted = {(d["Key"], d.get("VersionId")) for d in response.get("Deleted", [])}
        locked: dict[tuple[str, str], tuple[str, date]] = {}
        for error in response.get("Errors", []):
            code = str(error.get("Code"))
            if code in ("NoSuchKey", "NoSuchVersion"):
                continue
            if code != "AccessDenied":
                kind = RetryableError if is_retryable_code(code) else PermanentError
                raise kind(f"{self.system}: S3 refused to delete a recording version ({code})", code="s3_delete")
            # Some S3 implementations omit VersionId in errors: check every version of that key we sent.
            suspects = [
                v
                for v in batch
                if v.key == error.get("Key")
                and error.get("VersionId") in (None, v.version_id)
                and (v.key, v.version_id) not in deleted
            ]
            for version in suspects:
                lock = None if version.is_marker else self._lock(version)
                if lock is None:
                    raise PermanentError(
                        f"{self.system}: access denied deleting a recording (not an object lock)",
                        code="s3_access_denied",
                    )
                locked[(version.key, version.version_id)] = lock
        return locked

    def _lock(self, version: _Version) -> tuple[str, date] | None:
        try:
            head = self._client.head_object(Bucket=self.settings.bucket, Key=version.key, VersionId=version.version_id)
        except Exception as exc:
            raise s3_error(exc, f"{self.system}: reading a recording's lock") from None
        now = self._context.now()
        if head.get("ObjectLockLegalHoldStatus") == "ON":  # no end date: report when to look again
            return "legal hold", (now + timedelta(days=self.settings.legal_hold_review_days)).date()
        until = head.get("ObjectLockRetainUntilDate")
        if isinstance(until, datetime) and until > now:
            mode = str(head.get("ObjectLockMode") or "").lower()
            return f"object lock retention ({mode})" if mode else "object lock retention", until.date()
        return None


class FileNames:
    """File names for one export: readable, and never the same for two recording versions.

    A key made only of safe characters (and short) keeps its name. Any other key is flattened
    (``/`` and unsafe characters become ``_``), which can map several keys to one text, so its
    name also carries a hash of the full key. Older versions get ``.v2``, ``.v3``... A name that
    is taken all the same (a key that happens to look like another's hashed or versioned name)
    gets the hash of the key and version too, so the mapping stays one to one whatever the keys.
    """

    def __init__(self) -> None:
        self._used: set[str] = set()

    def name(self, relative: str, version_id: str, nth: int) -> str:
        flat = _SAFE.sub("_", relative.replace("/", "_")).lstrip("._-")
        if flat != relative or len(flat) > NAME_CHARS:
            flat = _tagged(flat[:NAME_CHARS] or "recording", _digest(relative))
        if nth > 1:
            flat = _tagged(flat, f"v{nth}")
        name, salt = flat, 0
        while name in self._used:
            salt += 1
            name = _tagged(flat, _digest(f"{relative}\0{version_id}\0{salt}"))
        self._used.add(name)
        return f"recordings/{name}"


def _tagged(name: str, tag: str) -> str:
    """``name`` with ``.tag`` before its extension (or at its end when it has none)."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.{tag}.{ext}" if dot and stem and len(ext) <= 8 else f"{name}.{tag}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
