"""The Lua scripts against fakeredis and a real redis-server: locks and takeover, the fenced publish
and cycle state."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from runner.breaker import BreakerState
from runner.clock import FrozenClock
from runner.models import Signal
from runner.store.keys import SIGNAL_ID_TTL_SECONDS, Keys
from runner.store.locks import LockManager, LockResult, Owner
from runner.store.publish import Pending, Publisher, Target, signal_target
from runner.store.state import StateStore

KEYS = Keys()
START = datetime(2026, 11, 23, 14, 5, 0, tzinfo=UTC)
NOW = START.timestamp()
TTL, STALE = 90, 120

ME = Owner("pod-a", "cycle-a", pid=111)
OTHER = Owner("pod-b", "cycle-b", pid=222)


def manager(redis: Any, owner: Owner = ME, clock: FrozenClock | None = None) -> LockManager:
    return LockManager(redis, KEYS, owner, clock or FrozenClock(START), TTL, STALE)


async def seed_lock(
    redis: Any, symbol: str, owner: Owner = OTHER, *, acquired_at: float = NOW - 10, token: int = 7
) -> str:
    """Write a lock record as another run would have."""
    value = json.dumps(
        {
            "instance_id": owner.instance_id,
            "cycle_id": owner.cycle_id,
            "pid": owner.pid,
            "acquired_at": acquired_at,
            "token": token,
        }
    )
    await redis.set(KEYS.lock(symbol), value, ex=TTL)
    return value


async def beat(redis: Any, owner: Owner, until: float) -> None:
    """The owner's heartbeat for its cycle, alive until ``until`` (epoch seconds)."""
    await redis.hset(KEYS.heartbeat(owner.instance_id), owner.cycle_id, f"{until:.3f}")


# Locks -----------------------------------------------------------------------------------------


async def test_free_locks_are_acquired_with_increasing_fencing_tokens(any_redis: Any) -> None:
    got = await manager(any_redis).acquire(["ETH/USD", "BTC/USD", "SOL/USD"])

    assert [r.status for r in got.values()] == ["acquired"] * 3
    tokens = [r.token for r in got.values()]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 3
    assert all(r.owned for r in got.values())


async def test_lock_record_names_its_owner_and_expires(any_redis: Any) -> None:
    got = (await manager(any_redis).acquire(["ETH/USD"]))["ETH/USD"]

    stored = await any_redis.get(KEYS.lock("ETH/USD"))
    assert stored == got.value
    record = json.loads(stored)
    assert record["instance_id"] == "pod-a"
    assert record["cycle_id"] == "cycle-a"
    assert record["pid"] == 111
    assert record["acquired_at"] == pytest.approx(NOW)
    assert record["token"] == got.token
    assert got.owner()["instance_id"] == "pod-a"
    assert 0 < await any_redis.ttl(KEYS.lock("ETH/USD")) <= TTL


async def test_a_later_acquisition_gets_a_larger_token(any_redis: Any) -> None:
    first = (await manager(any_redis).acquire(["ETH/USD"]))["ETH/USD"]
    second = (await manager(any_redis, OTHER).acquire(["BTC/USD"]))["BTC/USD"]

    assert second.token > first.token


async def test_no_symbols_is_no_round_trip(any_redis: Any) -> None:
    assert await manager(any_redis).acquire([]) == {}


async def test_lock_of_a_live_owner_is_held(any_redis: Any) -> None:
    theirs = await seed_lock(any_redis, "ETH/USD")
    await beat(any_redis, OTHER, NOW + 20)

    got = (await manager(any_redis).acquire(["ETH/USD"]))["ETH/USD"]

    assert got.status == "held"
    assert not got.owned
    assert got.token == 0
    assert got.value == theirs
    assert got.owner()["instance_id"] == "pod-b"
    assert await any_redis.get(KEYS.lock("ETH/USD")) == theirs


@pytest.mark.parametrize(
    ("heartbeat", "why"),
    [
        (None, "no heartbeat at all"),
        ({"cycle-b": f"{NOW - 1:.3f}"}, "heartbeat expired"),
        ({"other-cycle": f"{NOW + 60:.3f}"}, "only another cycle of that instance is alive"),
        ({"cycle-b": "soon"}, "heartbeat unreadable"),
    ],
)
async def test_lock_of_an_owner_without_live_heartbeat_is_taken_over(
    any_redis: Any, heartbeat: dict[str, str] | None, why: str
) -> None:
    await seed_lock(any_redis, "ETH/USD")
    if heartbeat:
        await any_redis.hset(KEYS.heartbeat("pod-b"), mapping=heartbeat)

    got = (await manager(any_redis).acquire(["ETH/USD"]))["ETH/USD"]

    assert got.status == "taken_over", why
    assert got.reason == "heartbeat"
    assert got.owned
    assert json.loads(await any_redis.get(KEYS.lock("ETH/USD")))["instance_id"] == "pod-a"


async def test_lock_older_than_the_stale_threshold_is_taken_over_for_age(any_redis: Any) -> None:
    await seed_lock(any_redis, "ETH/USD", acquired_at=NOW - STALE - 1)
    await seed_lock(any_redis, "BTC/USD", acquired_at=NOW - STALE + 1)
    await beat(any_redis, OTHER, NOW + 20)  # the owner is alive, but the lock is too old

    got = await manager(any_redis).acquire(["ETH/USD", "BTC/USD"])

    assert (got["ETH/USD"].status, got["ETH/USD"].reason) == ("taken_over", "age")
    assert got["BTC/USD"].status == "held"


@pytest.mark.parametrize("garbage", ["not json", "42", '"a string"'])
async def test_unreadable_lock_record_is_taken_over_as_corrupt(any_redis: Any, garbage: str) -> None:
    await any_redis.set(KEYS.lock("ETH/USD"), garbage)

    got = (await manager(any_redis).acquire(["ETH/USD"]))["ETH/USD"]

    assert (got.status, got.reason) == ("taken_over", "corrupt")
    assert await any_redis.get(KEYS.lock("ETH/USD")) == got.value


async def test_lock_key_of_the_wrong_type_is_reset_and_taken(any_redis: Any) -> None:
    await any_redis.rpush(KEYS.lock("ETH/USD"), "x", "y")

    got = (await manager(any_redis).acquire(["ETH/USD"]))["ETH/USD"]

    assert (got.status, got.reason) == ("taken_over", "corrupt")
    assert await any_redis.type(KEYS.lock("ETH/USD")) == "string"


async def test_two_runs_racing_for_a_stale_lock_only_one_wins(any_redis: Any) -> None:
    await seed_lock(any_redis, "ETH/USD", Owner("pod-dead", "cycle-dead", 1))  # no heartbeat: stale
    racers = [Owner("pod-a", "cycle-a", 1), Owner("pod-c", "cycle-c", 3)]
    for racer in racers:
        await beat(any_redis, racer, NOW + 30)  # both racers are alive, as after their begin step

    results = await asyncio.gather(*(manager(any_redis, r).acquire(["ETH/USD"]) for r in racers))

    outcomes = sorted(res["ETH/USD"].status for res in results)
    assert outcomes == ["held", "taken_over"]
    winner = next(res["ETH/USD"] for res in results if res["ETH/USD"].owned)
    assert await any_redis.get(KEYS.lock("ETH/USD")) == winner.value


async def test_non_integer_fencing_counter_restarts_above_earlier_tokens(any_redis: Any) -> None:
    earlier = await manager(any_redis).acquire(["ETH/USD", "BTC/USD"])
    await any_redis.set(KEYS.fencing, "not-a-number")

    later = (await manager(any_redis).acquire(["SOL/USD"]))["SOL/USD"]

    assert later.status == "acquired"
    assert later.token > max(r.token for r in earlier.values())
    assert int(await any_redis.get(KEYS.fencing)) == later.token


async def test_fencing_counter_of_the_wrong_type_restarts_too(any_redis: Any) -> None:
    await any_redis.hset(KEYS.fencing, "x", "1")

    got = (await manager(any_redis).acquire(["ETH/USD"]))["ETH/USD"]

    assert got.status == "acquired"
    assert got.token > 1000


# Publish -----------------------------------------------------------------------------------------


def make_signal(symbol: str, token: int, minute: str = "2026-11-23T14:05", action: str = "BUY") -> Signal:
    return Signal(
        id=f"{symbol}:{minute}",
        symbol=symbol,
        action=action,  # type: ignore[arg-type]
        confidence=0.72,
        reasoning="EMA cross",
        price=3120.5,
        generated_at="2026-11-23T14:05:41.203Z",
        cycle_id=ME.cycle_id,
        instance_id=ME.instance_id,
        analyzer="fake",
        model=None,
        latency_ms=12,
        fencing_token=token,
    )


async def locked(redis: Any, symbol: str, owner: Owner = ME) -> LockResult:
    return (await manager(redis, owner).acquire([symbol]))[symbol]


def publisher(redis: Any, owner: Owner = ME) -> Publisher:
    return Publisher(redis, KEYS, owner=owner.cycle_id)


def pending(signal: Signal, lock: LockResult) -> Pending:
    """The signal as the cycle hands it to the publisher, entitled by ``lock``."""
    return Pending(
        signal.id, signal.symbol, signal.to_json(), lock.key, lock.value, signal_target(KEYS, 1000)
    )


async def test_published_signal_lands_in_stream_and_latest_and_frees_the_lock(any_redis: Any) -> None:
    lock = await locked(any_redis, "ETH/USD")
    signal = make_signal("ETH/USD", lock.token)

    outcome = await publisher(any_redis).publish_batch([pending(signal, lock)])

    assert outcome == ["published"]
    entries = await any_redis.xrange(KEYS.stream)
    assert len(entries) == 1
    _, fields = entries[0]
    assert set(fields) == {"symbol", "signal"}
    assert fields["symbol"] == "ETH/USD"
    doc = json.loads(fields["signal"])
    assert doc["id"] == "ETH/USD:2026-11-23T14:05"
    assert doc["fencing_token"] == lock.token
    assert doc["schema_version"] == 1
    assert json.loads(await any_redis.hget(KEYS.latest, "ETH/USD")) == doc
    assert await any_redis.exists(KEYS.lock("ETH/USD")) == 0
    assert 0 < await any_redis.ttl(KEYS.published(signal.id)) <= SIGNAL_ID_TTL_SECONDS


async def test_published_signal_goes_to_live_listeners(any_redis: Any) -> None:
    lock = await locked(any_redis, "ETH/USD")
    signal = make_signal("ETH/USD", lock.token)
    listener = any_redis.pubsub()
    await listener.subscribe(KEYS.channel)
    await listener.get_message(timeout=1)  # the subscribe confirmation

    await publisher(any_redis).publish_batch([pending(signal, lock)])
    message = await listener.get_message(ignore_subscribe_messages=True, timeout=1)
    await listener.aclose()

    assert message is not None
    assert json.loads(message["data"])["id"] == signal.id


async def test_same_signal_id_again_is_a_duplicate_and_changes_nothing(any_redis: Any) -> None:
    first = await locked(any_redis, "ETH/USD")
    await publisher(any_redis).publish_batch([pending(make_signal("ETH/USD", first.token), first)])
    latest_before = await any_redis.hget(KEYS.latest, "ETH/USD")

    rerun = await locked(any_redis, "ETH/USD", OTHER)  # a re-run in the same minute
    outcome = await publisher(any_redis, OTHER).publish_batch(
        [pending(make_signal("ETH/USD", rerun.token, action="SELL"), rerun)]
    )

    assert outcome == ["duplicate"]
    assert await any_redis.xlen(KEYS.stream) == 1
    assert await any_redis.hget(KEYS.latest, "ETH/USD") == latest_before
    assert await any_redis.exists(KEYS.lock("ETH/USD")) == 0  # the lock is freed all the same


async def test_signal_of_a_run_that_lost_its_lock_is_fenced(any_redis: Any) -> None:
    lock = await locked(any_redis, "ETH/USD")
    theirs = await seed_lock(any_redis, "ETH/USD", token=lock.token + 1)  # taken over meanwhile
    signal = make_signal("ETH/USD", lock.token)

    outcome = await publisher(any_redis).publish_batch([pending(signal, lock)])

    assert outcome == ["fenced"]
    assert await any_redis.xlen(KEYS.stream) == 0
    assert await any_redis.hgetall(KEYS.latest) == {}
    assert await any_redis.exists(KEYS.published(signal.id)) == 0  # the new owner may still publish
    assert await any_redis.get(KEYS.lock("ETH/USD")) == theirs


async def test_signal_whose_lock_expired_is_fenced(any_redis: Any) -> None:
    lock = await locked(any_redis, "ETH/USD")
    await any_redis.delete(lock.key)

    outcome = await publisher(any_redis).publish_batch([pending(make_signal("ETH/USD", lock.token), lock)])

    assert outcome == ["fenced"]
    assert await any_redis.xlen(KEYS.stream) == 0


async def test_a_batch_reports_each_signal_on_its_own(any_redis: Any) -> None:
    eth = await locked(any_redis, "ETH/USD")
    btc = await locked(any_redis, "BTC/USD")
    await seed_lock(any_redis, "BTC/USD")  # lost

    outcome = await publisher(any_redis).publish_batch(
        [
            pending(make_signal("ETH/USD", eth.token), eth),
            pending(make_signal("BTC/USD", btc.token), btc),
        ]
    )

    assert outcome == ["published", "fenced"]
    assert [f["symbol"] for _, f in await any_redis.xrange(KEYS.stream)] == ["ETH/USD"]


async def test_publisher_flushes_submitted_signals_on_close(any_redis: Any) -> None:
    locks = [await locked(any_redis, s) for s in ("ETH/USD", "BTC/USD")]
    pub = publisher(any_redis)
    pub.start()

    futures = [
        pub.submit(pending(make_signal(symbol, lock.token), lock))
        for lock, symbol in zip(locks, ("ETH/USD", "BTC/USD"), strict=True)
    ]
    await pub.close()

    assert [f.fate() for f in futures] == ["published", "published"]
    assert pub.errors == []
    assert await any_redis.xlen(KEYS.stream) == 2


# Cycle state: begin ------------------------------------------------------------------------------


async def begin(store: StateStore, owner: Owner = ME, *, readonly: bool = False, at: datetime = START) -> Any:
    return await store.begin(
        owner, at, lease_ttl=80, stale_seconds=STALE, heartbeat_ttl=30, latency_n=10, readonly=readonly
    )


async def test_begin_takes_the_lease_and_writes_the_heartbeat(any_redis: Any) -> None:
    snap = await begin(StateStore(any_redis, KEYS))

    assert snap.lease is not None
    assert snap.lease.status == "acquired"
    assert await any_redis.get(KEYS.lease("0-1")) == snap.lease.value
    assert 0 < await any_redis.ttl(KEYS.lease("0-1")) <= 80
    beat_until = float(await any_redis.hget(KEYS.heartbeat("pod-a"), "cycle-a"))
    assert beat_until == pytest.approx(NOW + 30)
    assert 0 < await any_redis.ttl(KEYS.heartbeat("pod-a")) <= 30
    assert snap.kill_switch == {}
    assert snap.breaker == BreakerState()
    assert snap.paused == {}
    assert snap.samples == []
    assert snap.warnings == []


async def test_a_second_run_sees_the_lease_held(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    first = await begin(store)

    second = await begin(store, OTHER)

    assert second.lease is not None
    assert second.lease.status == "held"
    assert not second.lease.owned
    assert second.lease.owner()["cycle_id"] == "cycle-a"
    assert await any_redis.get(KEYS.lease("0-1")) == first.lease.value


async def test_shards_have_their_own_leases(any_redis: Any) -> None:
    zero = await begin(StateStore(any_redis, KEYS, "0-2"))
    one = await begin(StateStore(any_redis, KEYS, "1-2"), OTHER)

    assert zero.lease.owned
    assert one.lease.owned


async def test_readonly_begin_takes_nothing_and_writes_no_heartbeat(any_redis: Any) -> None:
    snap = await begin(StateStore(any_redis, KEYS), readonly=True)

    assert snap.lease is None
    assert await any_redis.exists(KEYS.lease("0-1"), KEYS.heartbeat("pod-a"), KEYS.fencing) == 0


async def test_begin_reads_every_guards_state(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    await store.set_kill_switch("incident", "ops", START)
    await any_redis.hset(
        KEYS.breaker("llm_service"), mapping=BreakerState(state="open", opened_at=NOW).to_fields()
    )
    await any_redis.hset(
        KEYS.backpressure("0-1"), mapping={"consecutive_overruns": "1", "cooldown_remaining": "2"}
    )
    await any_redis.lpush(KEYS.latency, *[f"{NOW - 100 + i}:{1000 + i}" for i in range(15)])
    await any_redis.hset(KEYS.paused, "DOGE/USD", '{"reason": "invalid_output"}')
    await any_redis.hset(KEYS.spend(START), "usd", "1.25")

    snap = await begin(store)

    assert snap.kill_switch["on"] == "1"
    assert snap.kill_switch["reason"] == "incident"
    assert snap.kill_switch["by"] == "ops"
    assert snap.breaker.state == "open"
    assert snap.breaker.opened_at == NOW
    assert (snap.backpressure.consecutive_overruns, snap.backpressure.cooldown_remaining) == (1, 2)
    assert [s.ms for s in snap.samples] == [1014.0 - i for i in range(10)]  # newest first, window size
    assert set(snap.paused) == {"DOGE/USD"}
    assert snap.spend_usd == 1.25


@pytest.mark.parametrize(
    ("key", "setup"),
    [
        (KEYS.breaker("llm_service"), lambda r, k: r.set(k, "open")),
        (KEYS.paused, lambda r, k: r.rpush(k, "ETH/USD")),
        (KEYS.kill_switch, lambda r, k: r.set(k, "1")),
        (KEYS.latency, lambda r, k: r.hset(k, "a", "b")),
        (KEYS.backpressure("0-1"), lambda r, k: r.sadd(k, "x")),
        (KEYS.heartbeat("pod-a"), lambda r, k: r.set(k, "alive")),
    ],
)
async def test_begin_resets_a_key_of_the_wrong_type_with_a_warning(
    any_redis: Any, key: str, setup: Any
) -> None:
    await setup(any_redis, key)

    snap = await begin(StateStore(any_redis, KEYS))

    assert any(key in w for w in snap.warnings), snap.warnings
    assert snap.breaker == BreakerState()
    assert snap.kill_switch == {}
    assert snap.paused == {}
    assert snap.lease is not None
    assert snap.lease.owned
    assert await any_redis.type(key) in ("none", "hash")


async def test_readonly_begin_warns_about_wrong_types_but_repairs_nothing(any_redis: Any) -> None:
    await any_redis.set(KEYS.breaker("llm_service"), "open")

    snap = await begin(StateStore(any_redis, KEYS), readonly=True)

    assert any(KEYS.breaker("llm_service") in w for w in snap.warnings)
    assert snap.breaker == BreakerState()
    assert await any_redis.get(KEYS.breaker("llm_service")) == "open"


async def test_begin_treats_an_unreadable_breaker_as_closed_keeping_its_version(any_redis: Any) -> None:
    await any_redis.hset(KEYS.breaker("llm_service"), mapping={"state": "melted", "version": "4"})

    snap = await begin(StateStore(any_redis, KEYS))

    assert snap.breaker == BreakerState(version=4)
    assert any("unreadable" in w for w in snap.warnings)


async def test_begin_resets_unreadable_backpressure(any_redis: Any) -> None:
    await any_redis.hset(KEYS.backpressure("0-1"), mapping={"cooldown_remaining": "-3"})

    snap = await begin(StateStore(any_redis, KEYS))

    assert snap.backpressure.cooldown_remaining == 0
    assert any("backpressure" in w for w in snap.warnings)


async def test_begin_with_a_non_integer_fencing_counter_restarts_it(any_redis: Any) -> None:
    await any_redis.set(KEYS.fencing, "garbage")

    snap = await begin(StateStore(any_redis, KEYS))

    assert snap.lease.owned
    assert snap.lease.token > 1000
    assert any(KEYS.fencing in w for w in snap.warnings)


# Kill switch ---------------------------------------------------------------------------------------


async def test_kill_switch_on_and_off(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)

    await store.set_kill_switch("market closed", "alice", START)
    on = await store.read_kill_switch()
    cleared = await store.clear_kill_switch()
    cleared_again = await store.clear_kill_switch()

    assert on == {"on": "1", "reason": "market closed", "by": "alice", "at": f"{NOW:.3f}"}
    assert cleared is True
    assert cleared_again is False
    assert await store.read_kill_switch() == {}


async def test_kill_switch_of_the_wrong_type_reads_as_off(any_redis: Any) -> None:
    await any_redis.set(KEYS.kill_switch, "on")

    assert await StateStore(any_redis, KEYS).read_kill_switch() == {}


# Cycle state: record -------------------------------------------------------------------------------


def payload(owner: Owner = ME, **changes: Any) -> dict[str, Any]:
    """A record payload that writes nothing but what ``changes`` asks for."""
    base: dict[str, Any] = {
        "summary": None,
        "symbols": [],
        "pause_after": 3,
        "latency": [],
        "latency_keep": 50,
        "backpressure": None,
        "counters": {},
        "last_success": None,
        "lease_value": "",
        "release_heartbeat": False,
        "cycle_id": owner.cycle_id,
        "lock_values": [],
        "breaker": None,
        "spend": None,
        "want_counters": True,
    }
    base.update(changes)
    return base


def update(
    symbol: str, ok: bool, *, fault: bool = False, duration_ms: int = 1000, **kw: Any
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "ok": ok,
        "status": "ok" if ok else "failed",
        "reason": "" if ok else ("invalid_output: bad" if fault else "transient: 503"),
        "duration_ms": duration_ms,
        "fault": fault,
        "at": NOW,
        "action": "BUY" if ok else None,
        **kw,
    }


async def record(store: StateStore, p: dict[str, Any], lock_keys: list[str] | None = None) -> Any:
    return await store.record(p, lock_keys=lock_keys or [], instance_id=ME.instance_id, day=START)


async def stats(redis: Any, symbol: str) -> dict[str, Any]:
    return json.loads(await redis.hget(KEYS.stats, symbol))


async def test_record_appends_to_a_capped_history_newest_first(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    for i in range(5):
        await record(store, payload(summary=json.dumps({"n": i}), history_len=3))

    history = [json.loads(x) for x in await any_redis.lrange(KEYS.history, 0, -1)]

    assert history == [{"n": 4}, {"n": 3}, {"n": 2}]


async def test_record_also_adds_each_summary_to_the_cycle_stream_in_order(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    for i in range(3):
        await record(store, payload(summary=json.dumps({"n": i}), history_len=2))

    entries = await any_redis.xrange(KEYS.cycles)

    # The stream keeps what the shorter list drops, oldest first, each entry one field: the summary.
    assert [fields for _, fields in entries] == [{"doc": json.dumps({"n": i})} for i in range(3)]


async def test_a_cycle_stream_of_the_wrong_type_is_reset_before_anything_is_recorded(any_redis: Any) -> None:
    await any_redis.set(KEYS.cycles, "garbage")
    store = StateStore(any_redis, KEYS)

    result = await record(store, payload(summary=json.dumps({"n": 1})))

    assert [fields for _, fields in await any_redis.xrange(KEYS.cycles)] == [{"doc": '{"n": 1}'}]
    assert any("runner:cycles" in w for w in result.warnings)


async def test_record_keeps_per_symbol_stats(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)

    await record(store, payload(symbols=[update("ETH/USD", True, duration_ms=1000)]))
    await record(store, payload(symbols=[update("ETH/USD", False, duration_ms=2000)]))
    st = await stats(any_redis, "ETH/USD")

    assert st["runs"] == 2
    assert st["successes"] == 1
    assert st["consecutive_errors"] == 1
    assert st["avg_ms"] == 1200  # 1000 * 0.8 + 2000 * 0.2
    assert st["last_status"] == "failed"
    assert st["last_reason"] == "transient: 503"
    assert st["last_action"] == "BUY"  # the last action seen is kept


async def test_symbol_is_paused_after_pause_after_faults_of_its_own(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    paused_now = []
    for _ in range(3):
        result = await record(store, payload(symbols=[update("ETH/USD", False, fault=True)]))
        paused_now.append(result.paused_now)

    assert paused_now == [[], [], ["ETH/USD"]]
    entry = json.loads(await any_redis.hget(KEYS.paused, "ETH/USD"))
    assert entry["failures"] == 3
    assert entry["reason"].startswith("invalid_output")
    assert entry["cycle_id"] == "cycle-a"
    again = await record(store, payload(symbols=[update("ETH/USD", False, fault=True)]))
    assert again.paused_now == []  # already paused: reported once


async def test_outage_failures_never_pause_a_symbol(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    for _ in range(6):
        result = await record(store, payload(symbols=[update("ETH/USD", False, fault=False)]))
        assert result.paused_now == []

    assert await any_redis.hexists(KEYS.paused, "ETH/USD") == 0
    assert (await stats(any_redis, "ETH/USD"))["consecutive_errors"] == 6


async def test_a_success_clears_the_fault_streak(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    sequence = [False, False, True, False, False]
    for ok in sequence:
        result = await record(store, payload(symbols=[update("ETH/USD", ok, fault=not ok)]))
        assert result.paused_now == []

    assert (await stats(any_redis, "ETH/USD"))["consecutive_symbol_faults"] == 2


async def test_resume_unpauses_and_clears_the_streak(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    for _ in range(3):
        await record(store, payload(symbols=[update("ETH/USD", False, fault=True)]))

    resumed = await store.resume("ETH/USD")
    resumed_again = await store.resume("ETH/USD")

    assert resumed is True
    assert resumed_again is False
    assert await any_redis.hexists(KEYS.paused, "ETH/USD") == 0
    st = await stats(any_redis, "ETH/USD")
    assert (st["consecutive_symbol_faults"], st["consecutive_errors"]) == (0, 0)


async def test_record_releases_our_lease_and_heartbeat(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    snap = await begin(store)

    await record(store, payload(lease_value=snap.lease.value, release_heartbeat=True))

    assert await any_redis.exists(KEYS.lease("0-1")) == 0
    assert await any_redis.hexists(KEYS.heartbeat("pod-a"), "cycle-a") == 0
    assert (await begin(store, OTHER)).lease.status == "acquired"


async def test_record_leaves_a_lease_that_is_no_longer_ours(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    ours = await begin(store)
    await any_redis.delete(KEYS.lease("0-1"))
    theirs = await begin(store, OTHER)

    await record(store, payload(lease_value=ours.lease.value))

    assert await any_redis.get(KEYS.lease("0-1")) == theirs.lease.value


async def test_record_releases_only_locks_still_ours(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    held = await manager(any_redis).acquire(["ETH/USD", "BTC/USD"])
    theirs = await seed_lock(any_redis, "BTC/USD")

    await record(
        store,
        payload(lock_values=[r.value for r in held.values()]),
        lock_keys=[r.key for r in held.values()],
    )

    assert await any_redis.exists(KEYS.lock("ETH/USD")) == 0
    assert await any_redis.get(KEYS.lock("BTC/USD")) == theirs


async def test_record_accumulates_counter_totals(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    series = 'signal_generation_total{action="BUY",symbol="ETH/USD"}'

    await record(store, payload(counters={series: 2, "cycle_failures_total": 1}))
    result = await record(store, payload(counters={series: 3}))

    assert result.counters[series] == 5
    assert result.counters["cycle_failures_total"] == 1


async def test_record_keeps_the_latency_window(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)

    await record(store, payload(latency=[f"{NOW}:{ms}" for ms in range(8)], latency_keep=5))

    assert await any_redis.lrange(KEYS.latency, 0, -1) == [f"{NOW}:{ms}" for ms in (7, 6, 5, 4, 3)]


async def test_record_remembers_the_last_success(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)

    success = await record(store, payload(last_success=NOW))
    after_a_failure = await record(store, payload())

    assert success.last_success == NOW
    assert after_a_failure.last_success == NOW


async def test_record_without_any_success_has_no_last_success(any_redis: Any) -> None:
    result = await record(StateStore(any_redis, KEYS), payload())

    assert result.last_success is None


async def test_record_saves_backpressure(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)

    await record(store, payload(backpressure={"consecutive_overruns": "2", "cooldown_remaining": "0"}))

    assert await any_redis.hgetall(KEYS.backpressure("0-1")) == {
        "consecutive_overruns": "2",
        "cooldown_remaining": "0",
    }
    assert (await begin(store)).backpressure.consecutive_overruns == 2


async def test_record_adds_up_todays_spend(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)

    await record(store, payload(spend={"usd": 0.25, "calls": 2}))
    await record(store, payload(spend={"usd": 0.5, "calls": 1}))
    await record(store, payload(spend={"usd": 0, "calls": 0}))

    spend = await any_redis.hgetall(KEYS.spend(START))
    assert float(spend["usd"]) == pytest.approx(0.75)
    assert spend["calls"] == "3"
    assert 0 < await any_redis.ttl(KEYS.spend(START)) <= 3 * 86400
    assert (await begin(store)).spend_usd == pytest.approx(0.75)


async def test_record_resets_state_keys_of_the_wrong_type(any_redis: Any) -> None:
    await any_redis.set(KEYS.history, "oops")
    await any_redis.rpush(KEYS.stats, "x")
    await any_redis.set(KEYS.counters("0-1"), "7")

    result = await record(
        StateStore(any_redis, KEYS),
        payload(summary='{"n": 1}', symbols=[update("ETH/USD", True)], counters={"cycles_total": 1}),
    )

    assert len(result.warnings) == 3
    assert await any_redis.lrange(KEYS.history, 0, -1) == ['{"n": 1}']
    assert (await stats(any_redis, "ETH/USD"))["runs"] == 1
    assert result.counters == {"cycles_total": 1.0}


async def test_record_saves_the_breaker_only_at_the_expected_version(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    opened = BreakerState(state="open", failure_count=5, opened_at=NOW)
    fields = {k: v for k, v in opened.to_fields().items() if k != "version"}

    saved = await record(store, payload(breaker={"expected": 0, "fields": fields}))
    stale = await record(store, payload(breaker={"expected": 0, "fields": BreakerState().to_fields()}))

    assert saved.breaker_saved is True
    assert saved.breaker == BreakerState(state="open", failure_count=5, opened_at=NOW, version=1)
    assert stale.breaker_saved is False
    assert stale.breaker is not None
    assert stale.breaker.state == "open"


# Breaker compare-and-set ---------------------------------------------------------------------------


async def test_breaker_cas_refuses_a_stale_version(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    opened = BreakerState(state="open", failure_count=5, opened_at=NOW)

    first = await store.save_breaker(0, opened)
    stale = await store.save_breaker(0, BreakerState(failure_count=1))
    fresh = await store.save_breaker(1, BreakerState(failure_count=1))

    assert first == (True, BreakerState(state="open", failure_count=5, opened_at=NOW, version=1))
    assert stale == (False, BreakerState(state="open", failure_count=5, opened_at=NOW, version=1))
    assert fresh == (True, BreakerState(failure_count=1, version=2))


async def test_breaker_cas_over_a_key_of_the_wrong_type_starts_at_version_zero(any_redis: Any) -> None:
    await any_redis.set(KEYS.breaker("llm_service"), "garbage")

    saved, state = await StateStore(any_redis, KEYS).save_breaker(0, BreakerState(failure_count=2))

    assert saved is True
    assert state == BreakerState(failure_count=2, version=1)


async def test_reset_breaker_closes_it_whatever_its_state(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    await store.save_breaker(0, BreakerState(state="open", failure_count=9, opened_at=NOW))

    state = await store.reset_breaker()

    assert state.state == "closed"
    assert state.failure_count == 0
    assert state.version == 2


# What notifications read and write ------------------------------------------------------------------


async def test_record_returns_the_state_the_cycle_ends_with(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    await store.set_kill_switch("maintenance", "ops", START)
    p = payload(
        symbols=[update("ETH/USD", False, fault=True, code="invalid_output")],
        pause_after=1,
        spend={"usd": 0.25, "calls": 2},
    )

    result = await record(store, p)

    assert result.paused_now == ["ETH/USD"]
    paused = json.loads(result.paused["ETH/USD"])
    assert (paused["code"], paused["reason"], paused["since"]) == (
        "invalid_output",
        "invalid_output: bad",
        NOW,
    )
    assert result.kill_switch == {"on": "1", "reason": "maintenance", "by": "ops", "at": f"{NOW:.3f}"}
    assert result.spend_usd == pytest.approx(0.25)


async def test_begin_and_record_carry_the_shards_failed_streak(any_redis: Any) -> None:
    from runner.notify import Streak

    store = StateStore(any_redis, KEYS, "1-2")
    streak = Streak(count=2, since=NOW, why="transient on ETH/USD")

    await record(store, payload(failing=streak.to_fields()))
    snap = await begin(store)
    await record(store, payload(failing=None))  # a skipped cycle leaves it
    again = await begin(store, OTHER)

    assert snap.failing == streak
    assert again.failing == streak
    assert (await begin(StateStore(any_redis, KEYS, "0-2"), OTHER)).failing == Streak()


async def test_an_unreadable_streak_is_reset_with_a_warning(any_redis: Any) -> None:
    await any_redis.hset(KEYS.failing("0-1"), mapping={"count": "lots"})

    snap = await begin(StateStore(any_redis, KEYS))

    assert snap.failing.count == 0
    assert any("runner:failing:0-1" in w for w in snap.warnings)


async def test_turning_the_kill_switch_on_again_keeps_since_when(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)

    first = await store.switch_kill(True, "maintenance", "alice", START)
    second = await store.switch_kill(
        True, "longer maintenance", "bob", datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    )
    off = await store.switch_kill(False)

    assert first == ({}, {"on": "1", "reason": "maintenance", "by": "alice", "at": f"{NOW:.3f}"})
    assert second[1] == {"on": "1", "reason": "longer maintenance", "by": "bob", "at": f"{NOW:.3f}"}
    assert off == (second[1], {})


async def test_resume_returns_the_record_the_symbol_was_paused_with(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    await record(
        store, payload(symbols=[update("ETH/USD", False, fault=True, code="invalid_output")], pause_after=1)
    )

    removed = await store.resume_symbol("ETH/USD")

    assert removed is not None
    assert json.loads(removed)["since"] == NOW
    assert await store.resume_symbol("ETH/USD") is None


async def test_a_reset_reports_the_breaker_it_replaced(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    await store.save_breaker(0, BreakerState(state="open", failure_count=5, opened_at=NOW, since=NOW))

    before, after = await store.reset_breaker_from()

    assert (before.state, before.since) == ("open", NOW)
    assert after == BreakerState(version=2)


async def test_a_document_following_one_that_is_not_published_is_skipped(any_redis: Any) -> None:
    eth = await locked(any_redis, "ETH/USD")
    btc = await locked(any_redis, "BTC/USD")
    await seed_lock(any_redis, "BTC/USD")  # lost
    score = Target(KEYS.scored_stream, KEYS.scored_latest, KEYS.scored_channel, 1000)

    def follower(lock: LockResult, symbol: str) -> Pending:
        return Pending(f"score:{symbol}", symbol, "{}", lock.key, lock.value, score)

    def leading(lock: LockResult, symbol: str) -> Pending:  # the chain goes on: its lock stays held
        return dataclasses.replace(pending(make_signal(symbol, lock.token), lock), release=False)

    outcome = await publisher(any_redis).publish_batch(
        [
            leading(eth, "ETH/USD"),
            leading(btc, "BTC/USD"),
            follower(eth, "ETH/USD"),
            follower(btc, "BTC/USD"),
        ],
        [0, 0, 1, 2],
    )

    assert outcome == ["published", "fenced", "published", "skipped"]
    assert [f["symbol"] for _, f in await any_redis.xrange(KEYS.scored_stream)] == ["ETH/USD"]
    assert await any_redis.exists(KEYS.published("score:BTC/USD")) == 0


async def test_the_publisher_keeps_a_chains_documents_in_order_across_batches(any_redis: Any) -> None:
    lock = await locked(any_redis, "ETH/USD")
    await seed_lock(any_redis, "ETH/USD")  # lost before anything is published
    pub = publisher(any_redis)
    pub.start()
    first = pub.submit(pending(make_signal("ETH/USD", lock.token), lock))
    await pub.close()
    pub = publisher(any_redis)
    pub.start()
    score = Target(KEYS.scored_stream, KEYS.scored_latest, KEYS.scored_channel, 1000)

    then = pub.submit(Pending("score:ETH", "ETH/USD", "{}", lock.key, lock.value, score, after=first))
    await pub.close()

    assert (first.fate(), then.fate()) == ("fenced", "skipped")
    assert await any_redis.exists(KEYS.scored_stream) == 0
