"""Following the signal stream (``runner watch``): nothing missed between reads, nothing twice."""

from __future__ import annotations

import asyncio
from typing import Any

from runner.store import streams

STREAM = "signals:raw"


async def add(redis: Any, n: int) -> list[str]:
    return [str(await redis.xadd(STREAM, {"symbol": "ETH/USD", "signal": f'{{"n": {i}}}'})) for i in range(n)]


async def take(follow: Any, n: int) -> list[str]:
    got = []
    async for _, entry_id, _ in follow:
        got.append(entry_id)
        if len(got) == n:
            break
    return got


async def test_latest_gives_the_newest_entries_oldest_first(any_redis: Any) -> None:
    ids = await add(any_redis, 5)

    recent = await streams.latest(any_redis, STREAM, 3)

    assert [entry_id for entry_id, _ in recent] == ids[2:]
    assert recent[-1][1] == {"symbol": "ETH/USD", "signal": '{"n": 4}'}
    assert await streams.latest(any_redis, STREAM, 0) == []


async def test_the_end_of_a_stream_is_its_newest_entry(any_redis: Any) -> None:
    assert await streams.end_of(any_redis, STREAM) == "0-0"
    ids = await add(any_redis, 3)

    assert await streams.end_of(any_redis, STREAM) == ids[-1]


async def test_following_from_the_end_sees_every_entry_added_after_it(any_redis: Any) -> None:
    await add(any_redis, 2)  # before: not shown
    end = await streams.end_of(any_redis, STREAM)
    later = await add(any_redis, 3)  # added before the first read: still shown

    seen = await asyncio.wait_for(take(streams.follow(any_redis, {STREAM: end}), 3), 10)

    assert seen == later


async def test_following_after_an_entry_resumes_right_after_it(any_redis: Any) -> None:
    ids = await add(any_redis, 4)

    seen = await asyncio.wait_for(take(streams.follow(any_redis, {STREAM: ids[1]}), 2), 10)

    assert seen == ids[2:]
