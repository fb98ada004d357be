"""The Starlette application of ``runner serve``: the dashboard, the HTTP API and its event feed,
the health routes. Every error answers ``{"error": "<one line>"}`` with its status.

| route | what |
|---|---|
| ``GET /`` | the dashboard (``static/``: one page, no build step, nothing from elsewhere) |
| ``GET /api/events`` | Server-Sent Events: ``signal``, ``score``, ``advice``, ``report``, ``cycle`` |
| ``GET /api/latest`` | symbol -> {signal, score, advice} |
| ``GET /api/status`` | what ``runner status --json`` prints |
| ``GET /api/history?limit=N`` | the last N cycle summaries (1 to 1,000) |
| ``GET /api/scorecard`` | ``runner scorecard --json`` (``symbol``, ``model``, ``horizon``, ``since``) |
| ``POST /api/cycles`` | run a cycle now (bearer token; 409 while one runs) |
| ``POST /api/kill-switch`` | ``{"on": true, "reason": "..."}`` or ``{"on": false}`` (bearer token) |
| ``GET /health``, ``/health/live``, ``/health/ready``, ``/health/detailed`` | the probes |
| ``GET /metrics`` | the last cycle's metrics (Prometheus exposition) |
"""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runner.errors import RedisUnavailable, one_line
from runner.web import routes
from runner.web.events import EventsEndpoint
from runner.web.requests import BadRequest, error_response
from runner.web.routes import WebContext

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

#: The page loads nothing from elsewhere, and says so to the browser.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def create_app(ctx: WebContext) -> ASGIApp:
    """The application for one process (its hub, its Redis client, its runtime)."""
    events = EventsEndpoint(ctx.hub)
    app = Starlette(
        routes=[
            Route("/", index),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/api/events", events, methods=["GET"]),
            Route("/api/latest", routes.latest),
            Route("/api/status", routes.status),
            Route("/api/history", routes.history),
            Route("/api/scorecard", routes.scorecard),
            Route("/api/cycles", routes.run_cycle, methods=["POST"]),
            Route("/api/kill-switch", routes.kill_switch, methods=["POST"]),
            Route("/health", routes.health_basic),
            Route("/health/live", routes.health_live),
            Route("/health/ready", routes.health_ready),
            Route("/health/detailed", routes.health_detailed),
            Route("/metrics", routes.metrics),
        ],
        exception_handlers={
            HTTPException: _http_error,
            BadRequest: _bad_request,
            RedisUnavailable: _redis_unavailable,
            Exception: _internal_error,
        },
    )
    app.state.ctx = ctx
    return EventsFirst(events, SecurityHeaders(app))


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: f"not found: {request.url.path}", 405: f"method {request.method} not allowed here"}
    return error_response(exc.status_code, messages.get(exc.status_code, one_line(exc)), exc.headers)


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    headers = {"WWW-Authenticate": 'Bearer realm="runner"'} if exc.status == 401 else None
    return error_response(exc.status, str(exc), headers)


async def _redis_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return error_response(503, one_line(exc))


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug still answers in the one error shape (uvicorn logs the exception itself)."""
    return error_response(500, f"internal error ({type(exc).__name__}); see the server's log")


class EventsFirst:
    """``GET /api/events`` straight to its endpoint, everything else to Starlette: an event
    stream's every write then skips the middleware's layers, which at a thousand clients is a
    large share of the cost of one event."""

    def __init__(self, events: ASGIApp, app: ASGIApp) -> None:
        self.events = events
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/events" and scope["method"] in ("GET", "HEAD"):
            await self.events(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class SecurityHeaders:
    """Headers every response carries: no sniffing, no referrer, the page's content policy,
    and no caching of the dashboard's files (a new version is seen at the next load)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"] == "/" or scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                ]
                if static:
                    headers.append((b"cache-control", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
