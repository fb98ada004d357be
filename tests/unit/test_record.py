"""What a finished cycle writes (the record script's payload, built without Redis) and the gauges
it exports.

Every test builds its inputs with the helpers of the first section and reaches the code under
test only through ``plan`` and ``gauges``: a change of ``plan_record``'s or ``cycle_gauges``'
signature is an edit there, not in each test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runner.adaptive import Backpressure, Plan, Sample
from runner.analysis import Tally
from runner.breaker import BreakerState, Event, Gate
from runner.config import Settings, load_settings
from runner.errors import Code
from runner.guards import Decision, Snapshot
from runner.models import CycleStatus, Outcome, Signal, SymbolResult, SymbolStatus
from runner.notify import Streak
from runner.record import RecordPlan, cycle_gauges, plan_notices, plan_outcomes, plan_record
from runner.store.locks import LockResult, Owner
from runner.store.state import RecordResult
from tests.support.timezone import local_time_zone

# Builders: the one place that knows how the record step is called -----------------------------

STARTED = datetime(2026, 3, 2, 12, 0, 1, tzinfo=UTC)
T = STARTED.timestamp()  # 1772452801.0
MINUTE = STARTED.replace(second=0)
OWNER = Owner("pod-a", "cycle-1", pid=1)
LEASE = LockResult("runner:cycle:lease:0-1", "acquired", 1, '{"cycle_id":"cycle-1","lease":1}')


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
        exit_code=kw.pop("exit_code", 0),
        started_at=STARTED,
        scheduled_minute="2026-03-02T12:00",
        duration_ms=kw.pop("duration_ms", 800),
        results=results,
        **kw,
    )


def decision(concurrency: int = 4, p95_ms: float = 0.0) -> Decision:
    p = Plan(
        concurrency=concurrency,
        symbol_timeout=10,
        p95_ms=p95_ms,
        p99_ms=p95_ms,
        high_latency=False,
        skip=False,
        samples=0,
    )
    return Decision(plan=p, gate=Gate(allow=True))


@dataclass
class Ran:
    """What a cycle that ran hands the record step: the analysis step's tally and the locks it
    held, and the latency samples the cycle began with."""

    cfg: Settings
    tally: Tally
    locks: dict[str, LockResult] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)


def run_state(cfg: Settings, **fields: Any) -> Ran:
    """``fields``: locks, samples, breaker_base, and the tally's events, latencies, rejected,
    spent_usd, remote_calls."""
    locks = fields.pop("locks", {})
    samples = fields.pop("samples", [])
    base = fields.pop("breaker_base", BreakerState())
    return Ran(cfg, Tally(breaker_base=base, breaker=base, **fields), locks, samples)


def plan(
    cfg: Settings,
    done: Outcome,
    run: Ran | None = None,
    lease: LockResult | None = None,
    snap: Snapshot | None = None,
    **kw: Any,
) -> RecordPlan:
    began = replace(snap or snapshot(), lease=lease, samples=run.samples if run else [])
    return plan_record(
        cfg, OWNER, done, began, tally=run.tally if run else None, locks=run.locks if run else None, **kw
    )


def gauges(
    done: Outcome, run: Ran | None, record: RecordResult, made: Decision | None = None
) -> dict[str, float]:
    began = replace(snapshot(), samples=run.samples if run else [])
    return cycle_gauges(
        run.cfg if run else settings(),
        done,
        made or decision(),
        record,
        MINUTE,
        began,
        tally=run.tally if run else None,
        locks=run.locks if run else None,
    )


def signal(symbol: str, action: str = "BUY") -> Signal:
    return Signal(
        id=f"{symbol}:2026-03-02T12:00",
        symbol=symbol,
        action=action,  # type: ignore[arg-type]
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


def ok(symbol: str, duration_ms: int = 40, sig: Signal | None = None) -> SymbolResult:
    return SymbolResult(
        symbol=symbol, status=SymbolStatus.OK, code=Code.OK, attempts=1, duration_ms=duration_ms, signal=sig
    )


def result(
    symbol: str, status: SymbolStatus, code: Code, reason: str | None = None, **kw: Any
) -> SymbolResult:
    return SymbolResult(symbol=symbol, status=status, code=code, reason=reason, **kw)


def failed(
    symbol: str, reason: str, *, code: Code = Code.ERROR, fault: bool = False, attempts: int = 1
) -> SymbolResult:
    return SymbolResult(
        symbol=symbol,
        status=SymbolStatus.FAILED,
        code=code,
        reason=reason,
        attempts=attempts,
        duration_ms=50,
        symbol_fault=fault,
    )


def lock(symbol: str, status: str = "acquired", reason: str = "") -> LockResult:
    return LockResult(
        f"signal:lock:{symbol}", status, 7, f'{{"cycle_id":"cycle-1","symbol":"{symbol}"}}', reason
    )


def counters(payload: dict[str, Any]) -> dict[str, float]:
    """The counter increments and histogram sums and counts (the buckets are left out)."""
    return {k: v for k, v in payload["counters"].items() if "_bucket{" not in k}


def counter(payload: dict[str, Any], name: str) -> float:
    return sum(value for series, value in payload["counters"].items() if series.split("{")[0] == name)


# The payload of a cycle that ran ----------------------------------------------------------------


def a_partial_cycle() -> tuple[Settings, Outcome, Ran]:
    """ETH published a BUY, BTC timed out after two attempts, SOL was held by another run."""
    cfg = settings(adaptive={"pause_after_failures": 4})
    eth = signal("ETH/USD")
    results = [
        ok("ETH/USD", duration_ms=40, sig=eth),
        result(
            "BTC/USD",
            SymbolStatus.TIMEOUT,
            Code.TIMEOUT,
            "analysis took longer than 10.0s",
            attempts=2,
            duration_ms=2500,
        ),
        result("SOL/USD", SymbolStatus.LOCKED, Code.LOCKED, "held by pod-b"),
    ]
    done = outcome(CycleStatus.PARTIAL, results, signals=[eth], exit_code=1, stats={"p95_ms": 1.0})
    run = run_state(
        cfg,
        locks={
            "ETH/USD": lock("ETH/USD"),
            "BTC/USD": lock("BTC/USD", "taken_over", "heartbeat_gone"),
            "SOL/USD": lock("SOL/USD", "held"),
        },
        events=[(Event.SUCCESS, T + 0.25), (Event.FAILURE, T + 1.5)],
        latencies=[(T + 0.25, 1234.75), (T + 1.5, 250.25)],
        rejected=2,
        spent_usd=0.0123,
        remote_calls=2,
        breaker_base=BreakerState(failure_count=1, version=3),
    )
    return cfg, done, run


def test_a_cycle_that_ran_writes_exactly_this_payload() -> None:
    cfg, done, run = a_partial_cycle()

    p = plan(cfg, done, run, LEASE, want_counters=True)

    payload = {k: v for k, v in p.payload.items() if k not in ("summary", "last", "counters")}
    assert payload == {
        "symbols": [
            {
                "symbol": "ETH/USD",
                "ok": True,
                "status": "ok",
                "code": "ok",
                "reason": "",
                "duration_ms": 40,
                "fault": False,
                "at": T,
                "action": "BUY",
                "stages": {},
            },
            {
                "symbol": "BTC/USD",
                "ok": False,
                "status": "timeout",
                "code": "timeout",
                "reason": "analysis took longer than 10.0s",
                "duration_ms": 2500,
                "fault": False,
                "at": T,
                "action": None,
                "stages": {},
            },
        ],
        "pause_after": 4,
        "latency": ["1772452801.250:1235", "1772452802.500:250"],
        "latency_keep": 50,
        "backpressure": {"consecutive_overruns": "0", "cooldown_remaining": "0"},
        "last_success": T,
        "lease_value": LEASE.value,
        "release_heartbeat": True,
        "cycle_id": "cycle-1",
        "lock_values": [lock("ETH/USD").value, lock("BTC/USD").value],
        "breaker": {
            "expected": 3,
            "fields": {
                "state": "closed",
                "failure_count": "1",
                "success_count": "0",
                "half_open_calls": "0",
                "opened_at": "",
                "half_open_at": "",
                "last_failure_at": str(T + 1.5),
                "since": "",
            },
        },
        "spend": {"usd": 0.0123, "calls": 2},
        "want_counters": True,
        "outcomes": None,
        "failing": {"count": "0", "since": "", "why": ""},
    }
    assert (p.now, p.lock_keys, p.cooling) == (T, ["signal:lock:ETH/USD", "signal:lock:BTC/USD"], False)
    assert p.breaker_events == [(Event.SUCCESS, T + 0.25), (Event.FAILURE, T + 1.5)]


def test_a_cycle_that_ran_counts_exactly_these_metrics() -> None:
    cfg, done, run = a_partial_cycle()

    p = plan(cfg, done, run, LEASE)

    assert counters(p.payload) == {
        'signal_generation_total{action="BUY",symbol="ETH/USD"}': 1.0,
        'signal_generation_skipped_total{reason="timeout",symbol="BTC/USD"}': 1.0,
        'signal_generation_skipped_total{reason="locked",symbol="SOL/USD"}': 1.0,
        'symbol_processing_duration_seconds_sum{symbol="ETH/USD"}': 0.04,
        'symbol_processing_duration_seconds_count{symbol="ETH/USD"}': 1.0,
        'symbol_processing_duration_seconds_sum{symbol="BTC/USD"}': 2.5,
        'symbol_processing_duration_seconds_count{symbol="BTC/USD"}': 1.0,
        'cycles_total{status="partial"}': 1.0,
        "cycle_duration_seconds_sum": 0.8,
        "cycle_duration_seconds_count": 1.0,
        'stale_locks_recovered_total{reason="heartbeat_gone",symbol="BTC/USD"}': 1.0,
        "llm_latency_ms_sum": 1485.0,
        "llm_latency_ms_count": 2.0,
        'circuit_breaker_rejected_total{breaker="llm_service"}': 2.0,
    }
    buckets = p.payload["counters"]
    assert buckets['symbol_processing_duration_seconds_bucket{le="0.1",symbol="ETH/USD"}'] == 1.0
    assert 'symbol_processing_duration_seconds_bucket{le="2.0",symbol="BTC/USD"}' not in buckets
    assert buckets['symbol_processing_duration_seconds_bucket{le="5.0",symbol="BTC/USD"}'] == 1.0
    assert buckets['cycle_duration_seconds_bucket{le="1.0"}'] == 1.0


def test_the_history_entries_are_the_outcome_compact_and_the_last_one_without_its_stats() -> None:
    cfg, done, run = a_partial_cycle()

    p = plan(cfg, done, run, LEASE)

    summary = p.payload["summary"]
    assert json.loads(summary) == done.summary()
    assert summary == json.dumps(json.loads(summary), separators=(",", ":")), "compact JSON"
    last = json.loads(p.payload["last"])
    assert last == {k: v for k, v in json.loads(done.model_dump_json()).items() if k != "stats"}
    assert "stats" not in last


def test_want_counters_is_off_unless_asked() -> None:
    cfg, done, run = a_partial_cycle()

    assert plan(cfg, done, run, LEASE).payload["want_counters"] is False


@pytest.mark.parametrize(("window", "keep"), [(1, 50), (10, 50), (11, 55), (20, 100)])
def test_the_latency_list_keeps_five_windows_and_at_least_fifty(window: int, keep: int) -> None:
    cfg = settings(adaptive={"latency_window_size": window})
    done = outcome(CycleStatus.COMPLETED, [ok("ETH/USD")])

    assert plan(cfg, done, run_state(cfg)).payload["latency_keep"] == keep


# A skipped cycle ----------------------------------------------------------------------------------


def test_a_skipped_cycle_writes_its_history_and_nothing_of_a_run() -> None:
    cfg = settings()
    done = outcome(CycleStatus.SKIPPED, [], skip_reason="kill_switch", skip_detail="kill switch on")

    p = plan(cfg, done)

    payload = {k: v for k, v in p.payload.items() if k not in ("summary", "last")}
    assert payload == {
        "symbols": [],
        "pause_after": 3,
        "latency": [],
        "latency_keep": 50,
        "backpressure": None,
        "counters": {'cycles_skipped_total{reason="kill_switch"}': 1.0},
        "last_success": None,
        "lease_value": "",
        "release_heartbeat": True,
        "cycle_id": "cycle-1",
        "lock_values": [],
        "breaker": None,
        "spend": {"usd": 0.0, "calls": 0},
        "want_counters": False,
        "outcomes": None,
        "failing": None,
    }
    assert (p.lock_keys, p.breaker_events, p.cooling, p.now) == ([], [], False, T)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (
            "breaker_open",
            {
                'cycles_skipped_total{reason="breaker_open"}': 1.0,
                "cycles_skipped_circuit_open_total": 1.0,
                'circuit_breaker_rejected_total{breaker="llm_service"}': 1.0,
            },
        ),
        (
            "high_latency",
            {'cycles_skipped_total{reason="high_latency"}': 1.0, "cycles_skipped_high_latency_total": 1.0},
        ),
        ("maintenance", {'cycles_skipped_total{reason="maintenance"}': 1.0}),
        ("cooldown", {'cycles_skipped_total{reason="cooldown"}': 1.0}),
    ],
)
def test_a_skip_counts_its_reason_and_its_own_counter(reason: str, expected: dict[str, float]) -> None:
    done = outcome(CycleStatus.SKIPPED, [], skip_reason=reason, skip_detail="d")

    assert plan(settings(), done).payload["counters"] == expected


def test_a_cooldown_skip_spends_one_cooldown_cycle_when_it_holds_the_lease() -> None:
    done = outcome(CycleStatus.SKIPPED, [], skip_reason="cooldown", skip_detail="d")
    snap = snapshot(Backpressure(consecutive_overruns=0, cooldown_remaining=2))

    with_lease = plan(settings(), done, lease=LEASE, snap=snap)
    without = plan(settings(), done, snap=snap)

    assert with_lease.payload["backpressure"] == {"consecutive_overruns": "0", "cooldown_remaining": "1"}
    assert without.payload["backpressure"] is None


def test_another_skip_does_not_touch_the_cooldown() -> None:
    done = outcome(CycleStatus.SKIPPED, [], skip_reason="maintenance", skip_detail="d")
    snap = snapshot(Backpressure(consecutive_overruns=0, cooldown_remaining=2))

    assert plan(settings(), done, lease=LEASE, snap=snap).payload["backpressure"] is None


def test_a_cycle_whose_symbols_were_all_held_counts_as_a_skip_and_not_as_a_run() -> None:
    cfg = settings()
    results = [result("ETH/USD", SymbolStatus.LOCKED, Code.LOCKED, "held by pod-b")]
    done = outcome(CycleStatus.SKIPPED, results, skip_reason="all_locked", skip_detail="d")

    p = plan(cfg, done, run_state(cfg, locks={"ETH/USD": lock("ETH/USD", "held")}), LEASE)

    assert counters(p.payload) == {
        'cycles_skipped_total{reason="all_locked"}': 1.0,
        'signal_generation_skipped_total{reason="locked",symbol="ETH/USD"}': 1.0,
    }
    assert p.lock_keys == []


# Success, failure and the failure counter -----------------------------------------------------------


def test_last_success_is_set_by_one_successful_symbol_among_failures() -> None:
    cfg = settings()
    results = [failed("ETH/USD", "error: x"), ok("BTC/USD"), failed("SOL/USD", "error: y")]

    p = plan(cfg, outcome(CycleStatus.PARTIAL, results), run_state(cfg))

    assert p.payload["last_success"] == T


def test_a_cycle_without_a_successful_symbol_leaves_last_success_alone() -> None:
    cfg = settings()
    results = [failed("ETH/USD", "error: x"), failed("BTC/USD", "error: y")]

    p = plan(cfg, outcome(CycleStatus.FAILED, results), run_state(cfg))

    assert p.payload["last_success"] is None


@pytest.mark.parametrize(
    ("status", "failures"),
    [(CycleStatus.FAILED, 1.0), (CycleStatus.PARTIAL, 0.0), (CycleStatus.COMPLETED, 0.0)],
)
def test_only_a_failed_cycle_counts_as_a_cycle_failure(status: CycleStatus, failures: float) -> None:
    cfg = settings()
    results = [failed("ETH/USD", "error: x"), ok("BTC/USD")][: 1 if status is CycleStatus.FAILED else 2]

    p = plan(cfg, outcome(status, results), run_state(cfg))

    assert counter(p.payload, "cycle_failures_total") == failures
    assert counters(p.payload)[f'cycles_total{{status="{status.value}"}}'] == 1.0


def test_a_skipped_cycle_is_not_a_cycle_failure() -> None:
    done = outcome(CycleStatus.SKIPPED, [], skip_reason="budget", skip_detail="d")

    assert counter(plan(settings(), done).payload, "cycle_failures_total") == 0


@pytest.mark.parametrize(
    ("failure", "label"),
    [
        (
            failed("ETH/USD", "invalid_output: answer is not JSON: x", code=Code.INVALID_OUTPUT),
            "invalid_output",
        ),
        (failed("ETH/USD", "error: RuntimeError: boom"), "error"),
        (failed("ETH/USD", "unknown_symbol: no such pair", code=Code.UNKNOWN_SYMBOL), "unknown_symbol"),
        (failed("ETH/USD", "not published (fenced)", code=Code.FENCED), "fenced"),
        (failed("ETH/USD", "not published (error)", code=Code.PUBLISH_FAILED), "publish_failed"),
        (result("ETH/USD", SymbolStatus.TIMEOUT, Code.DEADLINE, "deadline", attempts=1), "timeout"),
        (result("ETH/USD", SymbolStatus.NOT_STARTED, Code.BREAKER_OPEN, "breaker_open"), "breaker_open"),
        (result("ETH/USD", SymbolStatus.NOT_STARTED, Code.DEADLINE, "deadline"), "deadline"),
        (
            result("ETH/USD", SymbolStatus.RATE_LIMITED, Code.RATE_LIMITED, "rate: x", attempts=1),
            "rate_limited",
        ),
        (result("ETH/USD", SymbolStatus.PAUSED, Code.PAUSED, "paused"), "paused"),
        (result("ETH/USD", SymbolStatus.LOCKED, Code.LOCKED, "held by pod-b"), "locked"),
    ],
)
def test_a_symbol_without_a_signal_is_counted_under_its_reason(failure: SymbolResult, label: str) -> None:
    """The label is the machine code of a failure or a refusal, else the status: never the text."""
    cfg = settings()

    p = plan(cfg, outcome(CycleStatus.FAILED, [failure]), run_state(cfg))

    skipped = {k: v for k, v in p.payload["counters"].items() if k.startswith("signal_generation_skipped")}
    assert skipped == {f'signal_generation_skipped_total{{reason="{label}",symbol="ETH/USD"}}': 1.0}


def test_a_successful_symbol_whose_signal_was_not_published_counts_neither_way() -> None:
    cfg = settings()
    done = outcome(CycleStatus.COMPLETED, [ok("ETH/USD", sig=signal("ETH/USD"))], signals=[])

    p = plan(cfg, done, run_state(cfg))

    assert counter(p.payload, "signal_generation_total") == 0
    assert counter(p.payload, "signal_generation_skipped_total") == 0


def test_only_analyzed_ok_failed_or_timed_out_symbols_update_their_stats() -> None:
    cfg = settings()
    results = [
        ok("ETH/USD"),
        failed("BTC/USD", "error: x"),
        result("SOL/USD", SymbolStatus.RATE_LIMITED, Code.RATE_LIMITED, "rate: x", attempts=1),
        result("XRP/USD", SymbolStatus.NOT_STARTED, Code("deadline"), "deadline"),
        result("ADA/USD", SymbolStatus.PAUSED, Code.PAUSED, "paused"),
    ]

    p = plan(cfg, outcome(CycleStatus.PARTIAL, results), run_state(cfg))

    assert [u["symbol"] for u in p.payload["symbols"]] == ["ETH/USD", "BTC/USD"]


# The breaker and a model answering garbage -----------------------------------------------------------


def test_a_model_answering_garbage_everywhere_is_one_breaker_failure_and_no_symbol_is_to_blame() -> None:
    cfg = settings()
    results = [
        failed(s, "invalid_output: not JSON", code=Code.INVALID_OUTPUT, fault=True)
        for s in ("ETH/USD", "BTC/USD", "SOL/USD")
    ]

    p = plan(cfg, outcome(CycleStatus.FAILED, results), run_state(cfg))

    assert p.breaker_events == [(Event.FAILURE, T)]
    assert p.payload["breaker"]["fields"]["failure_count"] == "1"
    assert [u["fault"] for u in p.payload["symbols"]] == [False, False, False]


def test_two_symbols_answered_with_garbage_are_already_a_broken_model() -> None:
    cfg = settings()
    results = [
        failed(s, "invalid_output: not JSON", code=Code.INVALID_OUTPUT, fault=True)
        for s in ("ETH/USD", "BTC/USD")
    ]

    p = plan(cfg, outcome(CycleStatus.FAILED, results), run_state(cfg))

    assert p.breaker_events == [(Event.FAILURE, T)]
    assert [u["fault"] for u in p.payload["symbols"]] == [False, False]


def test_one_symbols_own_bad_answer_is_its_fault_and_not_the_breakers() -> None:
    cfg = settings()
    alone = plan(
        cfg,
        outcome(
            CycleStatus.FAILED,
            [failed("ETH/USD", "invalid_output: confidence", code=Code.INVALID_OUTPUT, fault=True)],
        ),
        run_state(cfg),
    )
    results = [
        failed("ETH/USD", "invalid_output: confidence", code=Code.INVALID_OUTPUT, fault=True),
        ok("BTC/USD"),
    ]
    beside_a_success = plan(cfg, outcome(CycleStatus.PARTIAL, results), run_state(cfg))

    for p in (alone, beside_a_success):
        assert p.breaker_events == []
        assert p.payload["breaker"] is None
    assert [u["fault"] for u in alone.payload["symbols"]] == [True]
    assert {u["symbol"]: u["fault"] for u in beside_a_success.payload["symbols"]} == {
        "ETH/USD": True,
        "BTC/USD": False,
    }


def test_the_breaker_payload_replays_the_runs_events_on_the_state_it_started_from() -> None:
    cfg = settings(circuit_breaker={"llm_service": {"failure_threshold": 2}})
    run = run_state(
        cfg,
        events=[(Event.FAILURE, T + 1)],
        breaker_base=BreakerState(failure_count=1, last_failure_at=T - 60, version=8),
    )

    p = plan(cfg, outcome(CycleStatus.FAILED, [failed("ETH/USD", "error: x")]), run)

    assert p.payload["breaker"] == {
        "expected": 8,
        "fields": {
            "state": "open",
            "failure_count": "2",
            "success_count": "0",
            "half_open_calls": "0",
            "opened_at": str(T + 1),
            "half_open_at": "",
            "last_failure_at": str(T + 1),
            "since": str(T + 1),
        },
    }


# Locks and backpressure ----------------------------------------------------------------------------


def test_only_the_locks_the_run_owns_are_released_and_takeovers_are_counted() -> None:
    cfg = settings()
    locks = {
        "ETH/USD": lock("ETH/USD"),
        "BTC/USD": lock("BTC/USD", "taken_over", "heartbeat_gone"),
        "SOL/USD": lock("SOL/USD", "held"),
    }
    eth = signal("ETH/USD")
    results = [
        ok("ETH/USD", sig=eth),
        ok("BTC/USD"),
        result("SOL/USD", SymbolStatus.LOCKED, Code.LOCKED, "held by pod-b"),
    ]

    p = plan(cfg, outcome(CycleStatus.COMPLETED, results, signals=[eth]), run_state(cfg, locks=locks))

    assert p.lock_keys == ["signal:lock:ETH/USD", "signal:lock:BTC/USD"]
    assert p.payload["lock_values"] == [locks["ETH/USD"].value, locks["BTC/USD"].value]
    assert counter(p.payload, "stale_locks_recovered_total") == 1
    assert counter(p.payload, "signal_generation_total") == 1, "only a published signal counts"
    assert counter(p.payload, "signal_generation_skipped_total") == 1


def test_the_overrun_that_completes_the_streak_starts_a_cooldown() -> None:
    cfg = settings(adaptive={"backpressure_max_overruns": 3, "cooldown_cycles": 2})
    late = outcome(CycleStatus.COMPLETED, [], duration_ms=int(cfg.timeouts.total_timeout_seconds * 1000) + 1)

    p = plan(cfg, late, run_state(cfg), LEASE, snapshot(Backpressure(consecutive_overruns=2)))

    assert p.cooling
    assert p.payload["backpressure"] == {"consecutive_overruns": "0", "cooldown_remaining": "2"}
    assert counter(p.payload, "backpressure_cooldowns_total") == 1


@pytest.mark.parametrize(
    ("duration_ms", "reason", "streak"),
    [(50_000, None, "0"), (50_001, None, "2"), (1000, "deadline", "2"), (1000, "shutdown", "0")],
)
def test_a_cycle_overran_when_it_took_longer_than_the_total_timeout_or_hit_the_deadline(
    duration_ms: int, reason: str | None, streak: str
) -> None:
    cfg = settings(timeouts={"total_timeout_seconds": 50})
    timed_out = result(
        "ETH/USD", SymbolStatus.TIMEOUT, Code(reason) if reason else Code.TIMEOUT, reason, attempts=1
    )
    done = outcome(CycleStatus.FAILED, [timed_out], duration_ms=duration_ms)

    p = plan(cfg, done, run_state(cfg), LEASE, snapshot(Backpressure(consecutive_overruns=1)))

    assert p.payload["backpressure"] == {"consecutive_overruns": streak, "cooldown_remaining": "0"}
    assert not p.cooling


def test_without_the_lease_a_run_leaves_the_backpressure_alone() -> None:
    cfg = settings()
    late = outcome(CycleStatus.COMPLETED, [], duration_ms=60_000)

    p = plan(cfg, late, run_state(cfg), None, snapshot(Backpressure(consecutive_overruns=1)))

    assert p.payload["backpressure"] is None


# The gauges --------------------------------------------------------------------------------------------


def test_the_gauges_of_a_cycle_that_ran() -> None:
    cfg = settings(adaptive={"latency_window_size": 3})
    eth = signal("ETH/USD")
    results = [
        ok("ETH/USD", sig=eth),
        failed("BTC/USD", "error: x"),
        result("SOL/USD", SymbolStatus.LOCKED, Code.LOCKED, "held"),
    ]
    done = outcome(CycleStatus.PARTIAL, results, signals=[eth], exit_code=1)
    run = run_state(
        cfg,
        locks={
            "ETH/USD": lock("ETH/USD"),
            "BTC/USD": lock("BTC/USD", "taken_over"),
            "SOL/USD": lock("SOL/USD", "held"),
        },
        latencies=[(T + 1, 100.0)],
        samples=[Sample(T - 10, 900.0), Sample(T - 20, 800.0), Sample(T - 30, 9999.0)],
    )
    record = RecordResult(breaker=BreakerState(state="half_open"), last_success=T - 3600)

    assert gauges(done, run, record, decision(concurrency=5, p95_ms=42.0)) == {
        "signals_generated_last_cycle": 1.0,
        "active_locks": 2.0,
        "symbols_processing": 2.0,
        'circuit_breaker_state{breaker="llm_service",state="half_open"}': 0.5,
        "adaptive_batch_size": 5.0,
        "current_p95_latency_ms": 900.0,  # p95 of [100, 900, 800]: this run's, then the window's newest
        "autonomous_runner_last_cycle_timestamp": T,
        "autonomous_runner_start_lag_seconds": 1.0,
        "autonomous_runner_last_cycle_exit_code": 1.0,
        "autonomous_runner_last_success_timestamp": T - 3600,
    }


def test_the_p95_gauge_takes_this_runs_newest_latencies_first() -> None:
    cfg = settings(adaptive={"latency_window_size": 2})
    run = run_state(
        cfg, latencies=[(T + 1, 100.0), (T + 3, 300.0), (T + 2, 200.0)], samples=[Sample(T - 5, 5000.0)]
    )
    done = outcome(CycleStatus.COMPLETED, [ok("ETH/USD")])

    assert gauges(done, run, RecordResult())["current_p95_latency_ms"] == 300.0  # of [300, 200]


def test_the_p95_gauge_of_a_long_window_is_not_its_slowest_latency() -> None:
    # 40 latencies: p95 is the 39th (nearest rank), 3900 ms; the slowest is 4000 ms.
    cfg = settings(adaptive={"latency_window_size": 40})
    run = run_state(cfg, latencies=[(T + i / 100, 100.0 * i) for i in range(1, 41)])
    done = outcome(CycleStatus.COMPLETED, [ok("ETH/USD")])

    assert gauges(done, run, RecordResult())["current_p95_latency_ms"] == 3900.0


def test_the_p95_gauge_leaves_out_samples_too_old_to_count() -> None:
    cfg = settings(adaptive={"sample_max_age_seconds": 60})
    run = run_state(cfg, latencies=[(T + 1, 100.0)], samples=[Sample(T - 59, 200.0), Sample(T - 61, 5000.0)])
    done = outcome(CycleStatus.COMPLETED, [ok("ETH/USD")])

    assert gauges(done, run, RecordResult())["current_p95_latency_ms"] == 200.0  # of [100, 200]


def test_without_new_latencies_the_p95_gauge_is_the_plans() -> None:
    cfg = settings()
    done = outcome(CycleStatus.COMPLETED, [ok("ETH/USD")])

    with_run = gauges(
        done, run_state(cfg, samples=[Sample(T - 5, 5000.0)]), RecordResult(), decision(p95_ms=42.0)
    )
    without = gauges(done, None, RecordResult(), decision(p95_ms=43.0))

    assert with_run["current_p95_latency_ms"] == 42.0
    assert without["current_p95_latency_ms"] == 43.0


def test_the_gauges_of_a_skipped_cycle() -> None:
    done = outcome(CycleStatus.SKIPPED, [], skip_reason="kill_switch", skip_detail="d")

    assert gauges(done, None, RecordResult(), decision(concurrency=10, p95_ms=7.0)) == {
        "signals_generated_last_cycle": 0.0,
        "active_locks": 0.0,
        "symbols_processing": 0.0,
        'circuit_breaker_state{breaker="llm_service",state="closed"}': 0.0,
        "adaptive_batch_size": 10.0,
        "current_p95_latency_ms": 7.0,
        "autonomous_runner_last_cycle_timestamp": T,
        "autonomous_runner_start_lag_seconds": 1.0,
        "autonomous_runner_last_cycle_exit_code": 0.0,
    }


def test_a_start_before_the_scheduled_minute_is_no_lag() -> None:
    done = outcome(CycleStatus.COMPLETED, [ok("ETH/USD")])

    lag = cycle_gauges(
        settings(), done, decision(), RecordResult(), MINUTE + timedelta(seconds=30), snapshot()
    )

    assert lag["autonomous_runner_start_lag_seconds"] == 0.0


@pytest.mark.parametrize(("state", "value"), [("closed", 0.0), ("half_open", 0.5), ("open", 1.0)])
def test_the_breaker_gauge_names_the_state_the_record_step_saw(state: str, value: float) -> None:
    done = outcome(CycleStatus.COMPLETED, [ok("ETH/USD")])

    found = gauges(done, None, RecordResult(breaker=BreakerState(state=state)))

    assert {k: v for k, v in found.items() if k.startswith("circuit_breaker_state")} == {
        f'circuit_breaker_state{{breaker="llm_service",state="{state}"}}': value
    }


def test_the_hit_ratio_gauges_are_per_symbol_and_horizon_and_only_where_something_was_scored() -> None:
    done = outcome(CycleStatus.COMPLETED, [ok("ETH/USD")])
    record = RecordResult(
        hit_ratios=[("ETH/USD", 5, 4.0, 3.0), ("ETH/USD", 15, 1.0, 1.0), ("BTC/USD", 5, 0.0, 0.0)]
    )

    found = gauges(done, None, record)

    assert {k: v for k, v in found.items() if k.startswith("signal_outcome_hit_ratio")} == {
        'signal_outcome_hit_ratio{horizon="5",symbol="ETH/USD"}': 0.75,
        'signal_outcome_hit_ratio{horizon="15",symbol="ETH/USD"}': 1.0,
    }


# The notifications' facts --------------------------------------------------------------------------


def notices(cfg: Settings, done: Outcome, began: Snapshot, record: RecordResult, made: RecordPlan) -> Any:
    """``plan_notices`` for a run of shard 1/3 of ``cfg`` (the run only names who saw what)."""
    import fakeredis

    from runner.analyzers.fake import FakeAnalyzer
    from runner.clock import FrozenClock
    from runner.cycle import start
    from runner.market.synthetic import SyntheticSource
    from runner.run import Deps, Exports
    from runner.shards import Shard

    deps = Deps(
        fakeredis.FakeAsyncRedis(), FakeAnalyzer(lambda r: None), SyntheticSource(), FrozenClock(STARTED)
    )
    run = start(cfg, deps, Shard(1, 3), False, Exports())
    return run, plan_notices(run, done, began, record, made)


def test_the_notices_compare_the_state_the_cycle_began_with_to_the_state_it_recorded() -> None:
    cfg = settings(
        instance_id="unit-runner",
        analyzer={"daily_budget_usd": 1.0},
        notify={"failing_cycles": 2},
        adaptive={"pause_after_failures": 4},
        circuit_breaker={"llm_service": {"recovery_timeout_seconds": 90}},
    )
    # 04:30 UTC is still the day before in Honolulu: the budget's day is the UTC one.
    early = datetime(2026, 3, 3, 4, 30, tzinfo=UTC)
    done = outcome(
        CycleStatus.FAILED, [failed("ETH/USD", "transient: 503 service unavailable", code=Code.TRANSIENT)]
    )
    done = done.model_copy(update={"started_at": early})
    began = replace(snapshot(), spend_usd=0.5, failing=Streak(1, since=T - 60, why="transient on ETH/USD"))
    opened = BreakerState(state="open", failure_count=3, opened_at=T, since=T)
    record = RecordResult(
        breaker=opened,
        paused={"ETH/USD": json.dumps({"since": T, "reason": "bad answers"})},
        kill_switch={"on": "1", "reason": "maintenance", "by": "ops", "at": f"{T:.3f}"},
        spend_usd=1.25,
    )
    made = RecordPlan(
        payload={}, lock_keys=[], now=T + 2, streak=Streak(2, since=T - 60, why="transient on ETH/USD")
    )

    with local_time_zone("HST10"):
        run, told = notices(cfg, done, began, record, made)

    assert [(n.event.value, n.id) for n in told] == [
        ("breaker_opened", f"breaker_opened:{T:.3f}"),
        ("symbol_paused", f"symbol_paused:ETH/USD:{T:.3f}"),
        ("kill_switch_on", f"kill_switch_on:{T:.3f}"),
        ("budget_exhausted", "budget_exhausted:2026-03-03"),
        ("cycles_failing", f"cycles_failing:1/3:{T - 60:.3f}"),
    ]
    breaker_opened, paused, _, budget, failing = (n.body.splitlines() for n in told)
    seen_by = f"Seen by: shard 1/3, instance unit-runner, cycle {run.owner.cycle_id}"
    assert all(n.body.splitlines()[-2] == seen_by for n in told)
    assert "probe the analyzer again 90 s after it opened" in breaker_opened[0]
    assert breaker_opened[2] == "Why: transient on ETH/USD (503 service unavailable)"
    assert paused[0] == "ETH/USD is paused after 4 failures of its own in a row: cycles skip it."
    assert budget[0].startswith("The analyzer's daily budget is spent: $1.2500 of $1.00 on 2026-03-03 (UTC).")
    assert budget[1] == "Since: 2026-03-02 12:00:03 UTC"
    assert failing[0] == "2 cycles of shard 1/3 failed in a row: no symbol produced a signal."


def test_what_was_already_so_when_the_cycle_began_is_not_told_again() -> None:
    cfg = settings(analyzer={"daily_budget_usd": 1.0}, notify={"failing_cycles": 2})
    done = outcome(CycleStatus.SKIPPED, [], skip_reason="breaker_open", skip_detail="d")
    opened = BreakerState(state="open", failure_count=3, opened_at=T, since=T)
    paused = {"ETH/USD": json.dumps({"since": T - 60, "reason": "bad answers"})}
    kill_switch = {"on": "1", "reason": "maintenance", "by": "ops", "at": f"{T - 60:.3f}"}
    began = replace(
        snapshot(),
        breaker=opened,
        paused=paused,
        kill_switch=kill_switch,
        spend_usd=1.5,
        failing=Streak(5, since=T - 600),
    )
    # The record step saw no breaker (None) and a skipped cycle leaves the streak (None) alone.
    record = RecordResult(breaker=None, paused=dict(paused), kill_switch=dict(kill_switch), spend_usd=1.5)

    _, told = notices(cfg, done, began, record, RecordPlan(payload={}, lock_keys=[], now=T))

    assert told == []


def test_the_outcomes_plan_word_for_word() -> None:
    cfg = settings(outcomes={"fee_bps": 25, "horizons_minutes": [60, 5, 15]})
    minute = datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp()
    tally = Tally(
        breaker_base=BreakerState(),
        breaker=BreakerState(),
        closes={
            "AAA/USD": (minute, []),  # fetched, but no close at the signal's minute
            "BBB/USD": (minute - 60, [2999.5, 3001.25]),
            "CCC/USD": (minute, [10.0]),
        },
    )
    cheap = signal("BBB/USD", "SELL").model_copy(update={"model": "org|model", "cost_usd": None})
    paid = signal("CCC/USD").model_copy(update={"cost_usd": 0.002})
    signals = [signal("ZZZ/USD"), signal("AAA/USD"), cheap, paid]  # the first two are not scored

    symbols, pending = plan_outcomes(cfg, outcome(CycleStatus.COMPLETED, [], signals=signals), tally)

    assert symbols == ["AAA/USD", "BBB/USD", "CCC/USD"]
    assert pending == {
        "fee": 0.0025,
        "horizons": [5, 15, 60],
        "keep": 24 * 3600 + 60 * 60,  # a day beyond the longest horizon
        "day_ttl": 92 * 86_400,
        "maxlen": cfg.publish.stream_maxlen,
        "prices": [
            {"symbol": "AAA/USD", "first": minute, "closes": []},
            {"symbol": "BBB/USD", "first": minute - 60, "closes": [2999.5, 3001.25]},
            {"symbol": "CCC/USD", "first": minute, "closes": [10.0]},
        ],
        "new": [
            {
                "i": 2,
                "minute": minute,
                "id": "BBB/USD:2026-03-02T12:00",
                "model": "org/model",
                "action": "SELL",
                "confidence": 0.7,
                "entry": 3001.25,
                "cost": 0.0,
            },
            {
                "i": 3,
                "minute": minute,
                "id": "CCC/USD:2026-03-02T12:00",
                "model": "m",
                "action": "BUY",
                "confidence": 0.7,
                "entry": 10.0,
                "cost": 0.002,
            },
        ],
    }


def stage_metrics(payload: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in counters(payload).items() if k.startswith("pipeline_stage_")}


def test_each_stage_of_each_chain_and_the_report_are_counted_and_timed_in_seconds() -> None:
    cfg = settings()
    chain = SymbolResult(
        symbol="ETH/USD",
        status=SymbolStatus.FAILED,
        code=Code.TIMEOUT,
        reason="score: timeout",
        attempts=1,
        duration_ms=2500,
        stages={"signal": SymbolStatus.OK, "score": SymbolStatus.TIMEOUT, "advise": SymbolStatus.SKIPPED},
        timings={"signal": 500, "score": 2000},
    )
    done = outcome(CycleStatus.FAILED, [chain], exit_code=3, report_status=SymbolStatus.OK, report_ms=250)

    got = stage_metrics(plan(cfg, done, run_state(cfg), LEASE).payload)

    assert got == {
        'pipeline_stage_total{stage="signal",status="ok"}': 1.0,
        'pipeline_stage_total{stage="score",status="timeout"}': 1.0,
        'pipeline_stage_total{stage="advise",status="skipped"}': 1.0,
        'pipeline_stage_total{stage="report",status="ok"}': 1.0,
        'pipeline_stage_duration_seconds_sum{stage="signal"}': 0.5,
        'pipeline_stage_duration_seconds_count{stage="signal"}': 1.0,
        'pipeline_stage_duration_seconds_sum{stage="score"}': 2.0,
        'pipeline_stage_duration_seconds_count{stage="score"}': 1.0,
        'pipeline_stage_duration_seconds_sum{stage="report"}': 0.25,
        'pipeline_stage_duration_seconds_count{stage="report"}': 1.0,
    }


def test_a_report_turned_off_is_not_counted() -> None:
    cfg = settings()
    off = outcome(CycleStatus.COMPLETED, [], report_status=SymbolStatus.SKIPPED, report_reason="off")

    assert stage_metrics(plan(cfg, off, run_state(cfg), LEASE).payload) == {}
