"""The shared rate limit: GCRA slots in Redis, pauses, and two cycles sharing one limit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from runner.analyzers.base import AnalysisRequest
from runner.analyzers.fake import FakeAnalyzer, hold
from runner.clock import SystemClock
from runner.config import load_settings
from runner.cycle import Deps, run_cycle
from runner.market.synthetic import SyntheticSource
from runner.models import Analysis, SymbolStatus
from runner.shards import Shard
from runner.store.keys import Keys
from runner.store.ratelimit import JITTER_TOLERANCE, RateLimiter


async def test_slots_are_spaced_by_the_emission_interval(any_redis: Any) -> None:
    limiter = RateLimiter(any_redis, Keys(), requests_per_minute=60)
    step = 1.0 + JITTER_TOLERANCE / 59  # a minute's share, plus a margin for late starts
    waits = [(await limiter.reserve(now=1000.0, max_wait=30))[1] for _ in range(4)]
    assert waits == pytest.approx([0.0, step, 2 * step, 3 * step])
    # Time passing frees slots: at t=1010 the backlog is gone.
    assert await limiter.reserve(now=1010.0, max_wait=30) == (True, 0.0)


async def test_a_slot_beyond_the_longest_wait_is_refused_and_not_taken(any_redis: Any) -> None:
    limiter = RateLimiter(any_redis, Keys(), requests_per_minute=6)  # one per 10 s (and a margin)
    step = 10.0 + JITTER_TOLERANCE / 5
    assert (await limiter.reserve(now=0.0, max_wait=5))[0] is True
    granted, wait = await limiter.reserve(now=0.0, max_wait=5)
    assert granted is False
    assert wait == pytest.approx(step)
    # The refused reservation took nothing: the next caller still gets that slot.
    granted, wait = await limiter.reserve(now=0.0, max_wait=20)
    assert granted is True
    assert wait == pytest.approx(step)


async def test_any_window_of_a_minute_holds_at_most_the_limit(any_redis: Any) -> None:
    limiter = RateLimiter(any_redis, Keys(), requests_per_minute=100)
    starts = []
    for _ in range(250):
        granted, wait = await limiter.reserve(now=0.0, max_wait=1000)
        assert granted
        starts.append(wait)
    for s in starts:
        assert sum(1 for t in starts if s <= t < s + 60) <= 100
        # Even when the first call of a window starts up to JITTER_TOLERANCE late.
        assert sum(1 for t in starts if s + JITTER_TOLERANCE <= t < s + JITTER_TOLERANCE + 60) <= 100


async def test_a_retry_after_pauses_everyone_sharing_the_limit(any_redis: Any) -> None:
    a = RateLimiter(any_redis, Keys(), requests_per_minute=600)
    b = RateLimiter(any_redis, Keys(), requests_per_minute=600)
    await a.pause(now=100.0, seconds=30)
    granted, wait = await b.reserve(now=100.0, max_wait=60)
    assert granted
    assert wait == 30.0
    granted, _ = await b.reserve(now=100.0, max_wait=10)
    assert granted is False


async def test_two_concurrent_cycles_share_one_limit(any_redis: Any, monkeypatch: Any) -> None:
    for name in ("REDIS_URL", "RUNNER_CONFIG", "INSTANCE_ID", "MAX_SYMBOLS"):
        monkeypatch.delenv(name, raising=False)
    calls: list[float] = []

    async def answer(req: AnalysisRequest) -> Analysis:
        calls.append(time.monotonic())
        return hold(req)

    settings = load_settings(None, {"rate_limit": {"requests_per_minute": 1200}}, environ={})  # 50 ms apart
    symbols = ["ETH/USD", "BTC/USD", "SOL/USD", "DOGE/USD", "AVAX/USD", "LINK/USD", "UNI/USD", "AAVE/USD"]

    def deps() -> Deps:
        return Deps(any_redis, FakeAnalyzer(answer, remote=True), SyntheticSource(), SystemClock())

    first, second = await asyncio.gather(
        run_cycle(settings, deps(), symbols=symbols, shard=Shard(0, 2)),
        run_cycle(settings, deps(), symbols=symbols, shard=Shard(1, 2)),
    )
    done = [r for o in (first, second) for r in o.results if r.status is SymbolStatus.OK]
    assert len(done) == len(calls) == len(symbols)
    calls.sort()
    # 1200 per minute is 10 per half second; allow one for scheduling jitter at the edge.
    for t in calls:
        assert sum(1 for u in calls if t <= u < t + 0.5) <= 11
