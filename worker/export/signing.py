"""When the credentials that sign a presigned url stop working, the url stops working too: the
``expires_at`` a receipt promises is capped at the signing session's expiry (``None`` for long-term
keys). botocore has no public accessor for it; this module is the one place that reads it, and
tests/integration/test_export_lifecycle.py fails if a botocore upgrade moves it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def signing_expiry(client: Any) -> datetime | None:
    """The expiry of the credentials ``client`` signs with now, refreshing them first if due."""
    credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if credentials is None:
        return None
    # The same call signing makes: credentials close to their expiry are refreshed here, so the
    # expiry read next is the one the url will be signed under.
    credentials.get_frozen_credentials()
    return credentials_expiry(credentials)


def credentials_expiry(credentials: Any) -> datetime | None:
    expiry = getattr(credentials, "_expiry_time", None)
    if not isinstance(expiry, datetime):
        return None
    return expiry.astimezone(UTC) if expiry.tzinfo else expiry.replace(tzinfo=UTC)
