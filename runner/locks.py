"""Symbol locks, the cycle lease, the heartbeat, stale takeover and fencing tokens.

A lock is a key holding its owner record (JSON: instance_id, cycle_id, pid, acquired_at,
token). Acquire, takeover and release are each one Lua script, never GET then SET from Python:

* a free key is taken with a new fencing token from ``INCR``;
* a held key is taken over, in the same script, when its owner's heartbeat for that cycle is gone
  or the lock is older than the stale threshold (or the record is unreadable);
* release deletes only when the key still holds exactly our record (compare-and-delete).

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
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from runner.clock import Clock
from runner.connection import redis_errors
from runner.keys import Keys

log = logging.getLogger(__name__)

#: Lua shared by every script that takes a lock or a lease. Declares ``warnings`` (messages
#: about state that was reset), ``safe_incr`` and
#: take(key, fencing_key, instance_id, cycle_id, pid, now, ttl, stale, hb_prefix)
#:   -> {status, token, value, reason, previous record}, status one of acquired | taken_over | held.
TAKE_LUA = """
local warnings = {}
local function safe_incr(key, now)
  local ok, value = pcall(redis.call, 'INCR', key)
  if ok then return value end
  -- Tokens must keep growing: restart the counter above any token INCR could have given.
  redis.call('DEL', key)
  warnings[#warnings + 1] = key .. ' was not a counter; restarted from the clock'
  return redis.call('INCRBY', key, math.floor(now * 1000))
end
local function take(key, fencing_key, instance_id, cycle_id, pid, now, ttl, stale, hb_prefix)
  local current = redis.pcall('GET', key)
  local reason = nil
  local previous = ''
  if type(current) == 'table' then
    redis.call('DEL', key)
    warnings[#warnings + 1] = key .. ' was not a lock record; reset'
    reason = 'corrupt'
  elseif current then
    previous = current
    local ok, owner = pcall(cjson.decode, current)
    if not ok or type(owner) ~= 'table' then
      reason = 'corrupt'
    elseif now - (tonumber(owner.acquired_at) or 0) > stale then
      reason = 'age'
    else
      local beat = redis.pcall('HGET', hb_prefix .. tostring(owner.instance_id), tostring(owner.cycle_id))
      if type(beat) ~= 'string' or (tonumber(beat) or 0) < now then
        reason = 'heartbeat'
      else
        return {'held', 0, current, '', ''}
      end
    end
  end
  local token = safe_incr(fencing_key, now)
  local value = cjson.encode({instance_id = instance_id, cycle_id = cycle_id, pid = pid,
                              acquired_at = now, token = token})
  redis.call('SET', key, value, 'EX', ttl)
  if reason then return {'taken_over', token, value, reason, previous} end
  return {'acquired', token, value, '', ''}
end
"""

#: KEYS[1] fencing counter, KEYS[2..n] lock keys.
#: ARGV: instance_id, cycle_id, pid, now, ttl, stale_threshold, heartbeat prefix.
#: Returns a JSON list of [status, token, value, reason] per lock key, in order.
ACQUIRE_SCRIPT = (
    TAKE_LUA
    + """
local out = {}
for i = 2, #KEYS do
  out[#out + 1] = take(KEYS[i], KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),
                       tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
end
return cjson.encode(out)
"""
)

#: KEYS: lock keys; ARGV: the exact owner records we set, in the same order.
#: Returns how many were deleted (a key holding someone else's record is left alone).
RELEASE_SCRIPT = """
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    n = n + redis.call('DEL', KEYS[i])
  end
end
return n
"""


@dataclass(frozen=True)
class LockResult:
    """Outcome of trying to take one lock."""

    key: str
    status: str  # acquired | taken_over | held
    token: int
    value: str
    reason: str = ""
    #: The record a takeover replaced.
    previous: str = ""

    @property
    def owned(self) -> bool:
        return self.status != "held"

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


def parse_take(key: str, row: list[Any]) -> LockResult:
    status, token, value, reason, previous = row
    return LockResult(key, str(status), int(token), str(value), str(reason or ""), str(previous or ""))


class LockManager:
    """Takes and releases this cycle's locks; every call is one round trip."""

    def __init__(
        self,
        client: aioredis.Redis,
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
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    async def acquire(self, symbols: list[str]) -> dict[str, LockResult]:
        """Try to take every symbol's lock in one script; returns a result per symbol."""
        if not symbols:
            return {}
        lock_keys = [self.keys.lock(s) for s in symbols]
        args: list[str | int | float] = [
            self.owner.instance_id,
            self.owner.cycle_id,
            self.owner.pid,
            self.clock.now().timestamp(),
            self.ttl,
            self.stale,
            self.keys.heartbeat_prefix,
        ]
        async with redis_errors("lock acquisition"):
            raw = await self._acquire(keys=[self.keys.fencing, *lock_keys], args=args)
        rows = json.loads(raw)
        return {s: parse_take(k, row) for s, k, row in zip(symbols, lock_keys, rows, strict=True)}

    async def release(self, held: list[LockResult]) -> int:
        """Compare-and-delete each lock we still own; returns how many were deleted."""
        if not held:
            return 0
        async with redis_errors("lock release"):
            return int(await self._release(keys=[h.key for h in held], args=[h.value for h in held]))


class Heartbeat:
    """Keeps ``runner:heartbeat:<instance_id>`` alive for this cycle, in the background."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        owner: Owner,
        clock: Clock,
        ttl_seconds: int,
        interval_seconds: float,
    ) -> None:
        self.client = client
        self.key = keys.heartbeat(owner.instance_id)
        self.field = owner.cycle_id
        self.clock = clock
        self.ttl = ttl_seconds
        self.interval = interval_seconds
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.failures = 0

    def expiry(self) -> float:
        return self.clock.now().timestamp() + self.ttl

    async def beat(self) -> None:
        """Refresh once (HSET + EXPIRE in one round trip)."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, self.field, f"{self.expiry():.3f}")
            pipe.expire(self.key, self.ttl)
            await pipe.execute()

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
