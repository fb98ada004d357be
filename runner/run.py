"""What a running cycle carries from step to step: what it talks to (``Deps``), how a signal
handler stops it (``Control``) and its mutable state (``RunState``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

import redis.asyncio as aioredis

from runner import adaptive
from runner.analyzers.base import Analyzer
from runner.breaker import BreakerState, Event
from runner.clock import Clock, Deadline
from runner.config import Settings
from runner.guards import Decision
from runner.locks import LockResult, Owner
from runner.market.base import CandleSource
from runner.ratelimit import RateLimiter
from runner.shards import Shard

log = logging.getLogger(__name__)


@dataclass
class Deps:
    """What a cycle talks to; tests pass fakes."""

    redis: aioredis.Redis
    analyzer: Analyzer
    market: CandleSource
    clock: Clock


@dataclass
class Control:
    """Lets a signal handler stop a running cycle gracefully."""

    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    grace_seconds: float = 30.0
    _timeouts: list[asyncio.Timeout] = field(default_factory=list)
    _deadline: Deadline | None = None

    def stop(self) -> None:
        """Start no new symbol; give in-flight ones the grace period, then cancel them."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        log.warning("stopping: no new symbol starts, those in flight get %gs", self.grace_seconds)
        if self._deadline is not None:
            self._deadline.shorten(self.grace_seconds)
        loop = asyncio.get_running_loop()
        for t in self._timeouts:
            when = t.when()
            target = loop.time() + self.grace_seconds
            if when is None or when > target:
                t.reschedule(target)


@dataclass
class RunState:
    """Mutable state of one running cycle (kept out of the step functions' signatures)."""

    settings: Settings
    deps: Deps
    owner: Owner
    shard: Shard
    minute: datetime
    started: datetime
    deadline: Deadline
    decision: Decision
    dry_run: bool
    breaker_base: BreakerState
    breaker_live: BreakerState
    probes_left: int | None
    locks: dict[str, LockResult] = field(default_factory=dict)
    events: list[tuple[Event, float]] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    auth_failure: str | None = None
    rejected: int = 0
    limiter: RateLimiter | None = None
    samples: list[adaptive.Sample] = field(default_factory=list)
    spent_before: float = 0.0
    spent_usd: float = 0.0
    remote_calls: int = 0
    warnings: list[str] = field(default_factory=list)
