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

from runner.store import scripts
from runner.store.connection import Client, Script, redis_errors
from runner.store.keys import Keys

#: Seconds a call may start after its slot without breaking the per-minute bound.
JITTER_TOLERANCE = 0.25


class RateLimiter:
    """Shared slots for remote analyzer calls."""

    def __init__(self, client: Client, keys: Keys, requests_per_minute: int, burst: int = 1) -> None:
        # Slots are spaced so that rpm + 1 of them span a minute plus JITTER_TOLERANCE: a call
        # that starts a little after its slot (event-loop delay) cannot squeeze one call too
        # many into a 60-second window.
        self.interval = 60.0 / requests_per_minute + JITTER_TOLERANCE / max(requests_per_minute - 1, 1)
        self.tolerance = (max(burst, 1) - 1) * self.interval
        self.keys = keys
        #: When the next slot is expected to be free (epoch seconds), from this process's replies.
        self.next_free_at = 0.0
        self._reserve = Script(client, scripts.RESERVE)
        self._pause = Script(client, scripts.PAUSE)

    async def reserve(self, now: float, max_wait: float) -> tuple[bool, float]:
        """(granted, seconds to wait before calling); not granted: no slot was taken."""
        keys, args = scripts.pack(
            {"tat": self.keys.ratelimit_tat, "pause": self.keys.ratelimit_pause},
            args={
                "now": now,
                "interval": self.interval,
                "tolerance": self.tolerance,
                "max_wait": max(max_wait, 0.0),
            },
        )
        async with redis_errors("reserving a rate-limit slot"):
            raw = await self._reserve(keys, args)
        granted, wait = json.loads(raw)
        wait = max(float(wait), 0.0)
        self.next_free_at = max(self.next_free_at, now + wait + (self.interval if granted else 0.0))
        return bool(granted), wait

    def expected_wait(self, now: float) -> float:
        """How long the next call would wait for a slot, as far as this process has seen
        (other processes' calls make it longer, never shorter)."""
        return max(0.0, self.next_free_at - now)

    async def pause(self, now: float, seconds: float) -> None:
        """Everyone sharing the limit waits ``seconds`` (a 429's Retry-After)."""
        keys, args = scripts.pack(
            {"pause": self.keys.ratelimit_pause}, args={"until": now + seconds, "now": now}
        )
        async with redis_errors("pausing the rate limit"):
            await self._pause(keys, args)
