"""``runner serve``: the long-running mode. The same ``run_cycle`` on the configured cron schedule,
one cycle at a time (or none: ``--no-schedule``, beside the CronJob), and the web app
(``runner.web``: the dashboard, the HTTP API, its event feed, the health routes) on uvicorn.

SIGTERM or SIGINT: no new cycle; the running one gets the grace period; then every event stream
gets a last ``shutdown`` event, the server closes and the process exits 0. The one-shot
``runner cycle`` stays the product; this mode reuses it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
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
from runner.store.status import read_readiness, read_status
from runner.web.app import create_app
from runner.web.feed import sources
from runner.web.hub import Hub
from runner.web.routes import CycleBusy, WebContext

log = logging.getLogger(__name__)

#: Redis reads that requests, probes and event-stream clients may have in flight at once: with
#: the one connection the event feed's reader blocks on, the app holds two connections however
#: many clients it has (cycles, when it runs them, use their own).
WEB_READ_SLOTS = 1
#: Seconds the server waits for its connections to close after the last events went out.
CLOSE_SECONDS = 5.0


@dataclass
class ServiceState:
    """What the health routes report."""

    instance_id: str
    started: float = field(default_factory=time.monotonic)
    last: Outcome | None = None
    registry: CollectorRegistry | None = None
    running: bool = False
    running_since: datetime | None = None
    next_run: datetime | None = None
    redis_breaker: breaker.BreakerState = field(default_factory=breaker.BreakerState)


def next_fire(schedule: str, now: datetime) -> datetime:
    """The next time the cron schedule fires after ``now`` (UTC)."""
    nxt: datetime = croniter(schedule, now).get_next(datetime)
    return nxt


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or one ``ConfigError`` line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"--host: cannot listen on {host!r} ({exc.strerror or exc})") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--port: cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handlers: the service handles SIGTERM and SIGINT itself, in order
    (stop scheduling, finish the cycle, close the event streams, then the server)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _UnfinishedResponse(logging.Filter):
    """A dropped event-stream client's response is left unfinished on purpose (its socket takes
    no writes); uvicorn's error line about it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


class RedisBreakerOpen(RedisUnavailable):
    """The process's Redis breaker is open: no cycle tries Redis until it may probe."""


class Service:
    """The scheduler loop, the cycles run on request, and what the web app asks of them."""

    def __init__(self, settings: Settings, shard: Shard, *, schedule: bool = True) -> None:
        if schedule and not croniter.is_valid(settings.schedule):
            raise ConfigError(
                f"autonomous_runner.schedule: not a valid cron expression (got {settings.schedule!r})"
            )
        self.settings = settings
        self.shard = shard
        self.schedule = schedule
        self.keys = Keys.for_settings(settings)
        self.state = ServiceState(instance_id=resolve_instance_id(settings))
        self.stopping = asyncio.Event()
        self.control: Control | None = None
        self.deps: Deps | None = None
        self.hub: Hub | None = None
        self.reads = asyncio.Semaphore(WEB_READ_SLOTS)
        self._cycle = asyncio.Lock()

    def stop(self) -> None:
        """SIGTERM: no new cycle; the current one gets the grace period."""
        self.stopping.set()
        if self.control is not None:
            self.control.stop()

    async def run(self, host: str, port: int) -> None:
        sock = listen(host, port)
        try:
            async with open_deps(self.settings) as deps:
                self.deps = deps
                await self._serve(deps, sock, host, port)
        finally:
            sock.close()

    async def _serve(self, deps: Deps, sock: socket.socket, host: str, port: int) -> None:
        api = self.settings.api
        reads = self.reads
        hub = Hub(
            deps.redis,
            self.keys,
            sources(self.keys),
            queue_limit=api.sse_client_queue,
            ping_seconds=api.sse_ping_seconds,
            # One blocking read must end well within the client's socket timeout.
            block_ms=max(100, int(self.settings.redis.socket_timeout_seconds * 500)),
            reads=reads,
        )
        self.hub = hub
        ctx = WebContext(self.settings, self.keys, deps.redis, hub, self, reads, self.state.instance_id)
        config = uvicorn.Config(
            create_app(ctx),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            ws="none",
            timeout_graceful_shutdown=int(CLOSE_SECONDS),
        )
        server = _Server(config)
        logging.getLogger("uvicorn.error").addFilter(_UnfinishedResponse())
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        hub.start()
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        shown = f"[{host}]" if ":" in host else host
        mode = f"schedule {self.settings.schedule!r}" if self.schedule else "no schedule"
        log.info("serving the dashboard on http://%s:%d/ (%s)", shown, port, mode)
        try:
            work = asyncio.create_task(self._schedule(deps) if self.schedule else self.stopping.wait())
            await asyncio.wait({serving, work}, return_when=asyncio.FIRST_COMPLETED)
            self.stop()
            await work
            async with self._cycle:  # a cycle run on request finishes too
                pass
        finally:
            hub.close("the server is shutting down")
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await hub.aclose()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            log.info("stopped")

    async def _schedule(self, deps: Deps) -> None:
        while not self.stopping.is_set():
            fire = next_fire(self.settings.schedule, datetime.now(UTC))
            self.state.next_run = fire
            delay = max(0.0, (fire - datetime.now(UTC)).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                break
            async with self._cycle:
                await self._one_cycle(deps, fire)

    async def _one_cycle(self, deps: Deps, fire: datetime) -> None:
        """A scheduled cycle: an outage is logged, not raised (the next one comes)."""
        try:
            await self._cycle_now(deps, fire, None)
        except RedisBreakerOpen:
            pass  # said when it was found open
        except RedisUnavailable as exc:
            log.error("cycle failed: %s", exc)

    async def run_now(self, symbols: list[str] | None) -> Outcome:
        """A cycle run on request (``POST /api/cycles``), in this minute."""
        if self.stopping.is_set():
            raise CycleBusy("the server is shutting down")
        if self._cycle.locked() or self.deps is None:
            since = self.state.running_since
            raise CycleBusy(
                "a cycle of this server is running"
                + (f" (since {iso_ms(since)})" if since is not None else "")
            )
        async with self._cycle:
            return await self._cycle_now(self.deps, None, symbols)

    async def _cycle_now(self, deps: Deps, fire: datetime | None, symbols: list[str] | None) -> Outcome:
        # The Redis breaker lives in this process: its state cannot be kept in the Redis it
        # protects. While it is open, cycles are skipped instead of piling up connection
        # attempts against a Redis that is down.
        cfg = self.settings.circuit_breaker.redis
        now = time.time()
        gate = breaker.gate(self.state.redis_breaker, now, cfg)
        if not gate.allow:
            until = iso_ms(datetime.fromtimestamp(gate.retry_at or now, UTC))
            log.warning("skipped: Redis circuit breaker open until %s", until)
            raise RedisBreakerOpen(f"Redis circuit breaker open until {until}")
        if gate.probes is not None:
            self.state.redis_breaker, _ = breaker.claim_probes(self.state.redis_breaker, 1, now, cfg)
        settings = self.settings
        if fire is not None:
            settings = settings.model_copy(update={"scheduled_at": fire.isoformat()})
        self.control = Control(grace_seconds=settings.graceful_shutdown.timeout_seconds)
        if self.stopping.is_set():
            self.control.stop()
        self.state.running, self.state.running_since = True, datetime.now(UTC)
        event = breaker.Event.SUCCESS
        try:
            outcome = await run_cycle(
                settings,
                deps,
                symbols=symbols,
                shard=self.shard,
                control=self.control,
                exports=Exports(on_metrics=self._keep_metrics),
            )
            self.state.last = outcome
            return outcome
        except RedisUnavailable:
            event = breaker.Event.FAILURE
            raise
        finally:
            self.state.running, self.state.running_since = False, None
            self.control = None
            self.state.redis_breaker = breaker.transition(self.state.redis_breaker, event, time.time(), cfg)

    def _keep_metrics(self, registry: CollectorRegistry) -> None:
        self.state.registry = registry

    # What the health routes answer --------------------------------------------------------------

    def basics(self) -> dict[str, Any]:
        return {
            "instance_id": self.state.instance_id,
            "uptime_seconds": round(time.monotonic() - self.state.started, 1),
            "cycle_running": self.state.running,
            "schedule": self.settings.schedule if self.schedule else None,
            "redis_breaker": self.state.redis_breaker.state,
            "next_run": iso_ms(self.state.next_run) if self.state.next_run else None,
        }

    async def topology(self) -> dict[str, Any]:
        if self.deps is None or self.deps.topology is None:
            return {"topology": "unknown", "error": "not connected"}
        return await self.deps.topology()

    def metrics(self) -> bytes:
        return generate_latest(self.state.registry or CollectorRegistry())

    async def ready_checks(self) -> dict[str, bool]:
        """Redis reachable, the analyzer breaker closed, this shard not cooling down: one round trip."""
        down = {"redis_connected": False, "circuit_breaker_closed": False, "not_in_cooldown": False}
        if self.deps is None or self.state.redis_breaker.state == "open":
            return down
        try:
            async with self.reads:
                state, cooldown = await read_readiness(self.deps.redis, self.keys, self.shard.key)
        except RedisUnavailable:
            return down
        return {
            "redis_connected": True,
            "circuit_breaker_closed": state != "open",
            "not_in_cooldown": cooldown == 0,
        }

    async def detailed(self) -> dict[str, Any]:
        doc = None
        if self.deps is not None:
            with contextlib.suppress(RedisUnavailable):
                async with self.reads:
                    doc = await read_status(self.deps.redis, self.keys, self.settings, datetime.now(UTC))
        body: dict[str, Any] = {**self.basics(), "redis_connected": doc is not None}
        if self.hub is not None:
            stats = self.hub.stats
            body["events"] = {
                "clients": len(self.hub.subscribers),
                "published": stats.events,
                "dropped_clients": stats.dropped,
                "unreadable_entries": stats.unreadable,
                "reader": "reading" if stats.reader_ok else "retrying",
                "reader_error": stats.reader_error,
            }
        if self.state.last is not None:
            body["last_cycle"] = self.state.last.summary()
        if doc is None:
            body["status"] = "unhealthy"
            return body
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
        return body
