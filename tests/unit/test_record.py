"""What a finished cycle writes: the record script's payload, built without Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from runner.adaptive import Backpressure, Plan
from runner.breaker import BreakerState, Event, Gate
from runner.clock import Deadline, FrozenClock
from runner.config import Settings, load_settings
from runner.guards import Decision, Snapshot
from runner.locks import LockResult, Owner
from runner.models import CycleStatus, Outcome, Signal, SymbolResult, SymbolStatus
from runner.record import plan_record
from runner.run import Deps, RunState
from runner.shards import Shard

STARTED = datetime(2026, 3, 2, 12, 0, 1, tzinfo=UTC)
OWNER = Owner("pod-a", "cycle-1", pid=1)


def settings(**overrides: Any) -> Settings:
    return load_settings(None, overrides, environ={})


def snapshot(backpressure: Backpressure | None = None) -> Snapshot:
    return Snapshot(
        kill_switch={},
        breaker=BreakerState(),
        backpressure=backpressure or Backpressure(),
        samples=[],
        paused={},
        lease=None,
    )


def outcome(status: CycleStatus, results: list[SymbolResult], **kw: Any) -> Outcome:
    return Outcome(
        cycle_id=OWNER.cycle_id,
        instance_id=OWNER.instance_id,
        status=status,
        exit_code=0,
        started_at=STARTED.isoformat().replace("+00:00", "Z"),
        scheduled_minute="2026-03-02T12:00",
        duration_ms=kw.pop("duration_ms", 800),
        results=results,
        **kw,
    )


def run_state(cfg: Settings, locks: dict[str, LockResult] | None = None) -> RunState:
    clock = FrozenClock(STARTED)
    plan = Plan(
        concurrency=4, symbol_timeout=10, p95_ms=0, p99_ms=0, high_latency=False, skip=False, samples=0
    )
    return RunState(
        settings=cfg,
        deps=Deps(redis=None, analyzer=None, market=None, clock=clock),  # type: ignore[arg-type]
        owner=OWNER,
        shard=Shard(0, 1),
        minute=STARTED.replace(second=0),
        started=STARTED,
        deadline=Deadline(clock, 45),
        decision=Decision(plan=plan, gate=Gate(allow=True)),
        dry_run=False,
        breaker_base=BreakerState(),
        breaker_live=BreakerState(),
        probes_left=None,
        locks=locks or {},
    )


def failed(symbol: str, reason: str, *, fault: bool) -> SymbolResult:
    return SymbolResult(
        symbol=symbol,
        status=SymbolStatus.FAILED,
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

    plan = plan_record(cfg, OWNER, done, None, None, snapshot())

    assert plan.lock_keys == []
    assert plan.payload["breaker"] is None
    assert counter(plan.payload, "cycles_skipped_total") == 1
    assert counter(plan.payload, "circuit_breaker_rejected_total") == 1
    assert counter(plan.payload, "cycles_total") == 0, "a skip is not a cycle that ran"
    assert plan.now == STARTED.timestamp()


def test_a_model_answering_garbage_everywhere_is_one_breaker_failure_and_no_symbol_is_to_blame() -> None:
    cfg = settings()
    results = [failed(s, "invalid_output: not JSON", fault=True) for s in ("ETH/USD", "BTC/USD", "SOL/USD")]

    plan = plan_record(cfg, OWNER, outcome(CycleStatus.FAILED, results), run_state(cfg), None, snapshot())

    assert plan.breaker_events == [(Event.FAILURE, STARTED.timestamp())]
    assert plan.payload["breaker"]["fields"]["failure_count"] == "1"
    assert [u["fault"] for u in plan.payload["symbols"]] == [False, False, False]


def test_one_symbols_own_bad_answer_is_its_fault_and_not_the_breakers() -> None:
    cfg = settings()
    ok = SymbolResult(symbol="BTC/USD", status=SymbolStatus.OK, attempts=1, duration_ms=40)
    results = [failed("ETH/USD", "invalid_output: confidence", fault=True), ok]

    plan = plan_record(cfg, OWNER, outcome(CycleStatus.PARTIAL, results), run_state(cfg), None, snapshot())

    assert plan.breaker_events == []
    assert plan.payload["breaker"] is None
    assert {u["symbol"]: u["fault"] for u in plan.payload["symbols"]} == {"ETH/USD": True, "BTC/USD": False}


def test_only_the_locks_the_run_owns_are_released_and_takeovers_are_counted() -> None:
    cfg = settings()
    locks = {
        "ETH/USD": LockResult("signal:lock:ETH/USD", "acquired", 7, '{"cycle_id":"cycle-1"}'),
        "BTC/USD": LockResult(
            "signal:lock:BTC/USD", "taken_over", 8, '{"cycle_id":"cycle-1"}', "heartbeat_gone"
        ),
        "SOL/USD": LockResult("signal:lock:SOL/USD", "held", 0, '{"cycle_id":"other"}'),
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
        SymbolResult(symbol="ETH/USD", status=SymbolStatus.OK, attempts=1, duration_ms=5, signal=signal),
        SymbolResult(symbol="BTC/USD", status=SymbolStatus.OK, attempts=1, duration_ms=5),
        SymbolResult(symbol="SOL/USD", status=SymbolStatus.LOCKED, reason="held by pod-b"),
    ]
    done = outcome(CycleStatus.COMPLETED, results, signals=[signal])

    plan = plan_record(cfg, OWNER, done, run_state(cfg, locks), None, snapshot())

    assert plan.lock_keys == ["signal:lock:ETH/USD", "signal:lock:BTC/USD"]
    assert len(plan.payload["lock_values"]) == 2
    assert counter(plan.payload, "stale_locks_recovered_total") == 1
    assert counter(plan.payload, "signal_generation_total") == 1, "only a published signal counts"
    assert counter(plan.payload, "signal_generation_skipped_total") == 1


def test_the_overrun_that_completes_the_streak_starts_a_cooldown() -> None:
    cfg = settings(adaptive={"backpressure_max_overruns": 3, "cooldown_cycles": 2})
    lease = LockResult("runner:cycle:lease", "acquired", 1, "cycle-1")
    late = outcome(CycleStatus.COMPLETED, [], duration_ms=int(cfg.timeouts.total_timeout_seconds * 1000) + 1)

    plan = plan_record(
        cfg, OWNER, late, run_state(cfg), lease, snapshot(Backpressure(consecutive_overruns=2))
    )

    assert plan.cooling
    assert plan.payload["backpressure"] == {"consecutive_overruns": "0", "cooldown_remaining": "2"}
    assert counter(plan.payload, "backpressure_cooldowns_total") == 1
