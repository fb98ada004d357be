"""Whole cycles (fakeredis and a real redis-server) notifying a real local HTTP receiver: each
change is told once, however many runs see it, and a receiver in trouble costs the cycle nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from runner import operator
from runner.analyzers.base import AnalysisRequest
from runner.analyzers.fake import FakeAnalyzer
from runner.errors import InvalidOutput, PermanentError, TransientError
from runner.models import Analysis, CycleStatus
from runner.shards import Shard
from runner.store.keys import Keys
from tests.support.receiver import Receiver
from tests.unit.test_cycle import answers, cycle, make_settings

KEYS = Keys()
SYMBOLS = ["ETH/USD", "BTC/USD", "SOL/USD"]


def settings_for(receiver: Receiver, **extra: Any) -> Any:
    return make_settings(notify={"urls": [receiver.url()], **extra.pop("notify", {})}, **extra)


def failing(error: type[Exception] = TransientError) -> Any:
    return answers({s: (lambda: error("503 service unavailable")) for s in SYMBOLS})


async def test_a_breaker_that_opens_is_told_once(any_redis: Any, receiver: Receiver) -> None:
    settings = settings_for(receiver, circuit_breaker={"llm_service": {"failure_threshold": 2}})

    opened = await cycle(any_redis, failing(), settings=settings)
    skipped = await cycle(any_redis, failing(), settings=settings)

    assert opened.exit_code == 3
    assert skipped.skip_reason == "breaker_open"
    (message,) = receiver.accepted
    assert message.event == "breaker_opened"
    assert message.title == "autonomous-runner: circuit breaker opened"
    assert "transient on" in message.message
    assert "`runner breaker reset`" in message.message
    assert f"cycle {opened.cycle_id}" in message.message


async def test_two_shards_that_see_one_opening_send_one_message(any_redis: Any, receiver: Receiver) -> None:
    settings = settings_for(receiver, circuit_breaker={"llm_service": {"failure_threshold": 1}})
    shards = [Shard(0, 2), Shard(1, 2)]
    assert all(any(s.owns(sym) for sym in SYMBOLS) for s in shards)
    started: set[Shard] = set()
    both_started, gate = asyncio.Event(), asyncio.Event()

    async def held_then_failing(request: AnalysisRequest) -> Analysis:
        started.update(s for s in shards if s.owns(request.symbol))
        if len(started) == len(shards):
            both_started.set()
        await gate.wait()
        raise TransientError("503 service unavailable")

    runs = [
        asyncio.create_task(
            cycle(any_redis, settings=settings, analyzer=FakeAnalyzer(held_then_failing), shard=s)
        )
        for s in shards
    ]
    await both_started.wait()  # both shards read a closed breaker before either records
    gate.set()
    outcomes = await asyncio.gather(*runs)

    assert [o.status for o in outcomes] == [CycleStatus.FAILED, CycleStatus.FAILED]
    assert receiver.events() == ["breaker_opened"]


async def test_a_paused_symbol_and_its_resume_are_told_once_each(any_redis: Any, receiver: Receiver) -> None:
    settings = settings_for(receiver, adaptive={"pause_after_failures": 2})
    bad_eth = answers({"ETH/USD": lambda: InvalidOutput("confidence 7 is not in [0, 1]")})
    for _ in range(3):
        await cycle(any_redis, bad_eth, settings=settings)

    change = await operator.resume(any_redis, settings, "ETH/USD", by="ops", now=datetime.now(UTC))
    again = await operator.resume(any_redis, settings, "ETH/USD", by="ops", now=datetime.now(UTC))
    await cycle(any_redis, settings=settings)

    assert change.changed
    assert not again.changed
    assert receiver.events() == ["symbol_paused", "symbol_resumed"]
    paused, resumed = receiver.accepted
    assert paused.title == "autonomous-runner: ETH/USD paused"
    assert "Why: invalid_output: confidence 7 is not in [0, 1]" in paused.message
    assert "To undo: `runner resume ETH/USD`" in paused.message
    assert "Seen by: `runner resume ETH/USD` on ops" in resumed.message


async def test_a_kill_switch_set_during_a_cycle_is_told_once(any_redis: Any, receiver: Receiver) -> None:
    settings = settings_for(receiver)
    gate = asyncio.Event()
    started = asyncio.Event()

    async def held(request: AnalysisRequest) -> Analysis:
        started.set()
        await gate.wait()
        return answers()(request)

    run = asyncio.create_task(cycle(any_redis, settings=settings, analyzer=FakeAnalyzer(held)))
    await started.wait()  # the cycle read the switch off
    on = await operator.set_kill_switch(
        any_redis, settings, on=True, reason="exchange maintenance", by="ops", now=datetime.now(UTC)
    )
    gate.set()
    outcome = await run  # and ends with it on: the same transition
    skipped = await cycle(any_redis, settings=settings)
    off = await operator.set_kill_switch(any_redis, settings, on=False, by="ops", now=datetime.now(UTC))

    assert on.changed
    assert off.changed
    assert outcome.status is CycleStatus.COMPLETED
    assert skipped.skip_reason == "kill_switch"
    assert receiver.events() == ["kill_switch_on", "kill_switch_off"]
    assert "Why: exchange maintenance (by ops)" in receiver.accepted[0].message


async def test_failed_cycles_in_a_row_and_the_recovery_are_told_once(
    any_redis: Any, receiver: Receiver
) -> None:
    settings = settings_for(receiver, notify={"failing_cycles": 2})

    codes = [(await cycle(any_redis, failing(PermanentError), settings=settings)).exit_code for _ in range(3)]
    recovered = await cycle(any_redis, settings=settings)
    await cycle(any_redis, settings=settings)

    assert codes == [3, 3, 3]
    assert recovered.exit_code == 0
    assert receiver.events() == ["cycles_failing", "recovered"]
    failing_msg = receiver.accepted[0].message
    assert "2 cycles of shard 0/1 failed in a row" in failing_msg
    assert "permanent on ETH/USD, BTC/USD, SOL/USD" in failing_msg


async def test_the_daily_budget_running_out_is_told_once(any_redis: Any, receiver: Receiver) -> None:
    settings = settings_for(receiver, analyzer={"daily_budget_usd": 0.05})

    def costly(request: AnalysisRequest) -> Analysis:
        return answers()(request).model_copy(update={"cost_usd": 0.03})

    spent = await cycle(any_redis, costly, settings=settings)
    skipped = await cycle(any_redis, costly, settings=settings)

    assert spent.status in (CycleStatus.COMPLETED, CycleStatus.PARTIAL)
    assert skipped.skip_reason == "budget"
    (message,) = receiver.accepted
    assert message.event == "budget_exhausted"
    assert "of $0.05 on" in message.message


async def test_a_receiver_answering_500_costs_the_cycle_nothing(any_redis: Any, receiver: Receiver) -> None:
    settings = settings_for(receiver, circuit_breaker={"llm_service": {"failure_threshold": 2}})
    receiver.mode = "error"

    opened = await cycle(any_redis, failing(), settings=settings)
    receiver.up()
    later = await cycle(any_redis, failing(), settings=settings)
    idle = await cycle(any_redis, failing(), settings=settings)

    assert opened.exit_code == 3  # as without notifications
    assert any(w.startswith("notification breaker_opened not delivered") for w in opened.warnings)
    assert later.warnings == []
    assert idle.warnings == []
    assert receiver.events() == ["breaker_opened"]
    counters = await any_redis.hgetall(KEYS.counters("0-1"))
    assert float(counters['notifications_total{event="breaker_opened",result="failed"}']) == 1
    assert float(counters['notifications_total{event="breaker_opened",result="sent"}']) == 1


async def test_the_lease_is_free_while_a_notification_is_sent(any_redis: Any, receiver: Receiver) -> None:
    settings = settings_for(
        receiver, circuit_breaker={"llm_service": {"failure_threshold": 2}}, notify={"timeout_seconds": 30}
    )
    receiver.slow(answer=True)

    first = asyncio.create_task(cycle(any_redis, failing(), settings=settings))
    await asyncio.to_thread(receiver.holding.wait, 30)  # its message is held by the receiver
    lease_during_send = await any_redis.exists(KEYS.lease("0-1"))
    second = await cycle(any_redis, failing(), settings=settings)
    receiver.gate.set()
    opened = await first

    assert lease_during_send == 0
    assert second.skip_reason == "breaker_open"  # it ran its guards, not "cycle_running"
    assert opened.exit_code == 3
    assert receiver.events() == ["breaker_opened"]


async def test_a_dry_run_tells_nothing(any_redis: Any, receiver: Receiver) -> None:
    settings = settings_for(receiver, circuit_breaker={"llm_service": {"failure_threshold": 1}})

    await cycle(any_redis, failing(), settings=settings, dry_run=True)

    assert receiver.accepted == []
    assert await any_redis.keys("runner:notify:*") == []
