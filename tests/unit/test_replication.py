"""What asynchronous replication can do to the runner's promises, and the rules that keep them:
fencing tokens that never go backwards when a failover loses the counter, a retried publish that
writes nothing twice, a script cache that a promoted node lacks, errors that say the master
moved, and publishes a replica must confirm (a real master and replica here)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runner.analyzers.fake import FakeAnalyzer
from runner.clock import SystemClock
from runner.cycle import Deps, run_cycle
from runner.errors import RedisUnavailable, TopologyChanged
from runner.market.synthetic import SyntheticSource
from runner.models import CycleStatus, SymbolStatus
from runner.store import scripts
from runner.store.connection import Script, changes_topology, redis_errors, replica_count
from runner.store.publish import Confirmation, Publication, Publisher, PublishResult
from tests.conftest import RedisServer, start_redis
from tests.integration.helpers import wait_until
from tests.unit.test_cycle import SYMBOLS, answers, make_settings
from tests.unit.test_scripts import KEYS, ME, OTHER, locked, make_signal, manager, pending


async def server_clock_us(redis: Any) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1_000_000 + int(micros)


# Fencing tokens ---------------------------------------------------------------------------------


async def test_a_token_is_at_least_the_masters_clock(any_redis: Any) -> None:
    before = await server_clock_us(any_redis)
    got = (await manager(any_redis).acquire(["ETH/USD"]))["ETH/USD"]
    after = await server_clock_us(any_redis)

    assert before <= got.token <= after
    assert int(await any_redis.get(KEYS.fencing)) == got.token
    assert json.loads(got.value)["token"] == got.token  # exact: all 16 digits, as a JSON number


async def test_tokens_of_one_burst_are_strictly_increasing(any_redis: Any) -> None:
    symbols = [f"S{i}/USD" for i in range(20)]
    got = await manager(any_redis).acquire(symbols)

    tokens = [got[s].token for s in symbols]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)


@pytest.mark.parametrize("loss", ["counter gone", "counter rolled back"])
async def test_tokens_keep_growing_when_a_failover_loses_the_counter(any_redis: Any, loss: str) -> None:
    """A promoted replica that missed the last increments: the counter is gone, or back at an
    older value. The next token is still larger than every token handed out before."""
    first = (await manager(any_redis).acquire(["ETH/USD"]))["ETH/USD"]
    earlier = await manager(any_redis, OTHER).acquire(["BTC/USD", "SOL/USD"])
    handed_out = [first.token, *(r.token for r in earlier.values())]
    if loss == "counter gone":
        await any_redis.delete(KEYS.fencing)
    else:
        await any_redis.set(KEYS.fencing, first.token - 1)
    await asyncio.sleep(0.002)  # the failover itself takes far longer than the last burst did

    later = (await manager(any_redis).acquire(["AVAX/USD"]))["AVAX/USD"]

    assert later.token > max(handed_out)


async def test_a_counter_ahead_of_the_clock_still_only_grows(any_redis: Any) -> None:
    ahead = await server_clock_us(any_redis) + 3_600_000_000  # an hour ahead
    await any_redis.set(KEYS.fencing, ahead)

    got = (await manager(any_redis).acquire(["ETH/USD"]))["ETH/USD"]

    assert got.token == ahead + 1


# A retried publish ---------------------------------------------------------------------------------


async def test_a_retried_publish_whose_reply_was_lost_writes_nothing_twice(any_redis: Any) -> None:
    """The first try ran (its reply lost on the way back); the retry finds its own marker:
    reported published, one entry, the lock released once."""
    lock = await locked(any_redis, "ETH/USD")
    signal = make_signal("ETH/USD", lock.token)
    publisher = Publisher(any_redis, KEYS, owner=ME.cycle_id)

    first = await publisher.publish_batch([pending(signal, lock)])
    retry = await publisher.publish_batch([pending(signal, lock)])

    assert first == retry == ["published"]
    assert await any_redis.xlen(KEYS.stream) == 1
    assert await any_redis.get(KEYS.published(signal.id)) == ME.cycle_id
    assert await any_redis.exists(lock.key) == 0


class LostReply:
    """The publish script behind a connection that drops its reply: the script runs on Redis
    (``runs``) or never gets there, and either way the run hears only a timeout."""

    def __init__(self, script: Any, runs: bool) -> None:
        self.script, self.runs = script, runs

    async def __call__(self, keys: Any, args: Any) -> Any:
        if self.runs:
            await self.script(keys, args)
        raise RedisUnavailable("Redis did not answer in time (publishing signals)")


@pytest.mark.parametrize("ran", [True, False], ids=["it ran", "it never got there"])
async def test_a_publish_whose_reply_was_lost_is_read_back_before_the_run_ends(
    any_redis: Any, ran: bool
) -> None:
    """The run cannot tell from the timeout whether its publish ran; the marker it reads back
    before it ends can: published if the script ran, failed (and no entry) if it did not."""
    locks = [await locked(any_redis, s) for s in ("ETH/USD", "BTC/USD")]
    publisher = Publisher(any_redis, KEYS, lambda: 10.0, owner=ME.cycle_id)
    publisher._script = LostReply(publisher._script, runs=ran)  # type: ignore[assignment]
    publisher.start()
    done = [publisher.submit(pending(make_signal(lk.key.rsplit(":", 1)[-1], lk.token), lk)) for lk in locks]
    await asyncio.gather(*(p.written for p in done))
    await publisher.close()

    expected = PublishResult.PUBLISHED if ran else PublishResult.ERROR
    assert [p.fate() for p in done] == [expected, expected]
    assert [p.landed for p in done] == [ran, ran]
    assert await any_redis.xlen(KEYS.stream) == (2 if ran else 0)
    assert publisher.errors == ["Redis did not answer in time (publishing signals)"]


async def test_a_lost_reply_that_cannot_be_read_back_says_the_document_may_be_published(
    any_redis: Any,
) -> None:
    lock = await locked(any_redis, "ETH/USD")
    publisher = Publisher(any_redis, KEYS, lambda: 10.0, owner=ME.cycle_id)
    publisher._script = LostReply(publisher._script, runs=True)  # type: ignore[assignment]

    async def unreachable(*keys: str) -> Any:
        raise RedisConnectionError("Connection refused")

    publisher.start()
    [done] = [publisher.submit(pending(make_signal("ETH/USD", lock.token), lock))]
    await done.written
    any_redis.mget = unreachable
    await publisher.close()

    assert done.fate() is PublishResult.ERROR
    assert done.landed is None
    assert done.note.startswith("its publish got no answer and could not be read back (")
    assert await any_redis.xlen(KEYS.stream) == 1  # it is there: the run says it may be


async def test_another_run_of_the_minute_finds_a_duplicate_even_after_a_takeover(any_redis: Any) -> None:
    lock = await locked(any_redis, "ETH/USD")
    await Publisher(any_redis, KEYS, owner=ME.cycle_id).publish_batch(
        [pending(make_signal("ETH/USD", lock.token), lock)]
    )
    theirs = await locked(any_redis, "ETH/USD", OTHER)

    again = await Publisher(any_redis, KEYS, owner=OTHER.cycle_id).publish_batch(
        [pending(make_signal("ETH/USD", theirs.token), theirs)]
    )

    assert again == ["duplicate"]
    assert await any_redis.xlen(KEYS.stream) == 1
    assert await any_redis.exists(theirs.key) == 0  # its own lock, released with its last document


async def test_a_stale_run_is_fenced_even_when_the_id_was_published_by_the_new_owner(any_redis: Any) -> None:
    """A run whose lock was taken over wakes up after the new owner published the same id: it is
    told it was fenced (it was stale), not that all is well."""
    mine = await locked(any_redis, "ETH/USD")
    await any_redis.delete(mine.key)  # expired, then taken by another run
    theirs = await locked(any_redis, "ETH/USD", OTHER)
    await Publisher(any_redis, KEYS, owner=OTHER.cycle_id).publish_batch(
        [pending(make_signal("ETH/USD", theirs.token), theirs)]
    )

    late = await Publisher(any_redis, KEYS, owner=ME.cycle_id).publish_batch(
        [pending(make_signal("ETH/USD", mine.token), mine)]
    )

    assert late == ["fenced"]
    assert await any_redis.xlen(KEYS.stream) == 1


# The script cache --------------------------------------------------------------------------------


async def test_a_node_without_the_script_gets_its_body(redis_server: RedisServer) -> None:
    """The script cache is not replicated: a promoted replica answers NOSCRIPT, and the script is
    sent again as EVAL (it did not run, so this is no retry), which caches it there."""
    client = aioredis.Redis(port=redis_server.port, decode_responses=True)
    try:
        await client.flushall()
        script = Script(client, scripts.RESUME)
        keys, args = scripts.pack({"paused": KEYS.paused, "stats": KEYS.stats}, args={"symbol": "ETH/USD"})
        await client.hset(KEYS.paused, "ETH/USD", "{}")
        await client.script_flush()

        assert await script(keys, args) == "{}"  # the removed pause record
        assert await client.script_exists(script.sha) == [True]
        assert await client.hlen(KEYS.paused) == 0
    finally:
        await client.aclose()


# Errors that say the master moved ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "moved"),
    [
        (ReadOnlyError("You can't write against a read only replica."), True),
        (
            ResponseError("NOREPLICAS Not enough good replicas to write. script: 1a2b, on @user_script:1"),
            True,
        ),
        (MasterDownError("MASTERDOWN Link with MASTER is down"), True),
        (ClusterDownError("CLUSTERDOWN The cluster is down"), True),
        (MasterNotFoundError("No master found for 'mymaster'"), True),
        (RedisConnectionError("Error 111 connecting to 10.0.0.5:6379. Connection refused."), True),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (RedisTimeoutError("Timeout reading from 10.0.0.5:6379"), False),
        (TimeoutError(), False),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (ResponseError("ERR Error running script"), False),
    ],
)
async def test_errors_that_say_the_master_moved(error: BaseException, moved: bool) -> None:
    assert changes_topology(error) is moved
    with pytest.raises(RedisUnavailable) as info:
        async with redis_errors("publishing signals"):
            raise error
    assert isinstance(info.value, TopologyChanged) is moved
    assert "publishing signals" in str(info.value)


# Publish confirmation, on a real master and replica ----------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and its replica, started for this module."""
    directory = Path(tempfile.mkdtemp(prefix="runner-pair-"))
    (directory / "m").mkdir()
    (directory / "r").mkdir()
    master = start_redis(directory / "m", None, "--repl-diskless-sync-delay", "0")
    replica = start_redis(
        directory / "r", None, "--replicaof", "127.0.0.1", str(master.port), "--repl-diskless-sync-delay", "0"
    )
    try:
        yield master, replica
    finally:
        replica.stop()
        master.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def master(pair: tuple[RedisServer, RedisServer]) -> AsyncIterator[aioredis.Redis]:
    server, replica = pair
    client = aioredis.Redis(port=server.port, decode_responses=True, socket_timeout=5)
    await client.flushall()
    with replica.client() as r:
        wait_until(lambda: r.info("replication").get("master_link_status") == "up", timeout=60)
    yield client
    await client.aclose()


async def publish_and_confirm(
    client: aioredis.Redis, replicas: int = 1, *, before_close: Any = None
) -> tuple[list[Publication], Publisher]:
    async def count() -> int:
        return replicas

    publisher = Publisher(
        client, KEYS, lambda: 10.0, owner=ME.cycle_id, confirmation=Confirmation(count, timeout=0.5)
    )
    publisher.start()
    locks = [await locked(client, s) for s in ("ETH/USD", "BTC/USD")]
    done = [publisher.submit(pending(make_signal(lk.key.rsplit(":", 1)[-1], lk.token), lk)) for lk in locks]
    await asyncio.gather(*(p.written for p in done))
    if before_close is not None:
        await before_close()
    await publisher.close()
    return done, publisher


async def test_the_master_counts_its_replicas(master: aioredis.Redis) -> None:
    assert await replica_count(master, KEYS.fencing) == 1


async def test_a_publish_a_replica_acknowledged_is_published(master: aioredis.Redis) -> None:
    done, _ = await publish_and_confirm(master)

    assert [p.fate() for p in done] == [PublishResult.PUBLISHED] * 2
    assert all(p.confirmed for p in done)


async def test_a_publish_no_replica_acknowledged_is_unconfirmed(
    master: aioredis.Redis, pair: tuple[RedisServer, RedisServer]
) -> None:
    """The replica is frozen (its link cut, as in a partition): the documents are on the master,
    but nothing says they would survive a failover."""
    replica = pair[1]

    async def cut() -> None:
        replica.process.send_signal(signal.SIGSTOP)

    try:
        done, _ = await publish_and_confirm(master, before_close=cut)
    finally:
        replica.process.send_signal(signal.SIGCONT)

    assert [p.fate() for p in done] == [PublishResult.UNCONFIRMED] * 2
    assert all("no replica acknowledged" in p.note for p in done)
    assert await master.xlen(KEYS.stream) == 2  # written, not counted as published


async def test_a_document_gone_from_the_master_is_unconfirmed(master: aioredis.Redis) -> None:
    """A failover between the publish and the confirmation lost one document: the new master
    lacks its marker, so it cannot be confirmed, whatever a replica acknowledges."""

    async def lose_one() -> None:
        await master.delete(KEYS.published("ETH/USD:2026-11-23T14:05"))

    done, _ = await publish_and_confirm(master, before_close=lose_one)

    fates = {p.pending.symbol: (p.fate(), p.note) for p in done}
    assert fates["ETH/USD"] == (PublishResult.UNCONFIRMED, "gone from the master (lost in a failover)")
    assert fates["BTC/USD"] == (PublishResult.PUBLISHED, "")


async def test_a_master_without_replicas_is_not_asked(master: aioredis.Redis) -> None:
    done, _ = await publish_and_confirm(master, replicas=0)

    assert [p.fate() for p in done] == [PublishResult.PUBLISHED] * 2
    assert all(p.confirmed is None for p in done)


async def test_a_refused_confirmation_says_the_master_moved(master: aioredis.Redis) -> None:
    """NOREPLICAS (``min-replicas-to-write`` not met) refuses the confirmation's own write: the
    documents are unconfirmed, and the cycle is told the topology changed."""
    seen: list[BaseException] = []

    async def refuse() -> None:
        await master.config_set("min-replicas-to-write", 5)

    async def count() -> int:
        return 1

    publisher = Publisher(
        master,
        KEYS,
        lambda: 10.0,
        owner=ME.cycle_id,
        confirmation=Confirmation(count, timeout=0.5),
        on_topology=seen.append,
    )
    lock = await locked(master, "ETH/USD")
    publication = publisher.submit(pending(make_signal("ETH/USD", lock.token), lock))
    try:
        await publisher._flush()
        await refuse()
        await publisher.confirm()
    finally:
        await master.config_set("min-replicas-to-write", 0)

    assert publication.fate() is PublishResult.UNCONFIRMED
    assert "NOREPLICAS" in publication.note
    assert len(seen) == 1
    assert isinstance(seen[0], TopologyChanged)


# A whole cycle on the real master and replica -----------------------------------------------------


async def test_a_cycle_whose_replica_is_cut_off_reports_unconfirmed(
    master: aioredis.Redis, pair: tuple[RedisServer, RedisServer]
) -> None:
    """The replica stops acknowledging while the cycle runs: every symbol is `unconfirmed` in the
    results, counted so in the metrics (never as a published signal), said in the warnings; the
    cycle fails (exit 3), though the documents are on the master."""
    replica = pair[1]
    stopped = False

    def handler(request: Any) -> Any:
        nonlocal stopped
        if not stopped:  # the first answer cuts the replica off
            replica.process.send_signal(signal.SIGSTOP)
            stopped = True
        return answers()(request)

    async def count() -> int:
        return 1

    settings = make_settings(redis={"replica_ack_timeout_seconds": 0.3})
    deps = Deps(
        redis=master,
        analyzer=FakeAnalyzer(handler),
        market=SyntheticSource(),
        clock=SystemClock(),
        replicas=count,
    )
    try:
        outcome = await run_cycle(settings, deps, symbols=list(SYMBOLS))
    finally:
        replica.process.send_signal(signal.SIGCONT)

    assert outcome.status is CycleStatus.FAILED
    assert outcome.exit_code == 3
    assert outcome.signals == []
    assert {r.status for r in outcome.results} == {SymbolStatus.UNCONFIRMED}
    assert all(
        r.stages == {"signal": "unconfirmed", "score": "unconfirmed", "advise": "unconfirmed"}
        for r in outcome.results
    )
    assert any("not confirmed by a replica" in w for w in outcome.warnings)
    assert await master.xlen(KEYS.stream) == len(SYMBOLS)
    counters = await master.hgetall(KEYS.counters("0-1"))
    assert not any(k.startswith("signal_generation_total") for k in counters)
    assert float(counters['signal_generation_skipped_total{reason="unconfirmed",symbol="ETH/USD"}']) == 1
    assert float(counters['pipeline_stage_total{stage="signal",status="unconfirmed"}']) == len(SYMBOLS)
