"""Meta's ``signed_request``: ``<base64url signature>.<base64url JSON payload>``, HMAC-SHA256 with the app secret.

``verify`` raises ``BadSignedRequest`` (no detail: the caller answers 400 whatever the reason) or returns
the payload. The signature is computed over the payload exactly as sent, and compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

ALGORITHM = "HMAC-SHA256"
MAX_LENGTH = 4096  # Meta's are a few hundred characters


class BadSignedRequest(ValueError):
    """Malformed, wrongly signed, of another algorithm, stale or from the future. ``reason`` is for metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SignedRequest:
    user_id: str
    issued_at: int
    signature: bytes

    def __repr__(self) -> str:  # the app-scoped user id is personal
        return f"SignedRequest(issued_at={self.issued_at})"


def _b64decode(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=" for c in text):
        raise BadSignedRequest("malformed")
    try:
        return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise BadSignedRequest("malformed") from None


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(payload: dict[str, Any], secret: bytes) -> str:
    """Builds a signed_request as Meta does (for tests and the docs' examples)."""
    encoded = b64encode(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
    signature = hmac.new(secret, encoded.encode("ascii"), hashlib.sha256).digest()
    return f"{b64encode(signature)}.{encoded}"


def verify(signed_request: str, secret: bytes, *, now: float, max_age: float, skew: float) -> SignedRequest:
    if len(signed_request) > MAX_LENGTH or signed_request.count(".") != 1:
        raise BadSignedRequest("malformed")
    encoded_signature, encoded_payload = signed_request.split(".")
    signature = _b64decode(encoded_signature)
    expected = hmac.new(secret, encoded_payload.encode("ascii", "replace"), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise BadSignedRequest("bad_signature")
    try:
        payload = json.loads(_b64decode(encoded_payload))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: nested past the stack
        raise BadSignedRequest("malformed") from None
    if not isinstance(payload, dict):
        raise BadSignedRequest("malformed")
    if payload.get("algorithm") != ALGORITHM:
        raise BadSignedRequest("algorithm")
    user_id, issued_at = payload.get("user_id"), payload.get("issued_at")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    # isdigit() alone takes any script's digits ("١٢"); app-scoped ids are ASCII digits.
    if not isinstance(user_id, str) or not (user_id.isascii() and user_id.isdigit()) or len(user_id) > 64:
        raise BadSignedRequest("malformed")
    if not isinstance(issued_at, int) or isinstance(issued_at, bool):
        raise BadSignedRequest("malformed")
    if issued_at < now - max_age or issued_at > now + skew:
        raise BadSignedRequest("stale")
    return SignedRequest(user_id=user_id, issued_at=issued_at, signature=signature)
