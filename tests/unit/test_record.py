"""What a finished cycle writes: the record script's payload, built without Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from runner.adaptive import Backpressure
from runner.analysis import Tally
from runner.breaker import BreakerState, Event
from runner.config import Settings, load_settings
from runner.errors import Code
from runner.guards import Snapshot
from runner.models import CycleStatus, Outcome, Signal, SymbolResult, SymbolStatus
from runner.record import plan_record
from runner.store.locks import LockResult, LockStatus, Owner

STARTED = datetime(2026, 3, 2, 12, 0, 1, tzinfo=UTC)
OWNER = Owner("pod-a", "cycle-1", pid=1)


def settings(**overrides: Any) -> Settings:
    return load_settings(None, overrides, environ={})


def snapshot(backpressure: Backpressure | None = None, lease: LockResult | None = None) -> Snapshot:
    return Snapshot(
        kill_switch={},
        breaker=BreakerState(),
        backpressure=backpressure or Backpressure(),
        samples=[],
        paused={},
        lease=lease,
    )


def outcome(status: CycleStatus, results: list[SymbolResult], **kw: Any) -> Outcome:
    return Outcome(
        cycle_id=OWNER.cycle_id,
        instance_id=OWNER.instance_id,
        status=status,
        exit_code=0,
        started_at=STARTED,
        scheduled_minute="2026-03-02T12:00",
        duration_ms=kw.pop("duration_ms", 800),
        results=results,
        **kw,
    )


def tally() -> Tally:
    """What the analysis step hands the record step, for a run that found the breaker closed."""
    return Tally(breaker_base=BreakerState(), breaker=BreakerState())


def failed(symbol: str, code: Code, reason: str, *, fault: bool) -> SymbolResult:
    return SymbolResult(
        symbol=symbol,
        status=SymbolStatus.FAILED,
        code=code,
        reason=reason,
        attempts=1,
        duration_ms=50,
        symbol_fault=fault,
    )


def counter(plan_payload: dict[str, Any], name: str) -> float:
    return sum(value for series, value in plan_payload["counters"].items() if series.split("{")[0] == name)


def test_a_skipped_cycle_counts_its_reason_and_releases_nothing() -> None:
    cfg = settings()
    done = outcome(CycleStatus.SKIPPED, [], skip_reason="breaker_open", skip_detail="open")

    plan = plan_record(cfg, OWNER, done, snapshot())

    assert plan.lock_keys == []
    assert plan.payload["breaker"] is None
    assert counter(plan.payload, "cycles_skipped_total") == 1
    assert counter(plan.payload, "circuit_breaker_rejected_total") == 1
    assert counter(plan.payload, "cycles_total") == 0, "a skip is not a cycle that ran"
    assert plan.now == STARTED.timestamp()


def test_a_model_answering_garbage_everywhere_is_one_breaker_failure_and_no_symbol_is_to_blame() -> None:
    cfg = settings()
    results = [
        failed(s, Code.INVALID_OUTPUT, "invalid_output: not JSON", fault=True)
        for s in ("ETH/USD", "BTC/USD", "SOL/USD")
    ]

    plan = plan_record(cfg, OWNER, outcome(CycleStatus.FAILED, results), snapshot(), tally=tally())

    assert plan.breaker_events == [(Event.FAILURE, STARTED.timestamp())]
    assert plan.payload["breaker"]["fields"]["failure_count"] == "1"
    assert [u["fault"] for u in plan.payload["symbols"]] == [False, False, False]


def test_one_symbols_own_bad_answer_is_its_fault_and_not_the_breakers() -> None:
    cfg = settings()
    ok = SymbolResult(symbol="BTC/USD", status=SymbolStatus.OK, code=Code.OK, attempts=1, duration_ms=40)
    results = [failed("ETH/USD", Code.INVALID_OUTPUT, "invalid_output: confidence", fault=True), ok]

    plan = plan_record(cfg, OWNER, outcome(CycleStatus.PARTIAL, results), snapshot(), tally=tally())

    assert plan.breaker_events == []
    assert plan.payload["breaker"] is None
    assert {u["symbol"]: u["fault"] for u in plan.payload["symbols"]} == {"ETH/USD": True, "BTC/USD": False}


def test_only_the_locks_the_run_owns_are_released_and_takeovers_are_counted() -> None:
    cfg = settings()
    locks = {
        "ETH/USD": LockResult("signal:lock:ETH/USD", LockStatus.ACQUIRED, 7, '{"cycle_id":"cycle-1"}'),
        "BTC/USD": LockResult(
            "signal:lock:BTC/USD", LockStatus.TAKEN_OVER, 8, '{"cycle_id":"cycle-1"}', "heartbeat_gone"
        ),
        "SOL/USD": LockResult("signal:lock:SOL/USD", LockStatus.HELD, 0, '{"cycle_id":"other"}'),
    }
    signal = Signal(
        id="ETH/USD:2026-03-02T12:00",
        symbol="ETH/USD",
        action="BUY",
        confidence=0.7,
        reasoning="r",
        price=3000.0,
        generated_at="2026-03-02T12:00:01.200Z",
        cycle_id=OWNER.cycle_id,
        instance_id=OWNER.instance_id,
        analyzer="builtin",
        model="m",
        latency_ms=5,
        fencing_token=7,
    )
    results = [
        SymbolResult(
            symbol="ETH/USD", status=SymbolStatus.OK, code=Code.OK, attempts=1, duration_ms=5, signal=signal
        ),
        SymbolResult(symbol="BTC/USD", status=SymbolStatus.OK, code=Code.OK, attempts=1, duration_ms=5),
        SymbolResult(symbol="SOL/USD", status=SymbolStatus.LOCKED, code=Code.LOCKED, reason="held by pod-b"),
    ]
    done = outcome(CycleStatus.COMPLETED, results, signals=[signal])

    plan = plan_record(cfg, OWNER, done, snapshot(), tally=tally(), locks=locks)

    assert plan.lock_keys == ["signal:lock:ETH/USD", "signal:lock:BTC/USD"]
    assert len(plan.payload["lock_values"]) == 2
    assert counter(plan.payload, "stale_locks_recovered_total") == 1
    assert counter(plan.payload, "signal_generation_total") == 1, "only a published signal counts"
    assert counter(plan.payload, "signal_generation_skipped_total") == 1


def test_the_overrun_that_completes_the_streak_starts_a_cooldown() -> None:
    cfg = settings(adaptive={"backpressure_max_overruns": 3, "cooldown_cycles": 2})
    lease = LockResult("runner:cycle:lease", LockStatus.ACQUIRED, 1, "cycle-1")
    late = outcome(CycleStatus.COMPLETED, [], duration_ms=int(cfg.timeouts.total_timeout_seconds * 1000) + 1)

    plan = plan_record(
        cfg, OWNER, late, snapshot(Backpressure(consecutive_overruns=2), lease=lease), tally=tally()
    )

    assert plan.cooling
    assert plan.payload["backpressure"] == {"consecutive_overruns": "0", "cooldown_remaining": "2"}
    assert counter(plan.payload, "backpressure_cooldowns_total") == 1
