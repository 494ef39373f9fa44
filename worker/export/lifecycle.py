"""The exports bucket's lifecycle rules: packages and abandoned staging files expire by themselves.

``ensure`` merges oubli's rules (ids ``oubli-export-*``) into the bucket's configuration and keeps
anyone else's; with ``export.lifecycle: external`` they are left to the operator (``rules`` gives
them). The rules and their timings: docs/architecture.md."""

from __future__ import annotations

import math
from typing import Any

from botocore.exceptions import ClientError

from worker.core.s3errors import error_code, s3_error
from worker.export.settings import ExportSettings

RULE_ID_PREFIX = "oubli-export-"
LEFTOVER_DAYS = 1  # old versions and unfinished uploads: kept one day, in case a build is still running


def package_days(settings: ExportSettings) -> int:
    return math.ceil(settings.url_ttl_hours / 24) + 1


def rules(settings: ExportSettings) -> list[dict[str, Any]]:
    """The rules, in the shape ``PutBucketLifecycleConfiguration`` takes."""
    leftovers = {
        "NoncurrentVersionExpiration": {"NoncurrentDays": LEFTOVER_DAYS},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": LEFTOVER_DAYS},
    }
    return [
        {
            "ID": f"{RULE_ID_PREFIX}packages",
            "Filter": {"Prefix": f"{settings.prefix}packages/"},
            "Status": "Enabled",
            "Expiration": {"Days": package_days(settings)},
            **leftovers,
        },
        {
            "ID": f"{RULE_ID_PREFIX}staging",
            "Filter": {"Prefix": f"{settings.prefix}staging/"},
            "Status": "Enabled",
            "Expiration": {"Days": settings.staging_days},
            **leftovers,
        },
        {
            "ID": f"{RULE_ID_PREFIX}delete-markers",
            "Filter": {"Prefix": settings.prefix},
            "Status": "Enabled",
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        },
    ]


def current_rules(client: Any, bucket: str) -> list[dict[str, Any]]:
    try:
        response = client.get_bucket_lifecycle_configuration(Bucket=bucket)
    except Exception as exc:
        if isinstance(exc, ClientError) and error_code(exc) == "NoSuchLifecycleConfiguration":
            return []
        raise s3_error(exc, "reading the exports bucket's lifecycle") from None
    found: list[dict[str, Any]] = response.get("Rules", [])
    return found


def missing(client: Any, settings: ExportSettings) -> list[str]:
    """Ids of oubli's rules that the bucket lacks or holds in another form (empty: all in place)."""
    present = {rule.get("ID"): rule for rule in current_rules(client, settings.bucket)}
    return [rule["ID"] for rule in rules(settings) if not _same(present.get(rule["ID"]), rule)]


def ensure(client: Any, settings: ExportSettings) -> bool:
    """Puts oubli's rules in place, keeping every other rule. Returns whether it changed anything."""
    current = current_rules(client, settings.bucket)
    present = {rule.get("ID"): rule for rule in current}
    wanted = rules(settings)
    if all(_same(present.get(rule["ID"]), rule) for rule in wanted):
        return False
    foreign = [_writable(rule) for rule in current if not str(rule.get("ID", "")).startswith(RULE_ID_PREFIX)]
    try:
        client.put_bucket_lifecycle_configuration(
            Bucket=settings.bucket, LifecycleConfiguration={"Rules": [*foreign, *wanted]}
        )
    except Exception as exc:
        raise s3_error(exc, "setting the exports bucket's lifecycle (or set export.lifecycle: external)") from None
    return True


def _same(found: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    if found is None:
        return False
    return all(_normal(found.get(key)) == _normal(value) for key, value in wanted.items())


def _normal(value: Any) -> Any:
    """S3 answers with extra empty fields and its own spelling of an empty filter; compare the gist."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if v not in (None, "", [], {})}
    return value


def _writable(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule as read, minus what GetBucketLifecycleConfiguration adds but Put refuses."""
    return {k: v for k, v in rule.items() if k != "Prefix" or "Filter" not in rule}
