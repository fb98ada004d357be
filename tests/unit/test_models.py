"""The cycle's data: a cycle's status and exit code from its symbols, the history summary and the
published signal's JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runner.errors import Code, ExitCode
from runner.models import CycleStatus, Outcome, Report, Signal, SymbolResult, SymbolStatus, decide_status
from tests.unit.test_builtin_stages import scored

OK, FAILED, TIMEOUT, LOCKED, PAUSED = (
    SymbolStatus.OK,
    SymbolStatus.FAILED,
    SymbolStatus.TIMEOUT,
    SymbolStatus.LOCKED,
    SymbolStatus.PAUSED,
)


#: The code a result of each status carries (the status decides, the code only says why).
CODES = {
    SymbolStatus.OK: Code.OK,
    SymbolStatus.FAILED: Code.ERROR,
    SymbolStatus.TIMEOUT: Code.TIMEOUT,
    SymbolStatus.LOCKED: Code.LOCKED,
    SymbolStatus.PAUSED: Code.PAUSED,
    SymbolStatus.NOT_STARTED: Code.DEADLINE,
    SymbolStatus.RATE_LIMITED: Code.RATE_LIMITED,
}


def results(*statuses: SymbolStatus) -> list[SymbolResult]:
    return [
        SymbolResult(symbol=f"S{i}/USD", status=status, code=CODES[status])
        for i, status in enumerate(statuses)
    ]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((), (CycleStatus.SKIPPED, ExitCode.OK, "no_symbols")),
        ((PAUSED, PAUSED), (CycleStatus.SKIPPED, ExitCode.OK, "no_symbols")),
        ((LOCKED,), (CycleStatus.SKIPPED, ExitCode.OK, "all_locked")),
        ((LOCKED, PAUSED, LOCKED), (CycleStatus.SKIPPED, ExitCode.OK, "all_locked")),
        ((OK,), (CycleStatus.COMPLETED, ExitCode.OK, None)),
        ((OK, OK, PAUSED), (CycleStatus.COMPLETED, ExitCode.OK, None)),
        ((OK, FAILED, FAILED), (CycleStatus.PARTIAL, ExitCode.PARTIAL, None)),  # exactly one ok
        ((FAILED, TIMEOUT, OK, LOCKED), (CycleStatus.PARTIAL, ExitCode.PARTIAL, None)),
        ((OK, LOCKED), (CycleStatus.PARTIAL, ExitCode.PARTIAL, None)),
        ((OK, OK, TIMEOUT), (CycleStatus.PARTIAL, ExitCode.PARTIAL, None)),
        ((FAILED,), (CycleStatus.FAILED, ExitCode.FAILED, None)),
        ((FAILED, TIMEOUT, PAUSED), (CycleStatus.FAILED, ExitCode.FAILED, None)),
        ((LOCKED, FAILED), (CycleStatus.FAILED, ExitCode.FAILED, None)),
        ((SymbolStatus.NOT_STARTED, SymbolStatus.RATE_LIMITED), (CycleStatus.FAILED, ExitCode.FAILED, None)),
    ],
)
def test_a_cycles_status_and_exit_code_follow_from_its_symbols(
    statuses: tuple[SymbolStatus, ...], expected: tuple[CycleStatus, ExitCode, str | None]
) -> None:
    assert decide_status(results(*statuses)) == expected


def test_the_exit_codes_are_the_documented_numbers() -> None:
    assert [int(decide_status(results(*s))[1]) for s in ((OK,), (OK, FAILED), (FAILED,), (LOCKED,))] == [
        0,
        1,
        3,
        0,
    ]


SIGNAL: dict[str, Any] = {
    "id": "ETH/USD:2026-03-02T12:00",
    "symbol": "ETH/USD",
    "action": "BUY",
    "confidence": 0.7,
    "reasoning": "trend up",
    "price": 3000.5,
    "generated_at": "2026-03-02T12:00:01.200Z",
    "cycle_id": "cycle-1",
    "instance_id": "pod-a",
    "analyzer": "builtin",
    "model": None,
    "latency_ms": 5,
    "fencing_token": 7,
}


def signal(**overrides: Any) -> Signal:
    return Signal(**{**SIGNAL, **overrides})


def test_a_signals_json_carries_every_field_null_ones_included() -> None:
    doc = json.loads(signal(price=None).to_json())

    assert doc == {
        **SIGNAL,
        "price": None,
        "schema_version": 1,
        "requested_model": None,
        "prompt_hash": None,
        "tokens_in": None,
        "tokens_out": None,
        "cost_usd": None,
    }


def outcome(**overrides: Any) -> Outcome:
    fields: dict[str, Any] = {
        "cycle_id": "cycle-1",
        "instance_id": "pod-a",
        "shard": "1/3",
        "status": CycleStatus.PARTIAL,
        "skip_reason": None,
        "skip_detail": "two of three",
        "exit_code": 1,
        "started_at": "2026-03-02T12:00:01.000Z",
        "scheduled_minute": "2026-03-02T12:00",
        "duration_ms": 812,
        "signals": [signal()],
        "results": [
            SymbolResult(
                symbol="ETH/USD",
                status=OK,
                code=Code.OK,
                attempts=1,
                duration_ms=40,
                symbol_fault=True,
                signal=signal(),
            ),
            SymbolResult(
                symbol="BTC/USD",
                status=FAILED,
                code=Code.INVALID_OUTPUT,
                reason="score: invalid_output: x",
                attempts=2,
                outage=True,
                stages={"signal": OK, "score": FAILED, "advise": SymbolStatus.SKIPPED},
                stage_reasons={"score": "invalid_output: x", "advise": "upstream score failed"},
            ),
            SymbolResult(symbol="SOL/USD", status=OK, code=Code.OK, attempts=1, duration_ms=30),
        ],
        "warnings": ["w"],
        "stats": {"k": 1},
    }
    return Outcome(**{**fields, **overrides})


def test_the_history_summary_counts_each_status_and_keeps_each_symbols_result() -> None:
    assert outcome().summary() == {
        "cycle_id": "cycle-1",
        "instance_id": "pod-a",
        "shard": "1/3",
        "status": "partial",
        "skip_reason": None,
        "skip_detail": "two of three",
        "exit_code": 1,
        "started_at": "2026-03-02T12:00:01.000Z",
        "scheduled_minute": "2026-03-02T12:00",
        "duration_ms": 812,
        "signals": 1,
        "scores": 0,
        "advice": 0,
        "report": None,
        "error": None,
        "counts": {"ok": 2, "failed": 1},
        "results": [
            {
                "symbol": "ETH/USD",
                "status": "ok",
                "code": "ok",
                "reason": None,
                "attempts": 1,
                "duration_ms": 40,
                "stages": {},
                "stage_reasons": {},
            },
            {
                "symbol": "BTC/USD",
                "status": "failed",
                "code": "invalid_output",
                "reason": "score: invalid_output: x",
                "attempts": 2,
                "duration_ms": 0,
                "stages": {"signal": "ok", "score": "failed", "advise": "skipped"},
                "stage_reasons": {"score": "invalid_output: x", "advise": "upstream score failed"},
            },
            {
                "symbol": "SOL/USD",
                "status": "ok",
                "code": "ok",
                "reason": None,
                "attempts": 1,
                "duration_ms": 30,
                "stages": {},
                "stage_reasons": {},
            },
        ],
    }


def plain_json_types(value: Any) -> set[type]:
    """Every type inside ``value``, exactly (a ``str`` subclass such as an enum shows up as itself)."""
    if isinstance(value, dict):
        return {dict}.union(*(plain_json_types(v) for v in value.values()), {type(k) for k in value})
    if isinstance(value, list):
        return {list}.union(*(plain_json_types(v) for v in value))
    return {type(value)}


def test_the_history_summary_is_plain_json_data() -> None:
    summary = outcome().summary()

    assert plain_json_types(summary) <= {dict, list, str, int, type(None)}
    assert json.loads(json.dumps(summary)) == summary


def test_a_skipped_cycle_summary_has_its_reason_and_no_counts() -> None:
    skipped = outcome(
        status=CycleStatus.SKIPPED,
        skip_reason="kill_switch",
        skip_detail="kill switch on",
        exit_code=0,
        signals=[],
        results=[],
    )

    summary = skipped.summary()

    assert (summary["status"], summary["skip_reason"], summary["skip_detail"]) == (
        "skipped",
        "kill_switch",
        "kill switch on",
    )
    assert (summary["signals"], summary["counts"], summary["results"]) == (0, {}, [])


def test_a_published_document_keeps_its_empty_fields() -> None:
    doc = json.loads(scored("ETH/USD", 70).to_json())

    assert (doc["tokens_in"], doc["cost_usd"], doc["requested_model"], doc["prompt_hash"]) == (None,) * 4


def test_the_history_summary_names_the_cycles_report() -> None:
    report = Report(
        id="report:2026-03-02T12:00:1/3",
        cycle_id="cycle-1",
        instance_id="pod-a",
        fencing_token=7,
        generated_at="2026-03-02T12:00:02.000Z",
        analyzer="builtin",
        model="report-v1",
        latency_ms=3,
        shard="1/3",
        minute="2026-03-02T12:00",
        summary="one buy",
        counts={"BUY": 1},
        top=[],
    )

    assert outcome(report=report).summary()["report"] == "report:2026-03-02T12:00:1/3"
