"""What a running cycle carries from step to step: what it talks to (``Deps``), how a signal
handler stops it (``Control``), what it exports to (``Exports``) and the facts fixed at its start
(``Run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.analyzers.base import Analyzer
from runner.clock import Clock, Deadline
from runner.config import Settings
from runner.errors import RedisUnavailable
from runner.market.base import CandleSource
from runner.pipeline.base import Stages
from runner.shards import Shard
from runner.store.connection import Client
from runner.store.cycle_store import CycleStore
from runner.store.keys import Keys
from runner.store.locks import Owner

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

#: Publishing, recording and releasing may run past the deadline by at most this much.
WIND_DOWN_MAX_SECONDS = 5.0


@dataclass
class Deps:
    """What a cycle talks to; tests pass fakes."""

    redis: Client
    analyzer: Analyzer
    market: CandleSource
    clock: Clock
    #: Who answers the stages after the signal (built in unless the settings say otherwise).
    stages: Stages = field(default_factory=Stages)
    #: How many replicas the Redis master has, for confirming what a run publishes; None: never
    #: ask (a test's fake, the embedded Redis).
    replicas: Callable[[], Awaitable[int]] | None = None
    #: The topology and its master now (``RedisHandle.describe``); None: a test's fake.
    topology: Callable[[], Awaitable[dict[str, Any]]] | None = None


@dataclass
class Exports:
    """Where a cycle's metrics go besides Redis: the Pushgateway (from the settings), a textfile,
    a callback (``runner serve`` keeps the registry for ``/metrics``)."""

    metrics_file: str | None = None
    on_metrics: Callable[[CollectorRegistry], None] | None = None

    def wanted(self, settings: Settings) -> bool:
        return bool(settings.metrics.pushgateway_url or self.metrics_file or self.on_metrics)


@dataclass
class Control:
    """Lets a signal handler stop a running cycle gracefully, and Redis end it at once."""

    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    grace_seconds: float = 30.0
    #: Why the cycle was ended early: the master moved or is gone (see ``abort``).
    aborted: RedisUnavailable | None = None
    _timeouts: list[asyncio.Timeout] = field(default_factory=list)
    _deadline: Deadline | None = None

    def attach(self, deadline: Deadline) -> None:
        """The cycle's deadline, brought forward to the grace period on ``stop``."""
        self._deadline = deadline

    @contextlib.asynccontextmanager
    async def bounded(self, seconds: float) -> AsyncIterator[asyncio.Timeout]:
        """``asyncio.timeout(seconds)`` that ``stop`` shortens to the grace period."""
        async with asyncio.timeout(seconds) as timeout:
            self._timeouts.append(timeout)
            if self.stopping.is_set():
                self._shorten(timeout, 0.0 if self.aborted else None)
            try:
                yield timeout
            finally:
                self._timeouts.remove(timeout)

    def stop(self) -> None:
        """Start no new symbol; give in-flight ones the grace period, then cancel them."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        log.warning("stopping: no new symbol starts, those in flight get %gs", self.grace_seconds)
        if self._deadline is not None:
            self._deadline.shorten(self.grace_seconds)
        for timeout in self._timeouts:
            self._shorten(timeout)

    def abort(self, reason: RedisUnavailable) -> None:
        """End the cycle now (the Redis master moved or is gone): start nothing more, cut off what
        is in flight without a grace period, keep the first reason. What can still be released
        is released on the way out; the next run finds the master anew."""
        if self.aborted is None:
            self.aborted = reason
            log.warning("ending the cycle: %s", reason)
        self.stopping.set()
        if self._deadline is not None:
            self._deadline.shorten(0)
        for timeout in self._timeouts:
            self._shorten(timeout, 0.0)

    def _shorten(self, timeout: asyncio.Timeout, grace: float | None = None) -> None:
        target = asyncio.get_running_loop().time() + (self.grace_seconds if grace is None else grace)
        when = timeout.when()
        if when is None or when > target:
            timeout.reschedule(target)


@dataclass(frozen=True)
class Run:
    """The facts of one cycle fixed at its start."""

    settings: Settings
    deps: Deps
    owner: Owner
    shard: Shard
    #: The scheduled minute the run belongs to (signal ids are per minute).
    minute: datetime
    started: datetime
    #: ``deps.clock.monotonic()`` at the start.
    t0: float
    deadline: Deadline
    keys: Keys
    store: CycleStore
    exports: Exports

    @property
    def dry_run(self) -> bool:
        return self.store.dry_run

    def elapsed_ms(self) -> int:
        return int((self.deps.clock.monotonic() - self.t0) * 1000)

    def budget(self) -> float:
        """Seconds the wind-down (publish, record, release) may still take."""
        wind_down = min(self.settings.graceful_shutdown.timeout_seconds / 2, WIND_DOWN_MAX_SECONDS)
        return max(0.05, self.deadline.at + wind_down - self.deps.clock.monotonic())
