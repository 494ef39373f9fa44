"""OAuth2 bearer tokens and error bodies shared by the two Google connectors.

Credentials: ``access_token`` (minted elsewhere), or ``oauth: {client_id, client_secret,
refresh_token, token_url}`` (cached until a minute before expiry; a 401 drops it).
``google_error_code`` picks the most specific code of an error body, never its message."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx

from connectors.http import HttpSettings, VendorHttp, classify, json_body, safe_code
from connectors.vendor import Options, Secret
from worker.core.errors import PermanentError

GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
MAX_TOKEN_SECONDS = 86_400.0


def google_error_code(response: httpx.Response) -> str | None:
    error = json_body(response).get("error")
    if not isinstance(error, dict):
        return safe_code(error, response)  # the token endpoint answers {"error": "invalid_grant"}
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and detail.get("reason"):
            return safe_code(detail["reason"], response)
    for item in error.get("errors") or ():
        if isinstance(item, dict) and item.get("reason"):
            return safe_code(item["reason"], response)
    return safe_code(error.get("status"), response)


class GoogleCredentials:
    """Hands out ``Authorization`` headers; thread-safe."""

    def __init__(self, opts: Options, now: Callable[[], datetime], http: HttpSettings) -> None:
        self._system = opts.system
        self._now = now
        self._lock = threading.Lock()
        self._token: Secret | None = None
        self._expires: datetime | None = None
        self._refresh: tuple[Secret, Secret, Secret] | None = None
        self._token_http: VendorHttp | None = None
        self._token_path = "/"  # noqa: S105 - a URL path
        if opts.has("oauth"):
            oauth = opts.section("oauth")
            self._refresh = (Secret(oauth.text("client_id")), oauth.secret("client_secret"),
                             oauth.secret("refresh_token"))
            token_url = urlsplit(oauth.text("token_url", GOOGLE_TOKEN_URL))
            self._token_path = token_url.path or "/"
            token_opts = Options(opts.system, {
                "base_url": f"{token_url.scheme}://{token_url.netloc}",
                "allow_insecure_http": opts.flag("allow_insecure_http", False),
                "timeout_seconds": http.timeout,
                "connect_timeout_seconds": http.connect_timeout,
            }, "oauth.")
            self._token_http = VendorHttp(opts.system, HttpSettings.parse(token_opts, GOOGLE_TOKEN_URL))
        elif opts.has("access_token"):
            self._token = opts.secret("access_token")
        else:
            raise opts.error("access_token", "or oauth is required")

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._refresh is not None and (self._token is None or self._expired()):
                self._fetch()
            assert self._token is not None
            return {"authorization": f"Bearer {self._token.reveal()}"}

    def refused(self) -> None:
        """The API said 401: a refreshed token will be fetched next time."""
        with self._lock:
            if self._refresh is not None:
                self._token = None

    def _expired(self) -> bool:
        return self._expires is not None and self._now() >= self._expires

    def _fetch(self) -> None:
        assert self._refresh is not None and self._token_http is not None
        client_id, client_secret, refresh_token = self._refresh
        response = self._token_http.send("POST", self._token_path, op="token refresh", data={
            "grant_type": "refresh_token", "client_id": client_id.reveal(),
            "client_secret": client_secret.reveal(), "refresh_token": refresh_token.reveal(),
        })
        body = json_body(response)
        if response.status_code in (400, 401):
            raise PermanentError(f"{self._system}: token refresh got HTTP {response.status_code} "
                                 f"({google_error_code(response) or 'no code'}): the vendor refused our "
                                 "credentials", code="credentials_refused")
        if not response.is_success:
            raise classify(self._system, "token refresh", response, self._now(), google_error_code(response))
        token, lifetime = body.get("access_token"), body.get("expires_in", 3600)
        # JSON as Python reads it may hold Infinity, NaN or 1e400, which no datetime can be added to.
        if not isinstance(token, str) or not token or not isinstance(lifetime, int | float) \
                or not math.isfinite(lifetime):
            raise PermanentError(f"{self._system}: token refresh returned no usable token",
                                 code="vendor_protocol")
        self._token = Secret(token)
        # Kept a minute short of its end, and never past a day (Google's last an hour; a 401 refreshes it anyway).
        self._expires = self._now() + timedelta(seconds=min(max(0.0, float(lifetime) - 60.0), MAX_TOKEN_SECONDS))

    def close(self) -> None:
        if self._token_http is not None:
            self._token_http.close()
