"""What one cycle reads and writes in Redis, as one object the cycle talks to.

``CycleStore`` is a live run: it takes the lease, keeps the heartbeat, locks the symbols,
publishes, records and archives. ``DryRunStore`` reads the same state and writes nothing (no
heartbeat, no lease, no locks, no publish, no record, no archive), so a dry run follows the same
steps as a live one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runner import breaker
from runner.breaker import BreakerState
from runner.clock import Clock
from runner.config import Settings
from runner.errors import RedisUnavailable
from runner.guards import Snapshot
from runner.store.archive import ArchiveStore
from runner.store.connection import Client
from runner.store.keys import Keys
from runner.store.locks import Heartbeat, LockManager, LockResult, LockStatus, Owner
from runner.store.publish import Confirmation, DryPublisher, Publisher
from runner.store.ratelimit import RateLimiter
from runner.store.state import RecordResult, StateStore, lease_ttl

log = logging.getLogger(__name__)


@dataclass
class Holding:
    """What a run holds while it works: its locks, and the publisher that may use them."""

    locks: dict[str, LockResult]
    publisher: Publisher | DryPublisher

    def owned(self) -> list[str]:
        return [s for s, lr in self.locks.items() if lr.owned]


class CycleStore:
    """One live cycle's Redis steps; each is one round trip."""

    dry_run = False

    def __init__(
        self,
        client: Client,
        keys: Keys,
        settings: Settings,
        shard_key: str,
        owner: Owner,
        clock: Clock,
        replicas: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.owner = owner
        self.clock = clock
        #: How many replicas the master has (to confirm what is published); None: never ask.
        self.replicas = replicas
        self.state = StateStore(client, keys, shard_key, settings.redis.socket_timeout_seconds)
        self.shard_key = shard_key

    async def begin(self, now: datetime) -> Snapshot:
        """Heartbeat, lease and every guard's state (one script)."""
        s = self.settings
        return await self.state.begin(
            self.owner,
            now,
            lease_ttl=lease_ttl(s.timeouts.total_timeout_seconds, s.graceful_shutdown.timeout_seconds),
            stale_seconds=s.locks.stale_threshold_seconds,
            heartbeat_ttl=s.heartbeat.ttl_seconds,
            latency_n=s.adaptive.latency_window_size,
            readonly=self.dry_run,
        )

    async def claim_probes(
        self, state: BreakerState, wanted: int, now: float
    ) -> tuple[BreakerState, int | None]:
        """Move a due breaker to half-open and take up to ``wanted`` probe calls for this run."""
        cfg = self.settings.circuit_breaker.llm_service
        granted = 0

        def claim(current: BreakerState) -> BreakerState | None:
            nonlocal granted
            new, granted = breaker.claim_probes(current, wanted, now, cfg)
            return new if granted else None

        state, saved = await self.state.update_breaker(claim, state)
        return state, granted if saved else 0

    def rate_limiter(self, remote: bool) -> RateLimiter | None:
        """The shared rate limit, for an analyzer whose calls are remote."""
        if not remote:
            return None
        return RateLimiter(self.client, self.keys, self.settings.rate_limit.requests_per_minute)

    @contextlib.asynccontextmanager
    async def hold(
        self,
        symbols: list[str],
        budget: Callable[[], float],
        on_redis: Callable[[RedisUnavailable], None] | None = None,
    ) -> AsyncIterator[Holding]:
        """Keep the heartbeat alive, lock ``symbols`` and publish while inside the block; on the way
        out, stop the heartbeat, flush what is left to publish and confirm it (within ``budget()``
        seconds). ``on_redis`` is told when Redis fails the cycle: the master moved or is gone
        (from any step), or the locks could not be taken (then none is held)."""
        s = self.settings
        heartbeat = Heartbeat(
            self.client,
            self.keys,
            self.owner,
            self.clock,
            s.heartbeat.ttl_seconds,
            s.heartbeat.interval_seconds,
            on_topology=on_redis,
        )
        locks = LockManager(
            self.client,
            self.keys,
            self.owner,
            self.clock,
            s.locks.ttl_seconds,
            s.locks.stale_threshold_seconds,
        )
        confirmation = None
        if self.replicas is not None:
            confirmation = Confirmation(
                self.replicas, s.redis.replica_ack_timeout_seconds, s.redis.socket_timeout_seconds
            )
        publisher = Publisher(
            self.client,
            self.keys,
            budget,
            owner=self.owner.cycle_id,
            confirmation=confirmation,
            on_topology=on_redis,
        )
        heartbeat.start()
        try:
            try:
                taken = await locks.acquire(symbols)
            except RedisUnavailable as exc:
                if on_redis is None:
                    raise
                on_redis(exc)  # the reply may be lost with the locks taken: they expire on their own
                taken = {}
            holding = Holding(taken, publisher)
            for symbol, lr in holding.locks.items():
                if lr.status is LockStatus.TAKEN_OVER:
                    was = lr.previous_owner()
                    log.warning(
                        "took over the stale lock of %s (%s; held by %s, cycle %s)",
                        symbol,
                        lr.reason,
                        was.get("instance_id", "?"),
                        was.get("cycle_id", "?"),
                    )
            publisher.start()
            try:
                yield holding
            finally:
                await publisher.close()
        finally:
            await heartbeat.stop(within=min(s.redis.socket_timeout_seconds + 1, budget()))

    async def record(
        self, payload: dict[str, Any], lock_keys: list[str], outcome_symbols: list[str], day: datetime
    ) -> RecordResult | None:
        """Write the outcome, score what matured and release what the run holds (one script)."""
        return await self.state.record(
            payload,
            lock_keys=lock_keys,
            instance_id=self.owner.instance_id,
            day=day,
            outcome_symbols=outcome_symbols,
        )

    async def release(self, lock_keys: list[str], lock_values: list[str], lease_value: str) -> int:
        """Release what the run holds without recording (Redis refused the record step)."""
        return await self.state.release(self.owner, lock_keys, lock_values, lease_value)

    async def update_breaker(
        self, mutate: Callable[[BreakerState], BreakerState | None], state: BreakerState | None
    ) -> tuple[BreakerState, bool]:
        return await self.state.update_breaker(mutate, state)

    def archiver(self) -> ArchiveStore | None:
        """The archive's cursor and progress (what the archive step reads and moves forward)."""
        return ArchiveStore(self.client, self.keys, self.shard_key)


class DryRunStore(CycleStore):
    """Reads what a live run reads; writes nothing and holds nothing."""

    dry_run = True

    async def claim_probes(
        self, state: BreakerState, wanted: int, now: float
    ) -> tuple[BreakerState, int | None]:
        return state, None  # a dry run claims no probe: it cannot change the breaker

    def rate_limiter(self, remote: bool) -> RateLimiter | None:
        return None

    @contextlib.asynccontextmanager
    async def hold(
        self,
        symbols: list[str],
        budget: Callable[[], float],
        on_redis: Callable[[RedisUnavailable], None] | None = None,
    ) -> AsyncIterator[Holding]:
        locks = {s: LockResult(self.keys.lock(s), LockStatus.ACQUIRED, 0, "") for s in symbols}
        yield Holding(locks, DryPublisher())

    async def record(
        self, payload: dict[str, Any], lock_keys: list[str], outcome_symbols: list[str], day: datetime
    ) -> RecordResult | None:
        return None

    def archiver(self) -> ArchiveStore | None:
        return None  # a dry run published nothing, so it archives nothing
