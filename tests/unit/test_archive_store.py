"""The archive's Redis side (``scripts.ARCHIVE_READ``/``ARCHIVE_FINISH``), against fakeredis and a
real redis-server: what is copied next, cursors that only move forward, gaps found once."""

from __future__ import annotations

import json
from typing import Any

from runner.store.archive import ArchiveStore, Gap
from runner.store.keys import HISTORY_LENGTH, Keys

KEYS = Keys()


async def add(redis: Any, n: int, stream: str = KEYS.stream, field: str = "signal") -> list[str]:
    return [
        str(await redis.xadd(stream, {"symbol": "ETH/USD", field: json.dumps({"id": f"ETH/USD:{i}"})}))
        for i in range(n)
    ]


async def finish(store: ArchiveStore, **over: Any) -> Any:
    args: dict[str, Any] = {
        "cursors": {},
        "ordinals": {},
        "history_from": None,
        "history_max": None,
        "gaps": [],
        "result": "ok",
        "error": "",
        "now": 1000.0,
        "counters": {},
        "want_counters": True,
    }
    return await store.finish(**{**args, **over})


async def test_the_first_read_copies_what_every_stream_holds(any_redis: Any) -> None:
    signals = await add(any_redis, 3)
    scores = await add(any_redis, 2, KEYS.scored_stream, "doc")

    read = await ArchiveStore(any_redis, KEYS).read(100)

    assert [i for i, _ in read.entries["signal"]] == signals
    assert [i for i, _ in read.entries["score"]] == scores
    assert read.entries["advice"] == read.entries["report"] == read.entries["outcome"] == []
    assert read.entries["signal"][0][1]["symbol"] == "ETH/USD"
    assert read.gaps == []


async def test_the_next_read_starts_after_the_cursor_and_at_most_count(any_redis: Any) -> None:
    ids = await add(any_redis, 5)
    store = ArchiveStore(any_redis, KEYS)
    await finish(store, cursors={"signal": ids[1]})

    assert [i for i, _ in (await store.read(2)).entries["signal"]] == ids[2:4]
    assert [i for i, _ in (await store.read(100)).entries["signal"]] == ids[2:]


async def test_a_cursor_never_moves_back(any_redis: Any) -> None:
    ids = await add(any_redis, 4)
    store = ArchiveStore(any_redis, KEYS)
    await finish(store, cursors={"signal": ids[2]})

    await finish(store, cursors={"signal": ids[0]})  # a slower run of another shard, finishing late

    assert await any_redis.hget(KEYS.archive, "cursor:signal") == ids[2]
    assert [i for i, _ in (await store.read(100)).entries["signal"]] == ids[3:]


async def test_entries_the_cap_dropped_behind_the_cursor_are_a_gap_counted_once(any_redis: Any) -> None:
    ids = await add(any_redis, 3)
    store = ArchiveStore(any_redis, KEYS)
    await finish(store, cursors={"signal": ids[0]})
    await any_redis.xtrim(KEYS.stream, maxlen=1, approximate=False)  # ids[1] was never archived, and is gone

    read = await store.read(100)
    first = await finish(store, gaps=read.gaps, result="error", error="down")
    again = await finish(store, gaps=(await store.read(100)).gaps, result="error", error="down")

    assert read.gaps == [Gap("signal", ids[0], ids[2])]
    assert [i for i, _ in read.entries["signal"]] == [ids[2]]
    assert first.new_gaps == ["signal"]
    assert again.new_gaps == []
    assert first.counters['archive_gap_total{stage="signal"}'] == 1
    assert again.counters['archive_gap_total{stage="signal"}'] == 1
    kept = json.loads(await any_redis.hget(KEYS.archive, "gap:signal"))
    assert (kept["from"], kept["to"]) == (ids[0], ids[2])


async def test_archived_entries_trimmed_away_are_no_gap(any_redis: Any) -> None:
    ids = await add(any_redis, 3)
    store = ArchiveStore(any_redis, KEYS)
    await finish(store, cursors={"signal": ids[1]})
    await any_redis.xtrim(KEYS.stream, maxlen=2, approximate=False)  # only an archived entry was dropped

    read = await store.read(100)

    assert read.gaps == []
    assert [i for i, _ in read.entries["signal"]] == [ids[2]]


async def test_only_summaries_after_the_history_floor_are_read(any_redis: Any) -> None:
    ids = ["20260302T120000000Z-aaaaaa", "20260302T120100000Z-bbbbbb", "20260302T120200000Z-cccccc"]
    for cycle_id in ids:
        await any_redis.lpush(KEYS.history, json.dumps({"cycle_id": cycle_id, "started_at": "x"}))
    store = ArchiveStore(any_redis, KEYS)
    await finish(store, history_from="20260302T120030000", history_max=ids[1])

    read = await store.read(100)

    assert sorted(json.loads(s)["cycle_id"] for s in read.summaries) == ids[1:]


async def test_summaries_pushed_out_of_a_full_history_are_a_gap(any_redis: Any) -> None:
    store = ArchiveStore(any_redis, KEYS)
    await finish(store, history_from="20260302T115900000", history_max="20260302T120000000Z-aaaaaa")
    for minute in range(HISTORY_LENGTH):
        cycle_id = f"20260302T{13 + minute // 60:02d}{minute % 60:02d}00000Z-bbbbbb"
        await any_redis.lpush(KEYS.history, json.dumps({"cycle_id": cycle_id}))

    read = await store.read(100)

    assert [g.stage for g in read.gaps] == ["cycle"]


async def test_a_failed_write_moves_nothing_and_is_noted(any_redis: Any) -> None:
    store = ArchiveStore(any_redis, KEYS)

    done = await finish(
        store, result="timeout", error="slow", counters={'archive_writes_total{result="timeout"}': 1}
    )

    progress = await any_redis.hgetall(KEYS.archive)
    assert progress["result"] == "timeout"
    assert progress["error"] == "slow"
    assert "ok_at" not in progress
    assert done.ok_at is None
    assert done.counters['archive_writes_total{result="timeout"}'] == 1


async def test_a_cursor_holding_garbage_copies_the_whole_stream_with_a_warning(any_redis: Any) -> None:
    ids = await add(any_redis, 2)
    await any_redis.hset(KEYS.archive, "cursor:signal", "garbage")
    store = ArchiveStore(any_redis, KEYS)

    read = await store.read(100)
    await finish(store, cursors={"signal": ids[-1]})

    assert [i for i, _ in read.entries["signal"]] == ids
    assert read.warnings
    assert await any_redis.hget(KEYS.archive, "cursor:signal") == ids[-1]


async def test_a_stream_of_the_wrong_type_is_read_as_empty(any_redis: Any) -> None:
    await any_redis.set(KEYS.stream, "not a stream")

    read = await ArchiveStore(any_redis, KEYS).read(100)

    assert read.entries["signal"] == []
    assert read.warnings
    assert await any_redis.get(KEYS.stream) == "not a stream"  # reading repairs nothing


async def test_where_redis_counts_what_was_added_a_gap_is_exact(any_redis: Any) -> None:
    ids = await add(any_redis, 2)
    store = ArchiveStore(any_redis, KEYS)
    first = await store.read(100)
    await finish(store, cursors={"signal": ids[-1]}, ordinals=first.ordinals)
    later = await add(any_redis, 3)

    await any_redis.xtrim(KEYS.stream, maxlen=3, approximate=False)  # the archived ones only
    none_lost = await store.read(100)
    await any_redis.xtrim(KEYS.stream, maxlen=1, approximate=False)  # and two never archived
    two_lost = await store.read(100)

    assert first.ordinals == {"signal": 2}
    assert none_lost.gaps == []
    assert two_lost.gaps == [Gap("signal", ids[-1], later[-1], lost=2)]
