"""When the credentials that sign a presigned url stop working, the url stops working too.

Temporary credentials (an assumed role, web identity on Kubernetes, an instance profile, SSO)
carry a session token with an expiry, often one hour. A url they sign is refused by S3 once the
session has expired, whatever its ``X-Amz-Expires`` says. So the ``expires_at`` a receipt
promises is capped at the signing session's expiry.

botocore has no public accessor for that expiry: its refreshable credentials keep it in
``_expiry_time``, and a client keeps its credentials on its request signer. This module is the
one place that reads them; ``tests/test_export_lifecycle.py`` fails if a botocore upgrade moves
them. Long-term keys have no expiry (``None``).
"""

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
