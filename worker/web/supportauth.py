"""Who may use /support: a bearer token (constant-time compare against every configured token), or the
identity a trusted OIDC proxy puts in ``web.support_proxy_header``. The header is trusted only because
the chart's NetworkPolicy lets nothing but the proxy reach the pod when it is set (docs/web.md)."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from worker.config import WebSettings

_ACTOR_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789@._-+")


def actor(request: Request, settings: WebSettings) -> str | None:
    """The authenticated support user ("token" or the proxy's user), or None when not authenticated."""
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() == "bearer" and token:
        matched = False
        for candidate in settings.support_tokens:  # no early exit: the time does not say which token matched
            matched |= hmac.compare_digest(candidate.get_secret_value().encode(), token.strip().encode())
        if matched:
            return "token"
    if settings.support_proxy_header:
        user = request.headers.get(settings.support_proxy_header, "").strip()
        if user and len(user) <= 128:
            return "".join(c for c in user.lower() if c in _ACTOR_CHARS) or "proxy-user"
    return None
