"""A request rate shared by every run and shard, kept in Redis (GCRA in one Lua script).

Each remote analyzer call first reserves a slot: the script returns how long to wait for it, or
refuses when the slot lies beyond what the caller can wait (the cycle deadline), in which case
no slot is taken and the symbol is reported ``rate_limited``. With the default burst of 1 the
calls are spaced a little more than ``60 / requests_per_minute`` seconds apart, so no 60-second
window ever holds more than ``requests_per_minute`` calls, even when a call starts a little
late. A 429's ``Retry-After`` pauses every process sharing the limit until it has passed.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from runner.connection import redis_errors
from runner.keys import Keys

#: KEYS[1] theoretical arrival time (TAT, epoch seconds), KEYS[2] pause-until (epoch seconds).
#: ARGV: now, emission interval, tolerance ((burst - 1) * interval), longest acceptable wait.
#: Returns JSON [granted (0/1), seconds to wait].
RESERVE_SCRIPT = """
local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local tolerance, max_wait = tonumber(ARGV[3]), tonumber(ARGV[4])
local pause_until = tonumber(redis.pcall('GET', KEYS[2])) or 0
local tat = tonumber(redis.pcall('GET', KEYS[1])) or 0
local start = math.max(now, pause_until)
tat = math.max(tat, start)
local at = math.max(start, tat - tolerance)
if at - now > max_wait then return cjson.encode({0, at - now}) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return cjson.encode({1, at - now})
"""

#: KEYS[1] pause-until; ARGV: until (epoch seconds). Only ever extends the pause.
PAUSE_SCRIPT = """
local current = tonumber(redis.pcall('GET', KEYS[1])) or 0
local untl = tonumber(ARGV[1])
if untl > current then
  redis.call('SET', KEYS[1], tostring(untl), 'PX', math.ceil((untl - tonumber(ARGV[2])) * 1000) + 1000)
end
return 1
"""


#: Seconds a call may start after its slot without breaking the per-minute bound.
JITTER_TOLERANCE = 0.25


class RateLimiter:
    """Shared slots for remote analyzer calls."""

    def __init__(self, client: aioredis.Redis, keys: Keys, requests_per_minute: int, burst: int = 1) -> None:
        # Slots are spaced so that rpm + 1 of them span a minute plus JITTER_TOLERANCE: a call
        # that starts a little after its slot (event-loop delay) cannot squeeze one call too
        # many into a 60-second window.
        self.interval = 60.0 / requests_per_minute + JITTER_TOLERANCE / max(requests_per_minute - 1, 1)
        self.tolerance = (max(burst, 1) - 1) * self.interval
        self.keys = [keys._k("runner:ratelimit:tat"), keys._k("runner:ratelimit:pause")]
        self._reserve = client.register_script(RESERVE_SCRIPT)
        self._pause = client.register_script(PAUSE_SCRIPT)

    async def reserve(self, now: float, max_wait: float) -> tuple[bool, float]:
        """(granted, seconds to wait before calling); not granted: no slot was taken."""
        async with redis_errors("reserving a rate-limit slot"):
            raw = await self._reserve(
                keys=self.keys, args=[now, self.interval, self.tolerance, max(max_wait, 0.0)]
            )
        granted, wait = json.loads(raw)
        return bool(granted), max(float(wait), 0.0)

    async def pause(self, now: float, seconds: float) -> None:
        """Everyone sharing the limit waits ``seconds`` (a 429's Retry-After)."""
        async with redis_errors("pausing the rate limit"):
            await self._pause(keys=[self.keys[1]], args=[now + seconds, now])
