"""The ``export:`` section of the config, resolved once into frozen values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.core.errors import ConfigError
from worker.export.readme import DEFAULT_README, ReadmeInfo, readme_from_settings

MAX_URL_TTL_HOURS = 168  # SigV4 presigned URLs cannot outlive 7 days; the contract caps it there too
MIN_PART_SIZE_MB = 5  # S3 refuses smaller parts (except the last)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SSE = {"AES256", "aws:kms", "aws:kms:dsse"}
_LIFECYCLE = {"apply", "external"}
# An export request may stay open until its due date (one month), extended by two more months
# (Art. 12(3)); staged files must outlive that, or a late package would miss them.
DEFAULT_STAGING_DAYS = 90


@dataclass(frozen=True)
class ExportSettings:
    bucket: str
    prefix: str = "exports/"
    url_ttl_hours: float = 72.0
    sse: str = "AES256"
    kms_key_id: str | None = None
    part_size_mb: int = 8
    readme: ReadmeInfo = field(default=DEFAULT_README)
    # "apply": the worker sets its lifecycle rules on the bucket (``worker.export.lifecycle``)
    # before it stages anything; "external": the operator manages equivalent rules.
    lifecycle: str = "apply"
    staging_days: int = DEFAULT_STAGING_DAYS

    @property
    def part_size(self) -> int:
        return self.part_size_mb * 1024 * 1024

    def sse_args(self) -> dict[str, str]:
        """Keyword arguments for PutObject/CreateMultipartUpload."""
        args = {"ServerSideEncryption": self.sse}
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args


def export_settings(raw: Mapping[str, Any]) -> ExportSettings:
    """Validates the raw mapping; raises ``ConfigError`` naming the field, never echoing secrets."""
    known = {
        "bucket",
        "prefix",
        "url_ttl_hours",
        "sse",
        "kms_key_id",
        "part_size_mb",
        "readme",
        "lifecycle",
        "staging_days",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"export: unknown settings {', '.join(unknown)}")
    bucket = raw.get("bucket")
    if not isinstance(bucket, str) or not _BUCKET.match(bucket):
        raise ConfigError("export.bucket must be an S3 bucket name")
    prefix = str(raw.get("prefix", "exports/"))
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if prefix.startswith("/") or ".." in prefix:
        raise ConfigError("export.prefix must be a relative key prefix")
    ttl = _number(raw, "url_ttl_hours", 72.0)
    if not 0 < ttl <= MAX_URL_TTL_HOURS:
        raise ConfigError(f"export.url_ttl_hours must be in (0, {MAX_URL_TTL_HOURS}] (at most 7 days)")
    sse = str(raw.get("sse", "AES256"))
    if sse not in _SSE:
        raise ConfigError(f"export.sse must be one of {', '.join(sorted(_SSE))}")
    kms_key_id = raw.get("kms_key_id")
    if kms_key_id is not None and not sse.startswith("aws:kms"):
        raise ConfigError("export.kms_key_id needs export.sse = aws:kms")
    part_size_mb = int(_number(raw, "part_size_mb", 8))
    if not MIN_PART_SIZE_MB <= part_size_mb <= 512:
        raise ConfigError(f"export.part_size_mb must be between {MIN_PART_SIZE_MB} and 512")
    lifecycle = str(raw.get("lifecycle", "apply"))
    if lifecycle not in _LIFECYCLE:
        raise ConfigError("export.lifecycle must be apply or external")
    staging_days = _number(raw, "staging_days", DEFAULT_STAGING_DAYS)
    if staging_days != int(staging_days) or not 1 <= staging_days <= 3650:
        raise ConfigError("export.staging_days must be a whole number of days from 1 to 3650")
    readme_raw = raw.get("readme", {})
    if not isinstance(readme_raw, Mapping):
        raise ConfigError("export.readme must be a mapping")
    return ExportSettings(
        bucket=bucket,
        prefix=prefix,
        url_ttl_hours=ttl,
        sse=sse,
        kms_key_id=str(kms_key_id) if kms_key_id else None,
        part_size_mb=part_size_mb,
        readme=readme_from_settings(readme_raw),
        lifecycle=lifecycle,
        staging_days=int(staging_days),
    )


def _number(raw: Mapping[str, Any], name: str, default: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"export.{name} must be a number")
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"export.{name} must be a number") from None
