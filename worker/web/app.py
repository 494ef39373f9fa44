"""The Starlette app: routes, templates and the middleware stack. ``create_app`` takes built services,
so tests drive it with a TestClient; ``serve`` runs it under uvicorn (``oubli web``).

Logs name the route, never the path: a status path holds the confirmation code, the only key to a page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from confluent_kafka import KafkaException
from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from worker import messages
from worker.cli import format_receipt
from worker.config import Settings
from worker.core.timefmt import iso, utcnow
from worker.metrics import REGISTRY, WEB_CALLBACKS, WEB_REQUESTS
from worker.states import RetryPolicy
from worker.store import db
from worker.store.reports import open_requests
from worker.store.repository import NotFound, Store
from worker.web import codes, i18n, signed, status, supportauth
from worker.web.confirmations import Confirmations
from worker.web.deletion import DeletionCallback, PublishFailed
from worker.web.identity import IdentityUnavailable
from worker.web.security import BodyLimit, RateLimit, SecurityHeaders, TokenBuckets

log = structlog.get_logger("oubli.web")
HERE = Path(__file__).parent
PUBLIC_PREFIXES = ("/facebook/", "/status/")
STATUS_CACHE = "private, max-age=60"


@dataclass
class Services:
    settings: Settings
    engine: sa.Engine
    confirmations: Confirmations
    callback: DeletionCallback | None  # None without an app secret: the callback answers 404


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals["text"] = i18n.text
    return env


class _AccessMetrics:
    """Counts answers by route name (the template, not the path) and status code."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = next((p for p in ("/facebook/data-deletion", "/status/", "/support/", "/static/") if
                      path.startswith(p)), path if path in ("/healthz", "/readyz", "/metrics", "/support") else "other")

        started = False

        async def counting(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                WEB_REQUESTS.labels(route=route, status=str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counting)
        except Exception as exc:
            # Left to Starlette and uvicorn, the 500 is written outside this middleware, so it is never
            # counted. The body says nothing: the exception's text could quote a request or a row.
            log.error("web_unexpected_error", route=route, error_type=type(exc).__name__, exc_info=True)
            if started:
                raise
            await PlainTextResponse("internal error\n", status_code=500)(scope, receive, counting)


def create_app(services: Services) -> Starlette:
    settings, web = services.settings, services.settings.web
    templates = _templates()
    templates.globals.update(retailer=web.retailer, contact=web.contact)
    store = Store(services.engine, topics=settings.kafka.topics, policy=RetryPolicy(), actor="oubli-web")
    subject_key = settings.subject_key.get_secret_value().encode()
    app_secret = web.facebook_app_secret.get_secret_value().encode() if web.facebook_app_secret else None

    def page(name: str, status_code: int = 200, cache: str | None = None, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(**context)
        response = HTMLResponse(html, status_code=status_code)
        if cache:
            response.headers["cache-control"] = cache
            response.headers["vary"] = "Accept-Language"
        return response

    async def deletion(request: Request) -> Response:
        if services.callback is None or app_secret is None:
            return JSONResponse({"error": "not_found"}, status_code=404)
        refused = JSONResponse({"error": "invalid_request"}, status_code=400)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            WEB_CALLBACKS.labels(result="refused_malformed").inc()
            return refused
        try:
            form = await request.form(max_files=0, max_fields=5)
        except HTTPException:  # too many fields: the same answer as any other malformed call
            WEB_CALLBACKS.labels(result="refused_malformed").inc()
            return refused
        value = form.get("signed_request")
        if not isinstance(value, str):
            WEB_CALLBACKS.labels(result="refused_malformed").inc()
            return refused
        try:
            verified = signed.verify(value, app_secret, now=time.time(), max_age=web.signed_request_max_age_seconds,
                                     skew=web.clock_skew_seconds)
        except signed.BadSignedRequest as exc:
            WEB_CALLBACKS.labels(result=f"refused_{exc.reason}").inc()
            log.info("web_callback_refused", reason=exc.reason)
            return refused
        try:
            outcome = await run_in_threadpool(services.callback.handle, verified)
        except (IdentityUnavailable, PublishFailed, KafkaException, BufferError, sa.exc.SQLAlchemyError) as exc:
            WEB_CALLBACKS.labels(result="failed").inc()
            log.warning("web_callback_failed", error_type=type(exc).__name__)
            return JSONResponse({"error": "unavailable"}, status_code=503, headers={"retry-after": "60"})
        WEB_CALLBACKS.labels(result=outcome.result).inc()
        log.info("web_callback_answered", result=outcome.result)
        url = f"{web.public_base_url.rstrip('/')}/status/{outcome.code}"
        return JSONResponse({"url": url, "confirmation_code": outcome.code})

    async def status_page(request: Request) -> Response:
        lang = i18n.choose(request.query_params.get("lang"), request.headers.get("accept-language"))
        code = request.path_params["code"]
        found = None
        if codes.looks_like_code(code):
            found = await run_in_threadpool(services.confirmations.by_code_hash, codes.code_hash(code))
        if found is None:
            return page("not_found.html", 404, cache=STATUS_CACHE, lang=lang)
        receipt = None
        if found.request_id is not None:
            try:
                receipt = await run_in_threadpool(store.receipt, found.request_id)
            except NotFound:  # published, not recorded by a worker yet: received
                receipt = None
        view = status.build(settings, found, receipt, lang)
        return page("status.html", cache=STATUS_CACHE, lang=lang, view=view, other="en" if lang == "fr" else "fr")

    def support_user(request: Request) -> str | None:
        return supportauth.actor(request, web)

    def unauthorised() -> Response:
        return PlainTextResponse("authentication required\n", status_code=401,
                                 headers={"www-authenticate": 'Bearer realm="oubli support"'})

    async def support_home(request: Request) -> Response:
        if support_user(request) is None:
            return unauthorised()
        return page("support_search.html", lang="en", results=None, total=0)

    async def support_search(request: Request) -> Response:
        if support_user(request) is None:
            return unauthorised()
        try:
            form = await request.form(max_files=0, max_fields=5)
        except HTTPException:
            form = FormData()
        customer_id = form.get("customer_id")
        if not isinstance(customer_id, str) or not customer_id.strip() or len(customer_id) > 128:
            return page("support_search.html", 400, lang="en", results=None, total=0, invalid=True)
        ref = messages.subject_ref(subject_key, customer_id.strip())
        total, found = await run_in_threadpool(open_requests, services.engine, utcnow(), subject_ref=ref, limit=50)
        return page("support_search.html", lang="en", results=found, total=total, iso=iso)

    async def support_request(request: Request) -> Response:
        if support_user(request) is None:
            return unauthorised()
        request_id = request.path_params["request_id"]
        if not messages.could_be_request_id(request_id):
            return page("support_request.html", 404, lang="en", receipt=None, request_id=None)
        try:
            row, _tasks, events = await run_in_threadpool(store.get, request_id)
            receipt = await run_in_threadpool(store.receipt, request_id)
        except NotFound:
            return page("support_request.html", 404, lang="en", receipt=None, request_id=request_id)
        del row
        return page("support_request.html", lang="en", receipt=receipt, text_view=format_receipt(receipt),
                    events=events, iso=iso, request_id=request_id)

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_request: Request) -> Response:
        def ping() -> bool:
            try:
                db.ping(services.engine)
                return True
            except sa.exc.SQLAlchemyError:
                return False
        ok = await run_in_threadpool(ping)
        return PlainTextResponse("ok\n" if ok else "not ready\n", status_code=200 if ok else 503)

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/facebook/data-deletion", deletion, methods=["POST"]),
        Route("/status/{code}", status_page, methods=["GET"]),
        Route("/support", support_home, methods=["GET"]),
        Route("/support/search", support_search, methods=["POST"]),
        Route("/support/requests/{request_id}", support_request, methods=["GET"]),
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    buckets = TokenBuckets(web.rate_per_minute / 60.0, web.rate_burst)
    middleware = [
        Middleware(_AccessMetrics),
        Middleware(SecurityHeaders),
        Middleware(RateLimit, buckets=buckets, prefixes=PUBLIC_PREFIXES),
        Middleware(BodyLimit, limit=web.max_body_bytes),
    ]
    return Starlette(routes=routes, middleware=middleware)
