"""The JSON API and the health routes.

Reads go through the context's semaphore, so that however many requests arrive at once the
process holds a constant number of Redis connections. Writes need the bearer token.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runner import operator
from runner.config import Settings, parse_symbols
from runner.errors import ConfigError
from runner.health import health
from runner.models import Outcome
from runner.outcomes import Filters, parse_since
from runner.scorecard import build as build_scorecard
from runner.store import views
from runner.store.connection import Client
from runner.store.keys import Keys
from runner.store.replies import as_float
from runner.store.status import read_status
from runner.web.hub import Hub
from runner.web.requests import (
    BadRequest,
    CycleBody,
    KillSwitchBody,
    int_param,
    json_body,
    only_params,
    parse,
    token_problem,
)

#: ``/api/history`` without ``limit``, and its bounds.
HISTORY_DEFAULT, HISTORY_MAX = 50, 1000
#: The longest ``horizon`` ``/api/scorecard`` takes, in minutes (the longest one configurable).
HORIZON_MAX = 1440


class CycleBusy(Exception):
    """A cycle of this process is running: a second one is refused (409)."""


class Runtime(Protocol):
    """What the app needs from the process that serves it (``runner serve``)."""

    def basics(self) -> dict[str, Any]: ...

    async def ready_checks(self) -> dict[str, bool]: ...

    async def detailed(self) -> dict[str, Any]: ...

    async def topology(self) -> dict[str, Any]:
        """What ``runner status`` shows as ``redis``: the topology and its master now."""
        ...

    def metrics(self) -> bytes: ...

    async def run_now(self, symbols: list[str] | None) -> Outcome:
        """Run a cycle now; raises ``CycleBusy`` while one runs."""
        ...


@dataclass
class WebContext:
    """Everything a route reaches."""

    settings: Settings
    keys: Keys
    redis: Client
    hub: Hub
    runtime: Runtime
    #: Every Redis read of a request waits for one of these slots.
    reads: asyncio.Semaphore
    instance_id: str


class JsonResponse(JSONResponse):
    """JSON that also takes datetimes and other plain values (as ``runner status --json``)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=str, separators=(",", ":")).encode()


def context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


# Reads -----------------------------------------------------------------------------------------


async def latest(request: Request) -> Response:
    """``GET /api/latest``: symbol -> {signal, score, advice}, the latest of each."""
    only_params(request, set())
    ctx = context(request)
    async with ctx.reads:
        return JsonResponse(await views.read_latest(ctx.redis, ctx.keys))


async def status(request: Request) -> Response:
    """``GET /api/status``: what ``runner status --json`` prints."""
    only_params(request, set())
    ctx = context(request)
    now = datetime.now(UTC)
    async with ctx.reads:
        doc = await read_status(ctx.redis, ctx.keys, ctx.settings, now)
        doc["redis"] = await ctx.runtime.topology()
    code, problems = health(doc, ctx.settings, now.timestamp())
    return JsonResponse({**doc, "health": {"code": code, "problems": problems}})


async def history(request: Request) -> Response:
    """``GET /api/history?limit=N``: the last N cycle summaries, newest first."""
    limit = int_param(only_params(request, {"limit"}), "limit", HISTORY_DEFAULT, 1, HISTORY_MAX)
    ctx = context(request)
    async with ctx.reads:
        return JsonResponse(await views.read_history(ctx.redis, ctx.keys, limit))


async def scorecard(request: Request) -> Response:
    """``GET /api/scorecard?symbol=&model=&horizon=&since=``: what ``runner scorecard --json`` prints."""
    params = only_params(request, {"symbol", "model", "horizon", "since"})
    symbol = params.get("symbol")
    if symbol is not None:
        try:
            (symbol,) = parse_symbols(symbol)
        except (ConfigError, ValueError):
            raise BadRequest(f"symbol: must look like BASE/QUOTE (got {symbol[:40]!r})") from None
    model = params.get("model")
    if model is not None and not model.strip():
        raise BadRequest("model: must not be empty")
    horizon = int_param(params, "horizon", 0, 1, HORIZON_MAX) or None
    since = params.get("since", "all")
    try:
        days = None if since.strip().lower() == "all" else parse_since(since, 1_000_000)
    except ConfigError as exc:
        raise BadRequest(str(exc).replace("--since", "since", 1)) from None
    ctx = context(request)
    async with ctx.reads:
        doc = await build_scorecard(
            ctx.settings, Filters(symbol, model, horizon), days, datetime.now(UTC), redis=ctx.redis
        )
    return JsonResponse({**doc, "since": since})


# Writes ----------------------------------------------------------------------------------------


def authorize(request: Request) -> None:
    only_params(request, set())
    problem = token_problem(context(request).settings.api.token, request.headers.get("authorization"))
    if problem is not None:
        status_code, message = problem
        raise BadRequest(message, status_code)


async def run_cycle(request: Request) -> Response:
    """``POST /api/cycles``: run a cycle now and answer its outcome (``runner cycle --json``)."""
    authorize(request)
    raw = await json_body(request, required=False)
    # Only no body at all means "the configured symbols": [] or false is a body of the wrong type.
    body = parse(CycleBody, {} if raw is None else raw)
    try:
        outcome = await context(request).runtime.run_now(body.symbols)
    except CycleBusy as exc:
        raise BadRequest(str(exc), 409) from None
    doc = outcome.model_dump(mode="json", exclude={"stats"})
    if outcome.skip_reason == "cycle_running":
        # Another process holds this shard's cycle lease.
        return JsonResponse({"error": outcome.skip_detail or "a cycle is running", "cycle": doc}, 409)
    return JsonResponse(doc)


async def kill_switch(request: Request) -> Response:
    """``POST /api/kill-switch``: ``{"on": true, "reason": "..."}`` or ``{"on": false}``."""
    authorize(request)
    body = parse(KillSwitchBody, await json_body(request, required=True))
    ctx = context(request)
    change = await operator.set_kill_switch(
        ctx.redis,
        ctx.settings,
        on=body.on,
        reason=body.reason or "",
        by=f"{ctx.instance_id} (api)",
        now=datetime.now(UTC),
        command="POST /api/kill-switch",
    )
    state = change.state if body.on else {}
    kill = {
        "on": state.get("on") == "1",
        "reason": state.get("reason"),
        "by": state.get("by"),
        "at": as_float(state.get("at")),
    }
    return JsonResponse({"kill_switch": kill, "changed": change.changed})


# Health ----------------------------------------------------------------------------------------


async def health_basic(request: Request) -> Response:
    return JsonResponse({"status": "healthy", **context(request).runtime.basics()})


async def health_live(request: Request) -> Response:
    return JsonResponse({"status": "alive"})


async def health_ready(request: Request) -> Response:
    checks = await context(request).runtime.ready_checks()
    ok = all(checks.values())
    return JsonResponse({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)


async def health_detailed(request: Request) -> Response:
    return JsonResponse(await context(request).runtime.detailed())


async def metrics(request: Request) -> Response:
    return Response(context(request).runtime.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")
