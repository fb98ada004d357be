"""One cycle end to end against fakeredis and a real redis-server, with a scripted analyzer and the
synthetic feed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from runner.analyzers.base import AnalysisRequest
from runner.analyzers.fake import FakeAnalyzer
from runner.clock import Clock, FrozenClock, SystemClock
from runner.config import Settings, load_settings
from runner.cycle import Control, Deps, run_cycle
from runner.errors import AuthError, InvalidOutput, PermanentError, TransientError
from runner.market.synthetic import SyntheticSource
from runner.models import Analysis, CycleStatus, Outcome, SymbolStatus
from runner.store.keys import Keys
from runner.store.locks import Owner
from runner.store.state import StateStore

SYMBOLS = ["ETH/USD", "BTC/USD", "SOL/USD"]
KEYS = Keys()
START = datetime(2026, 11, 23, 14, 5, 7, tzinfo=UTC)

Failures = dict[str, Callable[[], Exception]]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_settings(**overrides: Any) -> Settings:
    base = {"instance_id": "unit-runner", "retry": {"delay_seconds": 0.001, "max_attempts": 1}}
    return load_settings(None, deep_merge(base, overrides), environ={})


def answers(failures: Failures | None = None, action: str = "BUY") -> Callable[[AnalysisRequest], Analysis]:
    """A handler that raises the scripted error for some symbols and answers ``action`` for the rest."""
    failures = failures or {}

    def handler(request: AnalysisRequest) -> Analysis:
        if request.symbol in failures:
            raise failures[request.symbol]()
        return Analysis(
            symbol=request.symbol,
            action=action,  # type: ignore[arg-type]
            confidence=0.7,
            reasoning=f"scripted {action}",
            price=100.0,
            analyzer="fake",
        )

    return handler


def deps(redis: Any, analyzer: FakeAnalyzer, clock: Clock | None = None) -> Deps:
    return Deps(redis=redis, analyzer=analyzer, market=SyntheticSource(), clock=clock or SystemClock())


async def cycle(
    redis: Any,
    handler: Callable[[AnalysisRequest], Any] | None = None,
    *,
    settings: Settings | None = None,
    symbols: list[str] | None = None,
    clock: Clock | None = None,
    analyzer: FakeAnalyzer | None = None,
    **kw: Any,
) -> Outcome:
    analyzer = analyzer or FakeAnalyzer(handler or answers())
    return await run_cycle(
        settings or make_settings(), deps(redis, analyzer, clock), symbols=symbols or list(SYMBOLS), **kw
    )


def by_symbol(outcome: Outcome) -> dict[str, Any]:
    return {r.symbol: r for r in outcome.results}


async def stream_symbols(redis: Any) -> list[str]:
    return [fields["symbol"] for _, fields in await redis.xrange(KEYS.stream)]


async def hold_lock(redis: Any, symbol: str, *, alive: bool, age: float = 5.0) -> None:
    """Another run holds ``symbol``; its heartbeat is alive or gone."""
    now = time.time()
    record = {"instance_id": "pod-b", "cycle_id": "cycle-b", "pid": 9, "acquired_at": now - age, "token": 1}
    await redis.set(KEYS.lock(symbol), json.dumps(record), ex=90)
    if alive:
        await redis.hset(KEYS.heartbeat("pod-b"), "cycle-b", f"{now + 60:.3f}")


# Outcomes ------------------------------------------------------------------------------------------


async def test_all_symbols_ok_completes_and_publishes(any_redis: Any) -> None:
    outcome = await cycle(any_redis)

    assert outcome.status is CycleStatus.COMPLETED
    assert outcome.exit_code == 0
    assert outcome.skip_reason is None
    assert [r.status for r in outcome.results] == [SymbolStatus.OK] * 3
    assert all(r.attempts == 1 for r in outcome.results)
    assert sorted(s.symbol for s in outcome.signals) == sorted(SYMBOLS)
    assert sorted(await stream_symbols(any_redis)) == sorted(SYMBOLS)
    latest = await any_redis.hgetall(KEYS.latest)
    assert set(latest) == set(SYMBOLS)
    doc = json.loads(latest["ETH/USD"])
    assert doc["action"] == "BUY"
    assert doc["cycle_id"] == outcome.cycle_id
    assert doc["instance_id"] == "unit-runner"
    assert doc["fencing_token"] > 0
    assert [k async for k in any_redis.scan_iter(KEYS.lock_pattern)] == []  # every lock released
    assert await any_redis.exists(KEYS.lease("0-1")) == 0


async def test_the_cycle_is_recorded_in_history_and_stats(any_redis: Any) -> None:
    outcome = await cycle(any_redis)

    history = [json.loads(x) for x in await any_redis.lrange(KEYS.history, 0, -1)]
    stats = json.loads(await any_redis.hget(KEYS.stats, "ETH/USD"))
    counters = await any_redis.hgetall(KEYS.counters("0-1"))

    assert len(history) == 1
    assert history[0]["cycle_id"] == outcome.cycle_id
    assert history[0]["status"] == "completed"
    assert history[0]["signals"] == 3
    assert (stats["runs"], stats["successes"], stats["last_action"]) == (1, 1, "BUY")
    assert float(counters['signal_generation_total{action="BUY",symbol="ETH/USD"}']) == 1
    assert len(await any_redis.lrange(KEYS.latency, 0, -1)) == 3


async def test_some_symbols_failing_is_partial(any_redis: Any) -> None:
    outcome = await cycle(any_redis, answers({"BTC/USD": lambda: PermanentError("400 bad request")}))

    results = by_symbol(outcome)
    assert outcome.status is CycleStatus.PARTIAL
    assert outcome.exit_code == 1
    assert results["BTC/USD"].status is SymbolStatus.FAILED
    assert results["BTC/USD"].reason.startswith("permanent")
    assert results["ETH/USD"].status is SymbolStatus.OK
    assert sorted(await stream_symbols(any_redis)) == ["ETH/USD", "SOL/USD"]


async def test_every_symbol_failing_is_failed(any_redis: Any) -> None:
    failures: Failures = {s: (lambda: PermanentError("400 bad request")) for s in SYMBOLS}

    outcome = await cycle(any_redis, answers(failures))

    assert outcome.status is CycleStatus.FAILED
    assert outcome.exit_code == 3
    assert outcome.signals == []
    assert await any_redis.xlen(KEYS.stream) == 0


async def test_a_symbol_slower_than_its_timeout_times_out(any_redis: Any) -> None:
    async def slow_btc(request: AnalysisRequest) -> Analysis:
        if request.symbol == "BTC/USD":
            await asyncio.Event().wait()  # never answers: only its timeout ends it
        return answers()(request)

    settings = make_settings(timeouts={"symbol_timeout_seconds": 0.5})
    outcome = await cycle(any_redis, slow_btc, settings=settings)

    results = by_symbol(outcome)
    assert results["BTC/USD"].status is SymbolStatus.TIMEOUT
    assert results["ETH/USD"].status is SymbolStatus.OK
    assert outcome.exit_code == 1


# Locks and leases ----------------------------------------------------------------------------------


async def test_symbol_locked_by_a_live_owner_is_skipped_for_it(any_redis: Any) -> None:
    await hold_lock(any_redis, "BTC/USD", alive=True)
    analyzer = FakeAnalyzer(answers())

    outcome = await cycle(any_redis, analyzer=analyzer)

    results = by_symbol(outcome)
    assert results["BTC/USD"].status is SymbolStatus.LOCKED
    assert "pod-b" in results["BTC/USD"].reason
    assert sorted(r.symbol for r in analyzer.requests) == ["ETH/USD", "SOL/USD"]
    assert outcome.status is CycleStatus.PARTIAL
    assert outcome.exit_code == 1
    assert json.loads(await any_redis.get(KEYS.lock("BTC/USD")))["instance_id"] == "pod-b"  # untouched


async def test_every_symbol_locked_by_live_owners_is_a_guarded_skip(any_redis: Any) -> None:
    for s in SYMBOLS:
        await hold_lock(any_redis, s, alive=True)
    analyzer = FakeAnalyzer(answers())

    outcome = await cycle(any_redis, analyzer=analyzer)

    assert outcome.status is CycleStatus.SKIPPED
    assert outcome.skip_reason == "all_locked"
    assert outcome.exit_code == 0
    assert all(r.status is SymbolStatus.LOCKED for r in outcome.results)
    assert analyzer.requests == []


async def test_stale_lock_of_a_dead_owner_is_taken_over_and_counted(any_redis: Any) -> None:
    await hold_lock(any_redis, "BTC/USD", alive=False)

    outcome = await cycle(any_redis)

    counters = await any_redis.hgetall(KEYS.counters("0-1"))
    assert by_symbol(outcome)["BTC/USD"].status is SymbolStatus.OK
    assert outcome.exit_code == 0
    assert float(counters['stale_locks_recovered_total{reason="heartbeat",symbol="BTC/USD"}']) == 1
    assert await any_redis.exists(KEYS.lock("BTC/USD")) == 0


async def test_another_cycle_holding_the_lease_skips_this_one(any_redis: Any) -> None:
    store = StateStore(any_redis, KEYS)
    await store.begin(
        Owner("pod-b", "cycle-b"),
        datetime.now(UTC),
        lease_ttl=95,
        stale_seconds=120,
        heartbeat_ttl=30,
        latency_n=10,
        readonly=False,
    )
    analyzer = FakeAnalyzer(answers())

    outcome = await cycle(any_redis, analyzer=analyzer)

    assert outcome.status is CycleStatus.SKIPPED
    assert outcome.skip_reason == "cycle_running"
    assert outcome.exit_code == 0
    assert analyzer.requests == []
    assert json.loads(await any_redis.get(KEYS.lease("0-1")))["instance_id"] == "pod-b"


# Guards --------------------------------------------------------------------------------------------


async def test_kill_switch_skips_the_cycle(any_redis: Any) -> None:
    await StateStore(any_redis, Keys.for_settings(make_settings())).set_kill_switch(
        "incident", "ops", datetime.now(UTC)
    )
    analyzer = FakeAnalyzer(answers())

    outcome = await cycle(any_redis, analyzer=analyzer)

    assert outcome.status is CycleStatus.SKIPPED
    assert outcome.skip_reason == "kill_switch"
    assert "incident" in (outcome.skip_detail or "")
    assert outcome.exit_code == 0
    assert analyzer.requests == []
    assert await any_redis.xlen(KEYS.stream) == 0
    history = [json.loads(x) for x in await any_redis.lrange(KEYS.history, 0, -1)]
    assert history[0]["skip_reason"] == "kill_switch"


# Invalid output --------------------------------------------------------------------------------------


async def test_invalid_output_fails_the_symbol_and_is_never_a_hold(any_redis: Any) -> None:
    outcome = await cycle(
        any_redis, answers({"ETH/USD": lambda: InvalidOutput("confidence 7 is not in [0, 1]")})
    )

    eth = by_symbol(outcome)["ETH/USD"]
    assert eth.status is SymbolStatus.FAILED
    assert eth.reason.startswith("invalid_output")
    assert eth.signal is None
    assert "ETH/USD" not in [s.symbol for s in outcome.signals]
    assert "ETH/USD" not in await stream_symbols(any_redis)
    assert await any_redis.hget(KEYS.latest, "ETH/USD") is None
    assert outcome.exit_code == 1


async def test_an_answer_that_does_not_validate_is_invalid_output(any_redis: Any) -> None:
    def wild(request: AnalysisRequest) -> Analysis:
        return Analysis(symbol=request.symbol, action="BUY", confidence=7, reasoning="sure")

    outcome = await cycle(any_redis, wild, symbols=["ETH/USD"])

    eth = by_symbol(outcome)["ETH/USD"]
    assert eth.status is SymbolStatus.FAILED
    assert eth.reason.startswith("invalid_output")
    assert "confidence" in eth.reason
    assert outcome.exit_code == 3
    assert await any_redis.xlen(KEYS.stream) == 0


async def test_an_answer_about_another_symbol_is_invalid_output(any_redis: Any) -> None:
    def confused(request: AnalysisRequest) -> Analysis:
        return Analysis(symbol="DOGE/USD", action="SELL", confidence=0.9, reasoning="wrong coin")

    outcome = await cycle(any_redis, confused, symbols=["ETH/USD"])

    assert by_symbol(outcome)["ETH/USD"].reason.startswith("invalid_output")
    assert await any_redis.xlen(KEYS.stream) == 0


# Retries and fail-fast ------------------------------------------------------------------------------


async def test_transient_error_is_retried_and_then_succeeds(any_redis: Any) -> None:
    calls: dict[str, int] = {}

    def flaky(request: AnalysisRequest) -> Analysis:
        calls[request.symbol] = calls.get(request.symbol, 0) + 1
        if calls[request.symbol] == 1:
            raise TransientError("503 service unavailable")
        return answers()(request)

    settings = make_settings(retry={"delay_seconds": 0.001, "max_attempts": 2})
    outcome = await cycle(any_redis, flaky, settings=settings, symbols=["ETH/USD"])

    eth = by_symbol(outcome)["ETH/USD"]
    assert eth.status is SymbolStatus.OK
    assert eth.attempts == 2
    assert outcome.exit_code == 0
    assert await stream_symbols(any_redis) == ["ETH/USD"]


async def test_transient_error_on_every_attempt_fails_after_max_attempts(any_redis: Any) -> None:
    analyzer = FakeAnalyzer(answers({"ETH/USD": lambda: TransientError("503")}))
    settings = make_settings(retry={"delay_seconds": 0.001, "max_attempts": 3})

    outcome = await cycle(any_redis, settings=settings, symbols=["ETH/USD"], analyzer=analyzer)

    eth = by_symbol(outcome)["ETH/USD"]
    assert eth.status is SymbolStatus.FAILED
    assert eth.attempts == 3
    assert eth.reason.startswith("transient")
    assert len(analyzer.requests) == 3


async def test_permanent_error_is_not_retried(any_redis: Any) -> None:
    analyzer = FakeAnalyzer(answers({"ETH/USD": lambda: PermanentError("400")}))
    settings = make_settings(retry={"delay_seconds": 0.001, "max_attempts": 3})

    outcome = await cycle(any_redis, settings=settings, symbols=["ETH/USD"], analyzer=analyzer)

    assert by_symbol(outcome)["ETH/USD"].attempts == 1
    assert len(analyzer.requests) == 1


async def test_auth_error_stops_starting_further_symbols(any_redis: Any) -> None:
    analyzer = FakeAnalyzer(answers({s: (lambda: AuthError("401 invalid API key")) for s in SYMBOLS}))
    settings = make_settings(parallel={"max_concurrent": 1, "min_concurrent": 1})

    outcome = await cycle(any_redis, settings=settings, analyzer=analyzer)

    results = outcome.results
    assert len(analyzer.requests) == 1
    assert results[0].status is SymbolStatus.FAILED
    assert results[0].reason.startswith("auth")
    assert [(r.status, r.reason) for r in results[1:]] == [(SymbolStatus.NOT_STARTED, "auth_failed")] * 2
    assert outcome.exit_code == 3
    assert any("credentials" in w for w in outcome.warnings)


# Dry run ---------------------------------------------------------------------------------------------


async def test_dry_run_analyzes_but_publishes_and_records_nothing(any_redis: Any) -> None:
    outcome = await cycle(any_redis, dry_run=True)

    assert outcome.published is False
    assert outcome.status is CycleStatus.COMPLETED
    assert sorted(s.symbol for s in outcome.signals) == sorted(SYMBOLS)
    assert await any_redis.xlen(KEYS.stream) == 0
    assert await any_redis.hgetall(KEYS.latest) == {}
    assert await any_redis.llen(KEYS.history) == 0
    assert await any_redis.hgetall(KEYS.stats) == {}
    assert await any_redis.exists(KEYS.lease("0-1"), KEYS.heartbeat("unit-runner")) == 0
    assert [k async for k in any_redis.scan_iter(KEYS.lock_pattern)] == []


async def test_dry_run_failures_cannot_trip_the_breaker_or_pause(any_redis: Any) -> None:
    settings = make_settings(circuit_breaker={"llm_service": {"failure_threshold": 1}})
    for _ in range(3):
        await cycle(
            any_redis,
            answers({"ETH/USD": lambda: InvalidOutput("bad"), "BTC/USD": lambda: TransientError("503")}),
            settings=settings,
            dry_run=True,
        )

    assert await any_redis.hgetall(KEYS.breaker("llm_service")) == {}
    assert await any_redis.hgetall(KEYS.paused) == {}


# Across cycles: breaker and pause -----------------------------------------------------------------


async def test_breaker_opens_after_outage_failures_across_cycles(any_redis: Any) -> None:
    settings = make_settings(circuit_breaker={"llm_service": {"failure_threshold": 3}})
    analyzer = FakeAnalyzer(answers({"ETH/USD": lambda: TransientError("503 service unavailable")}))

    failed = [
        await cycle(any_redis, settings=settings, symbols=["ETH/USD"], analyzer=analyzer) for _ in range(3)
    ]
    calls_before = len(analyzer.requests)
    skipped = await cycle(any_redis, settings=settings, symbols=["ETH/USD"], analyzer=analyzer)

    assert [o.exit_code for o in failed] == [3, 3, 3]
    breaker = await any_redis.hgetall(KEYS.breaker("llm_service"))
    assert breaker["state"] == "open"
    assert skipped.status is CycleStatus.SKIPPED
    assert skipped.skip_reason == "breaker_open"
    assert skipped.exit_code == 0
    assert len(analyzer.requests) == calls_before  # nothing was called while open
    assert await any_redis.hgetall(KEYS.paused) == {}  # an outage never pauses a symbol


async def test_breaker_recovers_through_half_open_probes(any_redis: Any) -> None:
    clock = FrozenClock(START)
    settings = make_settings(
        circuit_breaker={"llm_service": {"failure_threshold": 2, "success_threshold": 2}}
    )
    broken = FakeAnalyzer(answers({"ETH/USD": lambda: TransientError("503")}))
    healthy = FakeAnalyzer(answers())

    for _ in range(2):
        await cycle(any_redis, symbols=["ETH/USD"], settings=settings, clock=clock, analyzer=broken)
        clock.advance(1)
    still_open = await cycle(any_redis, symbols=["ETH/USD"], settings=settings, clock=clock, analyzer=healthy)
    clock.advance(60)
    first_probe = await cycle(
        any_redis, symbols=["ETH/USD"], settings=settings, clock=clock, analyzer=healthy
    )
    state_after_first = (await any_redis.hgetall(KEYS.breaker("llm_service")))["state"]
    clock.advance(60)
    second_probe = await cycle(
        any_redis, symbols=["ETH/USD"], settings=settings, clock=clock, analyzer=healthy
    )

    assert still_open.skip_reason == "breaker_open"
    assert first_probe.exit_code == 0
    assert first_probe.stats["probes"] == 1
    assert state_after_first == "half_open"
    assert second_probe.exit_code == 0
    assert (await any_redis.hgetall(KEYS.breaker("llm_service")))["state"] == "closed"


async def test_three_invalid_output_cycles_pause_the_symbol(any_redis: Any) -> None:
    analyzer = FakeAnalyzer(answers({"ETH/USD": lambda: InvalidOutput("confidence 7 is not in [0, 1]")}))
    symbols = ["ETH/USD", "BTC/USD"]

    runs = [await cycle(any_redis, symbols=symbols, analyzer=analyzer) for _ in range(3)]
    asked_before = len(analyzer.requests)
    after = await cycle(any_redis, symbols=symbols, analyzer=analyzer)

    assert [by_symbol(o)["ETH/USD"].status for o in runs] == [SymbolStatus.FAILED] * 3
    assert any("paused ETH/USD" in w for w in runs[2].warnings)
    assert await any_redis.hexists(KEYS.paused, "ETH/USD") == 1
    assert by_symbol(after)["ETH/USD"].status is SymbolStatus.PAUSED
    assert by_symbol(after)["BTC/USD"].status is SymbolStatus.OK
    assert [r.symbol for r in analyzer.requests[asked_before:]] == ["BTC/USD"]
    assert after.exit_code == 0


async def test_a_resumed_symbol_runs_again(any_redis: Any) -> None:
    analyzer = FakeAnalyzer(answers({"ETH/USD": lambda: InvalidOutput("bad")}))
    for _ in range(3):
        await cycle(any_redis, symbols=["ETH/USD"], analyzer=analyzer)

    paused = await cycle(any_redis, symbols=["ETH/USD"], analyzer=analyzer)
    await StateStore(any_redis, KEYS).resume("ETH/USD")
    resumed = await cycle(any_redis, symbols=["ETH/USD"], analyzer=FakeAnalyzer(answers()))

    assert paused.status is CycleStatus.SKIPPED
    assert paused.exit_code == 0
    assert by_symbol(paused)["ETH/USD"].status is SymbolStatus.PAUSED
    assert by_symbol(resumed)["ETH/USD"].status is SymbolStatus.OK


# Idempotence -----------------------------------------------------------------------------------------


async def test_a_rerun_in_the_same_minute_publishes_nothing_twice(any_redis: Any) -> None:
    clock = FrozenClock(START)

    first = await cycle(any_redis, clock=clock)
    clock.advance(20)  # same scheduled minute
    rerun = await cycle(any_redis, clock=clock)

    assert len(first.signals) == 3
    assert rerun.signals == []
    assert all(r.status is SymbolStatus.OK for r in rerun.results)
    assert {r.reason for r in rerun.results} == {"already published this minute"}
    assert await any_redis.xlen(KEYS.stream) == 3
    assert {json.loads(s)["id"] for s in (await any_redis.hgetall(KEYS.latest)).values()} == {
        f"{s}:2026-11-23T14:05" for s in SYMBOLS
    }


async def test_next_minute_publishes_again(any_redis: Any) -> None:
    clock = FrozenClock(START)

    await cycle(any_redis, clock=clock)
    clock.advance(60)
    later = await cycle(any_redis, clock=clock)

    assert len(later.signals) == 3
    assert await any_redis.xlen(KEYS.stream) == 6


# Shutdown ---------------------------------------------------------------------------------------------


async def test_shutdown_lets_the_running_symbol_finish_and_starts_no_more(any_redis: Any) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def gated(request: AnalysisRequest) -> Analysis:
        started.set()
        await release.wait()
        return answers()(request)

    control = Control(grace_seconds=30)
    settings = make_settings(parallel={"max_concurrent": 1, "min_concurrent": 1})
    task = asyncio.create_task(cycle(any_redis, gated, settings=settings, control=control))
    await started.wait()
    control.stop()  # SIGTERM
    release.set()
    outcome = await task

    results = outcome.results
    assert results[0].status is SymbolStatus.OK
    assert [(r.status, r.reason) for r in results[1:]] == [(SymbolStatus.NOT_STARTED, "shutdown")] * 2
    assert await stream_symbols(any_redis) == ["ETH/USD"]
    assert [k async for k in any_redis.scan_iter(KEYS.lock_pattern)] == []


async def test_shutdown_grace_over_reports_the_running_symbol_and_releases(any_redis: Any) -> None:
    started, never = asyncio.Event(), asyncio.Event()

    async def stuck(request: AnalysisRequest) -> Analysis:
        started.set()
        await never.wait()
        return answers()(request)

    control = Control(grace_seconds=0.05)
    task = asyncio.create_task(cycle(any_redis, stuck, symbols=["ETH/USD"], control=control))
    await started.wait()
    control.stop()
    outcome = await task

    eth = by_symbol(outcome)["ETH/USD"]
    assert eth.status is SymbolStatus.TIMEOUT
    assert eth.reason == "shutdown"
    assert await any_redis.exists(KEYS.lock("ETH/USD"), KEYS.lease("0-1")) == 0


# Adaptive guards across cycles ---------------------------------------------------------------------


async def test_high_latency_skip_ends_once_old_samples_age_out(any_redis: Any) -> None:
    clock = FrozenClock(START)
    now = START.timestamp()
    await any_redis.lpush(KEYS.latency, *[f"{now - i:.3f}:9500" for i in range(10)])
    analyzer = FakeAnalyzer(answers())

    skipped = await cycle(any_redis, clock=clock, analyzer=analyzer)
    clock.advance(make_settings().adaptive.sample_max_age_seconds + 60)
    recovered = await cycle(any_redis, clock=clock, analyzer=analyzer)

    assert skipped.skip_reason == "high_latency"
    assert skipped.exit_code == 0
    assert recovered.status is CycleStatus.COMPLETED
    assert len(analyzer.requests) == 3


async def test_repeated_overruns_start_a_backpressure_cooldown(any_redis: Any) -> None:
    # A cycle deadline shorter than one symbol's expected time: nothing can start, every cycle overruns.
    settings = make_settings(timeouts={"total_timeout_seconds": 0.5}, adaptive={"cooldown_cycles": 2})

    outcomes = [await cycle(any_redis, settings=settings, symbols=["ETH/USD"]) for _ in range(6)]

    assert [(r.status, r.reason) for r in outcomes[0].results] == [(SymbolStatus.NOT_STARTED, "deadline")]
    assert [o.skip_reason for o in outcomes] == [None, None, None, "cooldown", "cooldown", None]
    assert [o.exit_code for o in outcomes[3:5]] == [0, 0]
    counters = await any_redis.hgetall(KEYS.counters("0-1"))
    assert float(counters["backpressure_cooldowns_total"]) == 1


async def test_a_model_answering_garbage_for_every_symbol_pauses_nothing(any_redis: Any) -> None:
    failures: Failures = {s: (lambda: InvalidOutput("not JSON")) for s in SYMBOLS}

    for _ in range(3):
        await cycle(any_redis, answers(failures))

    assert await any_redis.hgetall(KEYS.paused) == {}
