"""The built-in stages: deterministic, offline, the defaults. Same candles, same answers.

* score: how actionable and reliable a signal is, from its confidence, the strength of the
  EMA(9)/EMA(21) trend in its direction and the calm of the market (ATR(14) against the price);
  a HOLD is never actionable and grades D.
* advise: the signal's action with an ATR-based stop (2 ATR) and target (3 ATR), a size from the
  confidence and the score; a score below grade C advises HOLD. The risk limits (``risk.py``)
  cut it afterwards, as they cut every advisor's.
* report: the cycle in a few lines of markdown: counts, the best-scored advice, what failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from runner.analyzers.builtin import FAST, SLOW, ema
from runner.market.base import Candle
from runner.models import AdviceAnswer, ReportAnswer, ScoreAnswer, Signal, SymbolStatus, grade_of
from runner.pipeline.base import ReportRequest, StageRequest

ATR_PERIOD = 14
#: A trend of this relative EMA spread counts as full strength.
FULL_TREND = 0.01
#: An ATR of this share of the price counts as fully volatile.
FULL_VOLATILITY = 0.02
#: Below this score the advice is HOLD (grade D).
MIN_SCORE_TO_TRADE = 40
STOP_ATR, TARGET_ATR = 2.0, 3.0
#: The size a perfect signal (confidence 1, score 100) would ask for, before the limits.
FULL_SIZE_PCT = 20.0
HORIZON_MINUTES = 15
#: How many advice the report lists.
REPORT_TOP = 5


def atr(candles: Sequence[Candle], period: int = ATR_PERIOD) -> float:
    """Average true range of the last ``period`` bars."""
    ranges = [
        max(c.high - c.low, abs(c.high - prev.close), abs(c.low - prev.close))
        for prev, c in pairwise(candles)
    ][-period:]
    return sum(ranges) / len(ranges) if ranges else 0.0


def score_signal(signal: Signal, candles: Sequence[Candle]) -> ScoreAnswer:
    """The built-in score of ``signal`` on ``candles`` (pure)."""
    closes = [c.close for c in candles]
    fast, slow = ema(closes, FAST)[-1], ema(closes, SLOW)[-1]
    spread = (fast - slow) / slow
    strength = min(abs(spread) / FULL_TREND, 1.0)
    volatility = atr(candles) / closes[-1]
    calm = 1.0 - min(volatility / FULL_VOLATILITY, 1.0)
    if signal.action == "HOLD":
        score = round(39 * (0.5 * signal.confidence + 0.5 * (1.0 - strength)))
        trend = f"trend {spread:+.2%}: nothing to trade on a HOLD"
    else:
        aligned = (spread > 0) == (signal.action == "BUY")
        score = round(100 * (0.5 * signal.confidence + 0.3 * (strength if aligned else 0.0) + 0.2 * calm))
        trend = f"trend {spread:+.2%} {'with' if aligned else 'against'} the signal"
    factors = [
        trend,
        f"confidence {signal.confidence:.2f}",
        f"volatility {volatility:.2%} of price (ATR{ATR_PERIOD})",
    ]
    return ScoreAnswer(
        score=score,
        grade=grade_of(score),
        factors=factors,
        reasoning=f"{signal.action} at confidence {signal.confidence:.2f}; " + "; ".join(factors),
        analyzer="builtin",
        model="score-v1",
    )


def advise(signal: Signal, score: int | None, candles: Sequence[Candle]) -> AdviceAnswer:
    """The built-in advice for ``signal`` (pure), before the risk limits."""
    entry = round(candles[-1].close, 8)  # the market's last close, not the model's claim of it
    # A flat market has no range: keep the stop a sliver away from the entry all the same.
    unit = max(atr(candles), entry * 0.001)
    rating = score if score is not None else round(signal.confidence * 100)
    base: dict[str, Any] = {"analyzer": "builtin", "model": "advice-v1", "horizon_minutes": HORIZON_MINUTES}
    if signal.action == "HOLD" or rating < MIN_SCORE_TO_TRADE:
        why = (
            "the signal is HOLD"
            if signal.action == "HOLD"
            else f"score {rating} is below {MIN_SCORE_TO_TRADE}"
        )
        return AdviceAnswer(
            action="HOLD",
            entry=entry,
            stop_loss=None,
            take_profit=None,
            position_size_pct=0.0,
            reasoning=f"no position: {why}",
            **base,
        )
    sign = 1.0 if signal.action == "BUY" else -1.0
    size = round(FULL_SIZE_PCT * signal.confidence * rating / 100, 2)
    return AdviceAnswer(
        action=signal.action,
        entry=entry,
        stop_loss=round(entry - sign * STOP_ATR * unit, 8),
        take_profit=round(entry + sign * TARGET_ATR * unit, 8),
        position_size_pct=size,
        reasoning=(
            f"{signal.action} at {entry:.6g}, stop {STOP_ATR:g} ATR and target {TARGET_ATR:g} ATR away "
            f"(ATR {unit:.6g}); size {size:g}% from confidence {signal.confidence:.2f} and score {rating}"
        ),
        **base,
    )


def summarize(request: ReportRequest) -> ReportAnswer:
    """The built-in report: the cycle in a few lines of markdown (pure)."""
    results = request.results
    work = [r for r in results if r.status is not SymbolStatus.PAUSED]
    done = [r for r in work if r.status is SymbolStatus.OK]
    actions = {a: sum(s.action == a for s in request.signals) for a in ("BUY", "SELL", "HOLD")}
    positions = [a for a in request.advice if a.action != "HOLD" and a.position_size_pct > 0]
    lines = [
        f"**Cycle {request.scheduled_minute:%Y-%m-%d %H:%M} UTC, shard {request.shard}**: "
        f"{len(done)} of {len(work)} symbol(s) through every stage.",
        "",
        f"Signals: {actions['BUY']} BUY, {actions['SELL']} SELL, {actions['HOLD']} HOLD. "
        f"Advice: {len(positions)} position(s), {sum(a.position_size_pct for a in positions):.4g}% exposure.",
    ]
    scores = {s.symbol: s.score for s in request.scores}
    best = sorted(positions, key=lambda a: (-scores.get(a.symbol, 0), a.symbol))[:REPORT_TOP]
    if best:
        lines += [
            "",
            "| symbol | action | score | size % | entry | stop | target |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {a.symbol} | {a.action} | {scores.get(a.symbol, '-')} | {a.position_size_pct:g} | "
            f"{a.entry:.6g} | {a.stop_loss:.6g} | {a.take_profit:.6g} |"
            if a.entry and a.stop_loss and a.take_profit
            else f"| {a.symbol} | {a.action} | {scores.get(a.symbol, '-')} | {a.position_size_pct:g} | | | |"
            for a in best
        ]
    trouble = [r for r in work if r.status is not SymbolStatus.OK]
    if trouble:
        shown = "; ".join(f"{r.symbol} {r.status.value} ({r.reason})" for r in trouble[:REPORT_TOP])
        more = f"; and {len(trouble) - REPORT_TOP} more" if len(trouble) > REPORT_TOP else ""
        lines += ["", f"Not through: {shown}{more}."[:1500]]
    return ReportAnswer(summary="\n".join(lines), analyzer="builtin", model="report-v1")


class BuiltinScorer:
    """The score stage, built in."""

    name = "builtin"
    remote = False

    async def answer(self, request: StageRequest) -> ScoreAnswer:
        return score_signal(request.signal, request.candles)

    async def aclose(self) -> None:
        return None


class BuiltinAdvisor:
    """The advise stage, built in."""

    name = "builtin"
    remote = False

    async def answer(self, request: StageRequest) -> AdviceAnswer:
        score = request.score.score if request.score is not None else None
        return advise(request.signal, score, request.candles)

    async def aclose(self) -> None:
        return None


class BuiltinReporter:
    """The report, built in."""

    name = "builtin"
    remote = False

    async def answer(self, request: ReportRequest) -> ReportAnswer:
        return summarize(request)

    async def aclose(self) -> None:
        return None
