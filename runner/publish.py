"""The atomic, idempotent, fenced publish.

One script publishes a batch of signals. For each signal, only while this run still holds the
symbol's lock with exactly the record it wrote (fencing), and only if the signal id was never
published (idempotency): ``XADD`` to the capped stream, ``PUBLISH`` to the live channel, ``HSET``
of the latest signal per symbol; then the lock is released, freeing the symbol at once.

``Publisher`` coalesces: signals are handed over as they finish and flushed in batches, so a
cycle costs a few round trips however many symbols it has, and a crash loses only the batch
in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from runner.connection import redis_errors
from runner.errors import RedisUnavailable
from runner.keys import SIGNAL_ID_TTL_SECONDS, Keys
from runner.models import Signal

log = logging.getLogger(__name__)

#: KEYS: stream, latest hash, then per signal: lock key, published-marker key.
#: ARGV: maxlen, channel, marker ttl, then per signal: lock record, symbol, signal JSON.
#: Returns JSON [[published | duplicate | fenced per signal], [warnings]].
#: The stream and the hash are checked before anything is written: Redis does not undo a
#: script's earlier writes when a later one fails, so a wrong-type key found half-way would
#: leave a marker without an entry (a lost signal).
PUBLISH_SCRIPT = """
local warnings = {}
for i, kind in ipairs({'stream', 'hash'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= kind then
    redis.call('DEL', KEYS[i])
    warnings[#warnings + 1] = KEYS[i] .. ' held a ' .. t .. ' instead of a ' .. kind .. '; reset'
  end
end
local out = {}
local n = (#KEYS - 2) / 2
for i = 1, n do
  local lock_key, marker = KEYS[2 + 2 * i - 1], KEYS[2 + 2 * i]
  local record, symbol, doc = ARGV[3 + 3 * i - 2], ARGV[3 + 3 * i - 1], ARGV[3 + 3 * i]
  local held = redis.pcall('GET', lock_key)
  if held ~= record then
    out[i] = 'fenced'
  elseif not redis.call('SET', marker, '1', 'NX', 'EX', tonumber(ARGV[3])) then
    out[i] = 'duplicate'
    redis.call('DEL', lock_key)
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[1]), '*', 'symbol', symbol, 'signal', doc)
    redis.call('PUBLISH', ARGV[2], doc)
    redis.call('HSET', KEYS[2], symbol, doc)
    redis.call('DEL', lock_key)
    out[i] = 'published'
  end
end
return cjson.encode({out, warnings})
"""


@dataclass(frozen=True)
class Pending:
    """A signal waiting to be published, with the lock record that entitles us to."""

    signal: Signal
    lock_key: str
    lock_value: str


class Publisher:
    """Publishes signals in coalesced batches through ``PUBLISH_SCRIPT``."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        maxlen: int,
        budget: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        #: Seconds the next publish may take (what is left of the cycle's time); None: unbounded.
        self.budget = budget
        self.keys = keys
        self.maxlen = maxlen
        self._script = client.register_script(PUBLISH_SCRIPT)
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.outcomes: dict[str, str] = {}  # signal id -> published | duplicate | fenced | error
        self.errors: list[str] = []

    async def publish_batch(self, batch: list[Pending]) -> list[str]:
        """Publish ``batch`` in one script; returns the outcome per signal."""
        keys = [self.keys.stream, self.keys.latest]
        args: list[str | int] = [self.maxlen, self.keys.channel, SIGNAL_ID_TTL_SECONDS]
        for p in batch:
            keys += [p.lock_key, self.keys.published(p.signal.id)]
            args += [p.lock_value, p.signal.symbol, p.signal.to_json()]
        try:
            async with (
                redis_errors("publishing signals"),
                asyncio.timeout(self.budget() if self.budget else None),
            ):
                raw = await self._script(keys=keys, args=args)
        except TimeoutError:
            raise RedisUnavailable(
                "Redis did not answer the publish before the cycle's time ran out"
            ) from None
        results, warnings = json.loads(raw)
        for warning in warnings or []:
            log.warning("%s", warning)
        return [str(x) for x in results]

    def submit(self, pending: Pending) -> None:
        """Queue a signal; it is published in the next batch."""
        self._queue.append(pending)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="publisher")

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            results = await self.publish_batch(batch)
        except Exception as exc:  # recorded per signal; the cycle reports it
            self.errors.append(str(exc))
            results = ["error"] * len(batch)
        for p, result in zip(batch, results, strict=True):
            self.outcomes[p.signal.id] = result
            if result == "fenced":
                log.warning(
                    "not publishing %s: this run no longer holds its lock (fencing token %d)",
                    p.signal.id,
                    p.signal.fencing_token,
                )

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()
            if self._closing and not self._queue:
                return

    async def close(self) -> None:
        """Publish everything still queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._flush()
