"""Symbol locks, the heartbeat, stale takeover and fencing tokens.

A lock is a key holding its owner record (JSON: instance_id, cycle_id, pid, acquired_at,
token). Acquire, takeover and release are each done inside one Lua script
(``scripts.TAKE``), never GET then SET from Python:

* a free key is taken with a new fencing token: max(counter + 1, the master's clock in ms), so
  tokens keep growing even when a failover loses the counter's last increments;
* a held key is taken over, in the same script, when its owner's heartbeat for that cycle is gone
  or the lock is older than the stale threshold (or the record is unreadable);
* release (by the publish and record scripts) deletes only when the key still holds exactly our
  record (compare-and-delete).

The heartbeat is a hash per instance mapping cycle_id -> expiry (epoch seconds), with the key's
TTL as a second guard, so two runs that share an instance id (two terminals on one host) still
tell their locks apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from runner.clock import Clock
from runner.errors import RedisUnavailable, ends_cycle
from runner.store import scripts
from runner.store.connection import Client, Script, redis_errors
from runner.store.keys import Keys

log = logging.getLogger(__name__)


class LockStatus(StrEnum):
    """What trying to take a lock (or the cycle lease) gave."""

    ACQUIRED = "acquired"
    TAKEN_OVER = "taken_over"
    HELD = "held"


@dataclass(frozen=True)
class LockResult:
    """Outcome of trying to take one lock."""

    key: str
    status: LockStatus
    token: int
    value: str
    reason: str = ""
    #: The record a takeover replaced.
    previous: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", LockStatus(self.status))

    @property
    def owned(self) -> bool:
        return self.status is not LockStatus.HELD

    def owner(self) -> dict[str, Any]:
        """The owner record stored in the lock (ours, or the live holder's)."""
        return _record(self.value)

    def previous_owner(self) -> dict[str, Any]:
        """The record a takeover replaced (empty when there was none or it was garbage)."""
        return _record(self.previous)


def _record(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Owner:
    """Who we are, as written into every lock we take."""

    instance_id: str
    cycle_id: str
    pid: int = field(default_factory=os.getpid)

    def to_arg(self) -> dict[str, Any]:
        """The owner as the lock scripts take it."""
        return {"instance_id": self.instance_id, "cycle_id": self.cycle_id, "pid": self.pid}


def parse_take(key: str, row: list[Any]) -> LockResult:
    """A ``take`` reply of the lock scripts as a ``LockResult``."""
    status, token, value, reason, previous = row
    return LockResult(
        key, LockStatus(str(status)), int(token), str(value), str(reason or ""), str(previous or "")
    )


class LockManager:
    """Takes this cycle's locks in one round trip. They are released by the publish script (once a
    symbol's work is published) or by the record script (whatever is left)."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        owner: Owner,
        clock: Clock,
        ttl_seconds: int,
        stale_seconds: int,
    ) -> None:
        self.client = client
        self.keys = keys
        self.owner = owner
        self.clock = clock
        self.ttl = ttl_seconds
        self.stale = stale_seconds
        self._acquire = Script(client, scripts.ACQUIRE)

    async def acquire(self, symbols: list[str]) -> dict[str, LockResult]:
        """Try to take every symbol's lock in one script; returns a result per symbol."""
        if not symbols:
            return {}
        lock_keys = [self.keys.lock(s) for s in symbols]
        keys, args = scripts.pack(
            {"fencing": self.keys.fencing},
            {"locks": lock_keys},
            {
                "owner": self.owner.to_arg(),
                "now": self.clock.now().timestamp(),
                "ttl": self.ttl,
                "stale": self.stale,
                "hb_prefix": self.keys.heartbeat_prefix,
            },
        )
        async with redis_errors("lock acquisition"):
            raw = await self._acquire(keys, args)
        rows = json.loads(raw)
        return {s: parse_take(k, row) for s, k, row in zip(symbols, lock_keys, rows, strict=True)}


class Heartbeat:
    """Keeps ``runner:heartbeat:<instance_id>`` alive for this cycle, in the background.

    ``on_topology`` is told when a refresh finds the master moved or gone, or Redis refusing it
    (full, no permission): the cycle then ends.
    """

    def __init__(
        self,
        client: Client,
        keys: Keys,
        owner: Owner,
        clock: Clock,
        ttl_seconds: int,
        interval_seconds: float,
        on_topology: Callable[[RedisUnavailable], None] | None = None,
    ) -> None:
        self.client = client
        self.key = keys.heartbeat(owner.instance_id)
        self.field = owner.cycle_id
        self.clock = clock
        self.ttl = ttl_seconds
        self.interval = interval_seconds
        self.on_topology = on_topology
        self._script = Script(client, scripts.HEARTBEAT)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.failures = 0

    def expiry(self) -> float:
        return self.clock.now().timestamp() + self.ttl

    async def beat(self) -> None:
        """Refresh once (one script: the entry and the key's TTL)."""
        keys, args = scripts.pack(
            {"heartbeat": self.key},
            args={"field": self.field, "expiry": f"{self.expiry():.3f}", "ttl": self.ttl},
        )
        async with redis_errors("refreshing the heartbeat"):
            raw = await self._script(keys, args)
        for warning in json.loads(raw) or []:
            log.warning("%s", warning)

    async def _loop(self) -> None:
        # Stopped by an event, not by cancellation: a cancel that lands while redis-py finishes
        # a call can be swallowed on Python 3.11, and an un-stoppable heartbeat keeps a dead
        # cycle's locks looking alive.
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            if self._stopping.is_set():
                return
            try:
                await self.beat()
                self.failures = 0
            except Exception as exc:  # a missed beat is a warning; the TTL covers the gap
                self.failures += 1
                log.warning("heartbeat refresh failed: %s", exc)
                if isinstance(exc, RedisUnavailable) and ends_cycle(exc) and self.on_topology is not None:
                    self.on_topology(exc)

    def start(self) -> None:
        """Start refreshing in the background (the first beat is written by the begin step)."""
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="heartbeat")

    async def stop(self, within: float = 3.0) -> None:
        """Stop refreshing; waits at most ``within`` seconds, then abandons the task."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), within)
        except TimeoutError:
            task.cancel()
            log.warning("heartbeat did not stop within %.0fs; abandoned", within)
