"""``runner serve``: the specification's long-running alternative, kept thin.

The same ``run_cycle`` on the configured cron schedule, one cycle at a time, plus a small HTTP
server: ``/health``, ``/health/live``, ``/health/ready`` (503 when Redis is unreachable, the
breaker is open or a cooldown is on), ``/health/detailed`` and ``/metrics``. SIGTERM stops the
schedule, lets the current cycle finish within the grace period, and exits. The one-shot
``runner cycle`` stays the product; this mode reuses it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from croniter import croniter
from prometheus_client import CollectorRegistry, generate_latest

from runner import breaker
from runner.clock import iso_ms
from runner.config import Settings
from runner.cycle import Control, Deps, Exports, run_cycle
from runner.errors import ConfigError, RedisUnavailable
from runner.factory import open_deps
from runner.health import health
from runner.identity import resolve_instance_id
from runner.models import Outcome
from runner.shards import Shard
from runner.store.keys import Keys
from runner.store.status import read_status

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192


@dataclass
class ServiceState:
    """What the HTTP endpoints report."""

    instance_id: str
    started: float = field(default_factory=time.monotonic)
    last: Outcome | None = None
    registry: CollectorRegistry | None = None
    running: bool = False
    next_run: datetime | None = None
    redis_breaker: breaker.BreakerState = field(default_factory=breaker.BreakerState)


def next_fire(schedule: str, now: datetime) -> datetime:
    """The next time the cron schedule fires after ``now`` (UTC)."""
    nxt: datetime = croniter(schedule, now).get_next(datetime)
    return nxt


class Service:
    """The scheduler loop and the HTTP endpoints around ``run_cycle``."""

    def __init__(self, settings: Settings, shard: Shard) -> None:
        if not croniter.is_valid(settings.schedule):
            raise ConfigError(
                f"autonomous_runner.schedule: not a valid cron expression (got {settings.schedule!r})"
            )
        self.settings = settings
        self.shard = shard
        self.state = ServiceState(instance_id=resolve_instance_id(settings))
        self.stopping = asyncio.Event()
        self.control: Control | None = None
        self.deps: Deps | None = None

    def stop(self) -> None:
        """SIGTERM: no new cycle; the current one gets the grace period."""
        self.stopping.set()
        if self.control is not None:
            self.control.stop()

    async def run(self, host: str, port: int) -> None:
        async with open_deps(self.settings) as deps:
            self.deps = deps
            await self._serve(deps, host, port)

    async def _serve(self, deps: Deps, host: str, port: int) -> None:
        server = await asyncio.start_server(self._serve_http, host, port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        log.info("serving on %s:%d, schedule %r", host, port, self.settings.schedule)
        try:
            while not self.stopping.is_set():
                fire = next_fire(self.settings.schedule, datetime.now(UTC))
                self.state.next_run = fire
                delay = max(0.0, (fire - datetime.now(UTC)).total_seconds())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                if self.stopping.is_set():
                    break
                await self._one_cycle(deps, fire)
        finally:
            server.close()
            await server.wait_closed()
            log.info("stopped")

    async def _one_cycle(self, deps: Deps, fire: datetime) -> None:
        # The Redis breaker lives in this process: its state cannot be kept in the Redis it
        # protects. While it is open, scheduled cycles are skipped instead of piling up
        # connection attempts against a Redis that is down.
        cfg = self.settings.circuit_breaker.redis
        now = time.time()
        gate = breaker.gate(self.state.redis_breaker, now, cfg)
        if not gate.allow:
            log.warning(
                "skipped: Redis circuit breaker open until %s",
                iso_ms(datetime.fromtimestamp(gate.retry_at or now, UTC)),
            )
            return
        if gate.probes is not None:
            self.state.redis_breaker, _ = breaker.claim_probes(self.state.redis_breaker, 1, now, cfg)
        settings = self.settings.model_copy(update={"scheduled_at": fire.isoformat()})
        self.control = Control(grace_seconds=settings.graceful_shutdown.timeout_seconds)
        self.state.running = True
        event = breaker.Event.SUCCESS
        try:
            self.state.last = await run_cycle(
                settings,
                deps,
                shard=self.shard,
                control=self.control,
                exports=Exports(on_metrics=self._keep_metrics),
            )
        except RedisUnavailable as exc:
            event = breaker.Event.FAILURE
            log.error("cycle failed: %s", exc)
        finally:
            self.state.running = False
            self.control = None
            self.state.redis_breaker = breaker.transition(self.state.redis_breaker, event, time.time(), cfg)

    def _keep_metrics(self, registry: CollectorRegistry) -> None:
        self.state.registry = registry

    # HTTP --------------------------------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        parts = head[:MAX_REQUEST_BYTES].split(b"\r\n", 1)[0].decode("latin-1").split()
        method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
        if method not in ("GET", "HEAD"):
            status, ctype, body = 405, "application/json", b'{"error":"method not allowed"}'
        else:
            status, ctype, body = await self.route(path)
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
        writer.write(
            f"HTTP/1.1 {status} {reason.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        if method != "HEAD":
            writer.write(body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def route(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        if path == "/metrics":
            reg = self.state.registry or CollectorRegistry()
            return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(reg)
        if path == "/health/live":
            return self._json(200, {"status": "alive"})
        if path == "/health":
            return self._json(200, {"status": "healthy", **self._basics()})
        if path == "/health/ready":
            checks = await self._ready_checks()
            ok = all(checks.values())
            return self._json(
                200 if ok else 503, {"status": "ready" if ok else "not_ready", "checks": checks}
            )
        if path == "/health/detailed":
            return await self._detailed()
        return self._json(404, {"error": "not found"})

    def _basics(self) -> dict[str, Any]:
        return {
            "instance_id": self.state.instance_id,
            "uptime_seconds": round(time.monotonic() - self.state.started, 1),
            "cycle_running": self.state.running,
            "redis_breaker": self.state.redis_breaker.state,
            "next_run": iso_ms(self.state.next_run) if self.state.next_run else None,
        }

    async def _status_doc(self) -> dict[str, Any] | None:
        if self.deps is None:
            return None
        try:
            return await read_status(
                self.deps.redis, Keys.for_settings(self.settings), self.settings, datetime.now(UTC)
            )
        except RedisUnavailable:
            return None

    async def _ready_checks(self) -> dict[str, bool]:
        doc = await self._status_doc()
        if doc is None or self.state.redis_breaker.state == "open":
            return {"redis_connected": False, "circuit_breaker_closed": False, "not_in_cooldown": False}
        cooldown = doc["cooldown"].get(self.shard.label, {})
        return {
            "redis_connected": True,
            "circuit_breaker_closed": doc["breaker"]["state"] != "open",
            "not_in_cooldown": int(cooldown.get("cooldown_remaining") or 0) == 0,
        }

    async def _detailed(self) -> tuple[int, str, bytes]:
        doc = await self._status_doc()
        last = self.state.last
        body: dict[str, Any] = {**self._basics(), "redis_connected": doc is not None}
        if last is not None:
            body["last_cycle"] = last.summary()
        if doc is not None:
            code, problems = health(doc, self.settings, datetime.now(UTC).timestamp())
            body.update(
                status={0: "healthy", 1: "degraded", 3: "unhealthy"}[code],
                problems=problems,
                circuit_breakers={
                    "llm_service": {**doc["breaker"], "value": breaker.STATE_VALUE[doc["breaker"]["state"]]}
                },
                adaptive=doc["adaptive"],
                backpressure=doc["cooldown"],
                active_locks=len(doc["locks"]),
                kill_switch=doc["kill_switch"],
                paused=doc["paused"],
            )
        else:
            body["status"] = "unhealthy"
        return self._json(200, body)

    @staticmethod
    def _json(status: int, doc: dict[str, Any]) -> tuple[int, str, bytes]:
        return status, "application/json", json.dumps(doc, default=str).encode()
