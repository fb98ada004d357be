"""The outbox's scripts against fakeredis and a real redis-server: a transition is claimed once,
whoever sees it; what is taken is leased; what failed is due again, with the URLs that took it."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from runner.store.keys import Keys
from runner.store.outbox import Entry, Outbox, Settled

KEYS = Keys()
NOW = 1_795_000_000.0


def entry(notice_id: str = "kill_switch_on:1795000000.000", at: float = NOW) -> Entry:
    return Entry(
        id=notice_id,
        event=notice_id.split(":")[0],
        title="autonomous-runner: kill switch ON",
        body="The kill switch is on.",
        kind="warning",
        created_at=at,
    )


async def test_a_transition_is_claimed_once_whoever_sees_it(any_redis: Any) -> None:
    outbox = Outbox(any_redis, KEYS)

    first = await outbox.claim([entry()], now=NOW, holder="run-a", lease_seconds=15)
    second = await outbox.claim([entry()], now=NOW + 1, holder="run-b", lease_seconds=15)

    assert first.claimed == [entry().id]
    assert [e.id for e in first.taken] == [entry().id]
    assert first.taken[0].attempts == 1
    assert second.claimed == []
    assert second.taken == []  # run-a holds it
    assert await any_redis.exists(KEYS.notify_marker(entry().id)) == 1
    assert 0 < await any_redis.ttl(KEYS.notify_marker(entry().id)) <= 7 * 86400


async def test_runs_claiming_at_the_same_moment_send_it_once(redis_server: Any) -> None:
    clients = [aioredis.Redis(port=redis_server.port, decode_responses=True) for _ in range(4)]
    await clients[0].flushall()
    try:
        claims = await asyncio.gather(
            *(
                Outbox(client, KEYS).claim([entry()], now=NOW, holder=f"run-{i}", lease_seconds=15)
                for i, client in enumerate(clients)
            )
        )
    finally:
        for client in clients:
            await client.aclose()

    assert sum(len(c.claimed) for c in claims) == 1
    assert sum(len(c.taken) for c in claims) == 1


async def test_a_failed_send_is_due_again_with_the_urls_that_took_it(any_redis: Any) -> None:
    outbox = Outbox(any_redis, KEYS)
    await outbox.claim([entry()], now=NOW, holder="run-a", lease_seconds=15)

    await outbox.settle(
        [Settled(entry().id, remove=False, done=("url-1",), error="HTTP 500")],
        {'notifications_total{event="kill_switch_on",result="failed"}': 1.0},
        holder="run-a",
        shard="0-1",
    )
    again = await outbox.claim([], now=NOW + 60, holder="run-b", lease_seconds=15)

    (taken,) = again.taken
    assert taken.attempts == 2
    assert taken.done == ("url-1",)
    counters = await any_redis.hgetall(KEYS.counters("0-1"))
    assert float(counters['notifications_total{event="kill_switch_on",result="failed"}']) == 1


async def test_a_delivered_notification_leaves_the_outbox(any_redis: Any) -> None:
    outbox = Outbox(any_redis, KEYS)
    await outbox.claim([entry()], now=NOW, holder="run-a", lease_seconds=15)

    await outbox.settle([Settled(entry().id, remove=True)], {}, holder="run-a", shard="0-1")

    assert await outbox.pending() == []
    assert (await outbox.claim([entry()], now=NOW + 60, holder="run-b", lease_seconds=15)).taken == []


async def test_only_the_run_holding_the_lease_settles(any_redis: Any) -> None:
    outbox = Outbox(any_redis, KEYS)
    await outbox.claim([entry()], now=NOW, holder="run-a", lease_seconds=15)
    # run-a died; its lease ran out and run-b took the notification over.
    await outbox.claim([], now=NOW + 20, holder="run-b", lease_seconds=15)

    await outbox.settle([Settled(entry().id, remove=True)], {}, holder="run-a", shard="0-1")

    (pending,) = await outbox.pending()
    assert pending.attempts == 2


async def test_a_lease_that_is_still_running_keeps_others_off(any_redis: Any) -> None:
    outbox = Outbox(any_redis, KEYS)
    await outbox.claim([entry()], now=NOW, holder="run-a", lease_seconds=15)

    during = await outbox.claim([], now=NOW + 14, holder="run-b", lease_seconds=15)
    after = await outbox.claim([], now=NOW + 16, holder="run-b", lease_seconds=15)

    assert during.taken == []
    assert [e.id for e in after.taken] == [entry().id]


async def test_a_notification_undelivered_for_a_day_is_dropped(any_redis: Any) -> None:
    outbox = Outbox(any_redis, KEYS)
    await outbox.claim([entry()], now=NOW, holder="run-a", lease_seconds=15)
    await outbox.settle([Settled(entry().id, remove=False, error="down")], {}, holder="run-a", shard="0-1")

    late = await outbox.claim([], now=NOW + 86400 + 1, holder="run-b", lease_seconds=15)

    assert late.taken == []
    assert [e.id for e in late.dropped] == [entry().id]
    assert await outbox.pending() == []


async def test_at_most_limit_notifications_are_taken_the_rest_wait(any_redis: Any) -> None:
    outbox = Outbox(any_redis, KEYS)
    many = [entry(f"symbol_paused:S{i}/USD:{NOW:.3f}") for i in range(5)]

    first = await outbox.claim(many, now=NOW, holder="run-a", lease_seconds=15, limit=3)
    second = await outbox.claim([], now=NOW + 1, holder="run-b", lease_seconds=15, limit=3)

    assert len(first.claimed) == 5
    assert len(first.taken) == 3
    assert len(second.taken) == 2


async def test_an_unreadable_entry_is_dropped_with_a_warning(any_redis: Any) -> None:
    await any_redis.hset(KEYS.notify_outbox, "junk", "{not json")
    outbox = Outbox(any_redis, KEYS)

    claim = await outbox.claim([], now=NOW, holder="run-a", lease_seconds=15)

    assert claim.taken == []
    assert any("unreadable" in w for w in claim.warnings)
    assert await any_redis.hexists(KEYS.notify_outbox, "junk") == 0


async def test_an_outbox_of_the_wrong_type_is_reset(any_redis: Any) -> None:
    await any_redis.set(KEYS.notify_outbox, "garbage")
    outbox = Outbox(any_redis, KEYS)

    claim = await outbox.claim([entry()], now=NOW, holder="run-a", lease_seconds=15)

    assert [e.id for e in claim.taken] == [entry().id]
    assert any("instead of a hash" in w for w in claim.warnings)
