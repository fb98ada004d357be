"""Whole cycles with the full pipeline (signal -> score -> advise, then the report), against fakeredis
and a real redis-server: what is published where, what a failing stage costs, the risk limits across
the cycle, a dry run."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from runner.analyzers.fake import FakeAnalyzer
from runner.clock import FrozenClock
from runner.cycle import Deps, run_cycle
from runner.errors import Code, InvalidOutput, TransientError
from runner.market.synthetic import SyntheticSource
from runner.models import AdviceAnswer, CycleStatus, Outcome, ReportAnswer, ScoreAnswer, SymbolStatus
from runner.pipeline.base import ReportRequest, StageRequest, Stages
from runner.pipeline.builtin import BuiltinAdvisor, BuiltinScorer
from tests.unit.test_cycle import KEYS, START, SYMBOLS, answers, make_settings


@dataclass
class ScriptedStage:
    """A stage that answers through ``script(request)``: raise to fail, return to answer, or wait on
    ``gate`` (an event the test sets) before answering."""

    script: Any
    remote: bool = False
    name: str = "scripted"
    gate: asyncio.Event | None = None
    seen: list[Any] = field(default_factory=list)
    #: Set as soon as a request arrives.
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def answer(self, request: Any) -> Any:
        self.seen.append(request)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.script(request)

    async def aclose(self) -> None:
        return None


async def run(
    redis: Any,
    *,
    stages: Stages | None = None,
    settings: Any = None,
    symbols: list[str] | None = None,
    clock: Any = None,
    **kw: Any,
) -> Outcome:
    deps = Deps(
        redis=redis,
        analyzer=FakeAnalyzer(answers()),
        market=SyntheticSource(),
        clock=clock or FrozenClock(START),
        stages=stages or Stages(),
    )
    return await run_cycle(settings or make_settings(), deps, symbols=symbols or list(SYMBOLS), **kw)


async def docs(redis: Any, stream: str, field_name: str = "doc") -> list[dict[str, Any]]:
    return [json.loads(f[field_name]) for _, f in await redis.xrange(stream)]


async def test_a_cycle_publishes_signals_scores_advice_and_one_report(any_redis: Any) -> None:
    outcome = await run(any_redis)

    assert outcome.status is CycleStatus.COMPLETED
    assert [r.stages for r in outcome.results] == [{"signal": "ok", "score": "ok", "advise": "ok"}] * 3
    signals = await docs(any_redis, KEYS.stream, "signal")
    scores = await docs(any_redis, KEYS.scored_stream)
    advice = await docs(any_redis, KEYS.advised_stream)
    reports = await docs(any_redis, KEYS.reports_stream)
    assert sorted(d["symbol"] for d in signals) == sorted(SYMBOLS)
    assert sorted(d["symbol"] for d in scores) == sorted(SYMBOLS)
    assert sorted(d["symbol"] for d in advice) == sorted(SYMBOLS)
    assert [r["id"] for r in reports] == ["report:2026-11-23T14:05:0-1"]
    by_id = {d["symbol"]: d["id"] for d in signals}
    for doc in (*scores, *advice):
        assert doc["id"] == by_id[doc["symbol"]], "every stage's document carries the signal id"
        assert (
            doc["fencing_token"] == next(s for s in signals if s["symbol"] == doc["symbol"])["fencing_token"]
        )
    assert {d["stage"] for d in scores} == {"score"}
    assert {d["stage"] for d in advice} == {"advise"}
    assert json.loads(await any_redis.get(KEYS.reports_latest)) == reports[0]
    assert set(await any_redis.hkeys(KEYS.scored_latest)) == set(SYMBOLS)
    assert set(await any_redis.hkeys(KEYS.advised_latest)) == set(SYMBOLS)
    assert reports[0]["counts"]["symbols"] == 3
    assert reports[0]["counts"]["ok"] == 3
    assert [len(outcome.signals), len(outcome.scores), len(outcome.advice)] == [3, 3, 3]
    assert outcome.report is not None
    assert outcome.report.summary.startswith("**Cycle 2026-11-23 14:05 UTC, shard 0/1**")
    assert await any_redis.keys(KEYS.lock("*")) == [], "every lock is released once its chain is published"


async def test_stage_streams_entries_carry_symbol_and_doc(any_redis: Any) -> None:
    await run(any_redis)

    for stream in (KEYS.scored_stream, KEYS.advised_stream):
        _, fields = (await any_redis.xrange(stream))[0]
        assert set(fields) == {"symbol", "doc"}
    _, report_fields = (await any_redis.xrange(KEYS.reports_stream))[0]
    assert set(report_fields) == {"shard", "doc"}
    _, signal_fields = (await any_redis.xrange(KEYS.stream))[0]
    assert set(signal_fields) == {"symbol", "signal"}, "signals:raw keeps its shape"


async def test_a_rerun_in_the_same_minute_publishes_nothing_twice(any_redis: Any) -> None:
    clock = FrozenClock(START)
    first = await run(any_redis, clock=clock)
    clock.advance(15)
    rerun = await run(any_redis, clock=clock)

    assert first.status is rerun.status is CycleStatus.COMPLETED
    assert [r.code for r in rerun.results] == [Code.DUPLICATE] * 3
    assert [r.stages["score"] for r in rerun.results] == ["skipped"] * 3
    assert [r.stage_reasons["score"] for r in rerun.results] == ["upstream signal duplicate"] * 3
    for stream in (KEYS.stream, KEYS.scored_stream, KEYS.advised_stream, KEYS.reports_stream):
        assert await any_redis.xlen(stream) == (1 if stream == KEYS.reports_stream else 3)


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (lambda: InvalidOutput("score 150 is not in [0, 100]"), SymbolStatus.FAILED, Code.INVALID_OUTPUT),
        (lambda: TransientError("HTTP 500: boom"), SymbolStatus.FAILED, Code.TRANSIENT),
    ],
)
async def test_a_failed_score_skips_the_advice_and_invents_nothing(
    any_redis: Any, failure: Any, status: SymbolStatus, code: Code
) -> None:
    def score(request: StageRequest) -> ScoreAnswer:
        if request.symbol == "BTC/USD":
            raise failure()
        return BuiltinScorer_score(request)

    outcome = await run(any_redis, stages=Stages(scorer=ScriptedStage(score)))

    btc = next(r for r in outcome.results if r.symbol == "BTC/USD")
    assert outcome.status is CycleStatus.PARTIAL
    assert outcome.exit_code == 1
    assert (btc.status, btc.code) == (status, code)
    assert btc.stages == {"signal": "ok", "score": status.value, "advise": "skipped"}
    assert btc.stage_reasons["advise"] == f"upstream score {status.value}"
    assert btc.reason is not None
    assert btc.reason.startswith("score: ")
    assert "BTC/USD" in [d["symbol"] for d in await docs(any_redis, KEYS.stream, "signal")], (
        "the signal stands"
    )
    assert "BTC/USD" not in [d["symbol"] for d in await docs(any_redis, KEYS.scored_stream)]
    assert "BTC/USD" not in [d["symbol"] for d in await docs(any_redis, KEYS.advised_stream)]
    assert await any_redis.keys(KEYS.lock("*")) == [], (
        "the record step releases the lock the chain still held"
    )


def BuiltinScorer_score(request: StageRequest) -> ScoreAnswer:
    from runner.pipeline.builtin import score_signal

    return score_signal(request.signal, request.candles)


async def test_a_stage_that_outlasts_its_timeout_is_a_timeout_and_the_rest_is_skipped(any_redis: Any) -> None:
    never = asyncio.Event()  # never set: the stage only ends when its timeout cuts it off
    settings = make_settings(pipeline={"advise": {"timeout_seconds": 0.05}})

    outcome = await run(
        any_redis,
        stages=Stages(advisor=ScriptedStage(lambda r: None, gate=never)),
        settings=settings,
        symbols=["ETH/USD"],
        clock=None,
    )

    eth = outcome.results[0]
    assert eth.stages == {"signal": "ok", "score": "ok", "advise": "timeout"}
    assert eth.code is Code.TIMEOUT
    assert await any_redis.xlen(KEYS.scored_stream) == 1
    assert await any_redis.xlen(KEYS.advised_stream) == 0


async def test_the_risk_limits_apply_across_the_cycle_best_score_first(any_redis: Any) -> None:
    symbols = ["ETH/USD", "BTC/USD", "SOL/USD", "DOGE/USD"]
    points = {"ETH/USD": 90, "BTC/USD": 80, "SOL/USD": 70, "DOGE/USD": 60}

    def score(request: StageRequest) -> ScoreAnswer:
        n = points[request.symbol]
        return ScoreAnswer(score=n, grade="A" if n >= 80 else "B", factors=[], reasoning="scripted")

    def advise(request: StageRequest) -> AdviceAnswer:
        return AdviceAnswer(
            action="BUY",
            entry=100,
            stop_loss=95,
            take_profit=110,
            position_size_pct=15,
            horizon_minutes=30,
            reasoning="scripted",
        )

    settings = make_settings(
        risk={"max_position_size_pct": 12, "max_total_exposure_pct": 30, "max_positions": 15}
    )

    outcome = await run(
        any_redis,
        stages=Stages(scorer=ScriptedStage(score), advisor=ScriptedStage(advise)),
        settings=settings,
        symbols=symbols,
    )

    sizes = {a.symbol: a.position_size_pct for a in outcome.advice}
    assert sizes == {"ETH/USD": 12, "BTC/USD": 12, "SOL/USD": 6, "DOGE/USD": 0}
    limits = {a.symbol: a.limited_by for a in outcome.advice}
    assert limits["ETH/USD"] == ["max_position_size_pct"]
    assert limits["SOL/USD"] == ["max_position_size_pct", "max_total_exposure_pct"]
    published = {d["symbol"]: d["position_size_pct"] for d in await docs(any_redis, KEYS.advised_stream)}
    assert published == sizes


async def test_a_signal_whose_lock_was_taken_mid_chain_publishes_no_later_stage(any_redis: Any) -> None:
    gate = asyncio.Event()

    def score(request: StageRequest) -> ScoreAnswer:
        return BuiltinScorer_score(request)

    stage = ScriptedStage(score, gate=gate, remote=True)  # a stage that costs a call waits for the signal
    cycle = asyncio.create_task(run(any_redis, stages=Stages(scorer=stage), symbols=["ETH/USD"], clock=None))
    await asyncio.wait_for(stage.entered.wait(), 10)  # the chain is at its score stage, its signal published
    await any_redis.set(KEYS.lock("ETH/USD"), json.dumps({"instance_id": "pod-b", "cycle_id": "c-b"}))
    gate.set()
    outcome = await asyncio.wait_for(cycle, 10)

    eth = outcome.results[0]
    assert eth.code is Code.FENCED
    assert eth.stages == {"signal": "ok", "score": "failed", "advise": "skipped"}
    assert await any_redis.xlen(KEYS.stream) == 1
    assert await any_redis.xlen(KEYS.scored_stream) == 0
    assert json.loads(await any_redis.get(KEYS.lock("ETH/USD")))["instance_id"] == "pod-b", "not ours to free"


async def test_stages_can_be_left_out(any_redis: Any) -> None:
    settings = make_settings(pipeline={"stages": ["signal", "score"], "report": False})

    outcome = await run(any_redis, settings=settings)

    assert [r.stages for r in outcome.results] == [{"signal": "ok", "score": "ok"}] * 3
    assert await any_redis.xlen(KEYS.scored_stream) == 3
    assert await any_redis.exists(KEYS.advised_stream, KEYS.reports_stream) == 0
    assert outcome.report is None
    assert outcome.report_status is SymbolStatus.SKIPPED


async def test_the_report_sees_what_the_chains_did_and_a_failing_report_costs_only_a_warning(
    any_redis: Any,
) -> None:
    seen: list[ReportRequest] = []

    def report(request: ReportRequest) -> ReportAnswer:
        seen.append(request)
        raise InvalidOutput("summary is 5000 characters, at most 4000")

    outcome = await run(any_redis, stages=Stages(reporter=ScriptedStage(report)))

    assert outcome.status is CycleStatus.COMPLETED
    assert outcome.exit_code == 0
    assert outcome.report is None
    assert outcome.report_status is SymbolStatus.FAILED
    assert any("no report this cycle" in w for w in outcome.warnings)
    assert [len(seen[0].signals), len(seen[0].scores), len(seen[0].advice)] == [3, 3, 3]
    assert await any_redis.xlen(KEYS.reports_stream) == 0


async def test_a_dry_run_runs_every_stage_and_writes_nothing(any_redis: Any) -> None:
    outcome = await run(any_redis, dry_run=True)

    assert [len(outcome.signals), len(outcome.scores), len(outcome.advice)] == [3, 3, 3]
    assert outcome.report is not None
    assert not outcome.published
    assert await any_redis.keys("*") == []


async def test_the_builtin_stages_feed_no_breaker(any_redis: Any) -> None:
    """Built-in stages cannot have an outage: only the analyzer and remote stages move the breaker."""
    outcome = await run(any_redis, stages=Stages(scorer=BuiltinScorer(), advisor=BuiltinAdvisor()))

    assert outcome.status is CycleStatus.COMPLETED
    breaker = await any_redis.hgetall(KEYS.breaker("llm_service"))
    assert breaker["failure_count"] == "0"
