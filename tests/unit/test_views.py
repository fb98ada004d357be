"""What the API and the event feed read from Redis, against fakeredis and a real redis-server."""

from __future__ import annotations

import json
from typing import Any

from runner.store import streams, views
from runner.store.keys import Keys
from runner.store.streams import StreamInfo, parse_id

KEYS = Keys()
NAMES = ["signals:raw", "signals:scored"]


def cycle(cycle_id: str, started: str) -> dict[str, Any]:
    return {"cycle_id": cycle_id, "started_at": started, "status": "completed"}


def test_cycles_from_the_stream_and_the_list_are_merged_once_each_newest_first() -> None:
    streamed = [cycle("c3", "2026-11-23T14:03:00.000Z"), cycle("c2", "2026-11-23T14:02:00.000Z")]
    listed = [cycle("c2", "2026-11-23T14:02:00.000Z"), cycle("c1", "2026-11-23T14:01:00.000Z")]

    merged = views.merge_cycles(streamed, listed, 10)

    assert [c["cycle_id"] for c in merged] == ["c3", "c2", "c1"]
    assert [c["cycle_id"] for c in views.merge_cycles(streamed, listed, 2)] == ["c3", "c2"]


def test_latest_documents_by_symbol_leave_out_garbage_and_fill_what_is_missing() -> None:
    signals = {"ETH/USD": json.dumps({"a": 1}), "BTC/USD": "not json"}
    scores = {"SOL/USD": json.dumps({"s": 2})}

    out = views.by_symbol([signals, scores, None])

    assert out == {
        "ETH/USD": {"signal": {"a": 1}, "score": None, "advice": None},
        "SOL/USD": {"signal": None, "score": {"s": 2}, "advice": None},
    }


def test_a_stream_position_is_lost_when_something_after_it_was_removed() -> None:
    trimmed = StreamInfo(last=(50, 0), first=(40, 0), max_deleted=(0, 0), removed=39)

    assert trimmed.lost_after((10, 0))
    assert not trimmed.lost_after((40, 0))
    assert not trimmed.lost_after((45, 0))
    assert StreamInfo(last=(50, 0), first=(1, 0), max_deleted=(30, 0), removed=1).lost_after((20, 0))
    assert not StreamInfo(last=(50, 0), first=(1, 0), removed=0).lost_after((0, 0))  # nothing removed
    assert StreamInfo(last=(50, 0), first=None, removed=50).lost_after((20, 0))  # all trimmed away
    assert not StreamInfo().lost_after((0, 0))  # no such stream


async def test_the_snapshot_holds_the_documents_up_to_each_streams_position(any_redis: Any) -> None:
    raw = await any_redis.xadd("signals:raw", {"symbol": "ETH/USD", "signal": json.dumps({"n": 1})})
    await any_redis.hset("signals:latest", "ETH/USD", json.dumps({"n": 1}))
    await any_redis.set("reports:latest", json.dumps({"id": "report:x"}))
    await any_redis.xadd("runner:cycles", {"doc": json.dumps(cycle("c2", "2026-11-23T14:02:00Z"))})
    await any_redis.lpush("runner:history", json.dumps(cycle("c1", "2026-11-23T14:01:00Z")))
    await any_redis.set("signals:latest:scored", "a string, not a hash")

    snap = await views.read_snapshot(any_redis, KEYS, NAMES, cycles=10)

    assert snap.positions == [parse_id(raw), (0, 0)]
    assert snap.symbols == {"ETH/USD": {"signal": {"n": 1}, "score": None, "advice": None}}
    assert snap.report == {"id": "report:x"}
    assert [c["cycle_id"] for c in snap.cycles] == ["c2", "c1"]
    assert [c["cycle_id"] for c in await views.read_history(any_redis, KEYS, 1)] == ["c2"]
    assert await views.read_latest(any_redis, KEYS) == snap.symbols


async def test_ranges_after_each_position_up_to_a_bound_come_with_where_each_stream_stands(
    any_redis: Any,
) -> None:
    ids = [parse_id(await any_redis.xadd("signals:raw", {"signal": json.dumps({"n": i})})) for i in range(5)]
    scored = parse_id(await any_redis.xadd("signals:scored", {"doc": "{}"}))

    infos, found = await streams.ranges_with_infos(
        any_redis, NAMES, after=[ids[1], (0, 0)], until=[ids[3], (0, 0)], count=100
    )

    assert [entry for entry, _ in found[0]] == ids[2:4]
    assert found[1] == []  # nothing asked of that stream
    assert [i.last for i in infos] == [ids[-1], scored]
    assert not infos[0].lost_after(ids[1])


async def test_one_read_follows_several_streams_and_skips_one_of_the_wrong_type(redis_server: Any) -> None:
    # Against the real server only: fakeredis fails differently on a key of the wrong type.
    import redis.asyncio as aioredis

    client = aioredis.Redis(port=redis_server.port, decode_responses=True)
    await client.flushall()
    first = parse_id(await client.xadd("signals:raw", {"signal": "{}"}))
    await client.set("signals:scored", "not a stream")

    got = await streams.read_after(client, NAMES, [(0, 0), (0, 0)], block_ms=10, count=10)
    infos = await streams.infos(client, [*NAMES, "no:such:stream"])
    await client.aclose()

    assert [(i, entry) for i, entry, _ in got] == [(0, first)]
    assert [i.last for i in infos] == [first, (0, 0), (0, 0)]
