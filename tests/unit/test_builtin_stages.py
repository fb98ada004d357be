"""The built-in score, advice and report, answer for answer: known markets whose indicators are
worked out by hand, and the report word for word."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from runner.errors import Code
from runner.market.base import Candle
from runner.models import Advice, Score, Signal, SymbolResult, SymbolStatus, grade_of
from runner.pipeline import builtin
from runner.pipeline.base import ReportRequest, StageRequest
from tests.unit.test_pipeline_stages import MINUTE, flat, signal


def step(last: Candle) -> list[Candle]:
    """59 flat bars at 100, then ``last``."""
    return [*flat(59), last]


#: The last bar jumps from 100 to 120: EMA(9) 104, EMA(21) 101.8182 (a +2.14% trend, full
#: strength); ATR(14) 20/14 = 1.4286, 1.19% of the last close (calm 1 - 1.19/2 = 0.4048).
JUMP = step(Candle(MINUTE, 100, 120, 100, 120, 1))
#: A half-point step: EMA(9) 100.1, EMA(21) 100.0455 (+0.05%, strength 0.0545).
NUDGE = step(Candle(MINUTE, 100, 100.5, 100, 100.5, 1))
#: A wild last bar (100 to 200, closing at 150): ATR(14) 100/14, 4.76% of the price, beyond the
#: 2% that counts as fully volatile: no calm at all.
WILD = step(Candle(MINUTE, 100, 200, 100, 150, 1))


# The built-in score --------------------------------------------------------------------------------


def test_a_buy_with_the_trend_scores_confidence_trend_and_calm() -> None:
    got = builtin.score_signal(signal("BUY", 0.8), JUMP)

    assert got.model_dump(include={"score", "grade", "factors", "reasoning", "analyzer", "model"}) == {
        "score": 78,  # 100 * (0.5 * 0.8 + 0.3 * 1 + 0.2 * 0.4048)
        "grade": "B",
        "factors": ["trend +2.14% with the signal", "confidence 0.80", "volatility 1.19% of price (ATR14)"],
        "reasoning": "BUY at confidence 0.80; trend +2.14% with the signal; confidence 0.80; "
        "volatility 1.19% of price (ATR14)",
        "analyzer": "builtin",
        "model": "score-v1",
    }


def test_a_sell_against_the_trend_scores_confidence_and_calm_only() -> None:
    got = builtin.score_signal(signal("SELL", 0.8), JUMP)

    assert (got.score, got.grade, got.factors[0]) == (48, "C", "trend +2.14% against the signal")


@pytest.mark.parametrize(("candles", "score"), [(JUMP, 12), (NUDGE, 30)])
def test_a_hold_scores_low_and_lower_the_stronger_the_trend(candles: list[Candle], score: int) -> None:
    # 39 * (0.5 * confidence + 0.5 * (1 - strength)): 39 * (0.3 + 0.5 * 0) and 39 * (0.3 + 0.5 * 0.9455)
    got = builtin.score_signal(signal("HOLD", 0.6), candles)

    assert (got.score, got.grade) == (score, "D")
    assert got.factors[0].endswith(": nothing to trade on a HOLD")


def test_a_gentle_trend_counts_for_its_share_of_full_strength() -> None:
    got = builtin.score_signal(signal("BUY", 0.6), NUDGE)

    # 100 * (0.5 * 0.6 + 0.3 * 0.0545 + 0.2 * (1 - 0.0355 / 2))
    assert (got.score, got.factors[0], got.factors[2]) == (
        51,
        "trend +0.05% with the signal",
        "volatility 0.04% of price (ATR14)",
    )


def test_a_market_more_volatile_than_the_full_measure_has_no_calm_left() -> None:
    got = builtin.score_signal(signal("BUY", 0.8), WILD)

    assert (got.score, got.factors[2]) == (70, "volatility 4.76% of price (ATR14)")  # 100 * (0.4 + 0.3 + 0)


def test_no_trend_at_all_is_not_a_trend_with_a_buy() -> None:
    buy = builtin.score_signal(signal("BUY", 0.8), flat())
    sell = builtin.score_signal(signal("SELL", 0.8), flat())

    assert buy.factors[0] == "trend +0.00% against the signal"
    assert sell.factors[0] == "trend +0.00% with the signal"
    assert buy.score == sell.score == 60  # 100 * (0.4 + 0 + 0.2 * 1)


# The true range ------------------------------------------------------------------------------------


def test_the_true_range_is_the_widest_of_the_bar_and_its_gaps_from_the_last_close() -> None:
    start = Candle(MINUTE, 100, 100, 100, 100, 1)
    inside = Candle(MINUTE + timedelta(minutes=1), 100, 101, 99, 100, 1)  # its own range: 2
    gap_down = Candle(MINUTE + timedelta(minutes=2), 95, 95, 90, 92, 1)  # 10 below the last close

    assert builtin.atr([start, inside]) == 2.0
    assert builtin.atr([start, inside, gap_down]) == 6.0  # (2 + 10) / 2
    assert builtin.atr([start]) == 0.0, "one bar has no true range yet"


# The built-in advice ------------------------------------------------------------------------------


def test_a_buy_is_advised_word_for_word() -> None:
    got = builtin.advise(signal("BUY", 0.77), 78, JUMP)

    assert got.model_dump(exclude={"limited_by", "requested_model", "prompt_hash", "cost_usd"}) == {
        "analyzer": "builtin",
        "model": "advice-v1",
        "tokens_in": None,
        "tokens_out": None,
        "action": "BUY",
        "entry": 120.0,
        "stop_loss": 117.14285714,  # 120 - 2 * 20/14, to 8 decimals
        "take_profit": 124.28571429,  # 120 + 3 * 20/14
        "position_size_pct": 12.01,  # 20 * 0.77 * 78 / 100 = 12.012, to 2 decimals
        "horizon_minutes": 15,
        "reasoning": "BUY at 120, stop 2 ATR and target 3 ATR away (ATR 1.42857); size 12.01% from "
        "confidence 0.77 and score 78",
    }


def test_the_entry_is_the_last_close_to_eight_decimals() -> None:
    candles = step(Candle(MINUTE, 100, 100.123456789, 100, 100.123456789, 1))

    assert builtin.advise(signal("BUY", 0.8), 80, candles).entry == 100.12345679


def test_without_a_score_the_confidence_in_percent_is_the_rating() -> None:
    got = builtin.advise(signal("BUY", 0.7), None, JUMP)

    assert got.position_size_pct == 9.8  # 20 * 0.7 * 70 / 100
    assert got.reasoning.endswith("from confidence 0.70 and score 70")


def test_a_hold_is_advised_word_for_word() -> None:
    got = builtin.advise(signal("HOLD", 0.9), 90, JUMP)

    assert got.model_dump(include={"analyzer", "model", "action", "entry", "stop_loss", "reasoning"}) == {
        "analyzer": "builtin",
        "model": "advice-v1",
        "action": "HOLD",
        "entry": 120.0,
        "stop_loss": None,
        "reasoning": "no position: the signal is HOLD",
    }
    assert builtin.advise(signal("BUY", 0.9), 39, JUMP).reasoning == "no position: score 39 is below 40"


async def test_the_built_in_advisor_rates_by_the_published_score_and_else_by_the_confidence() -> None:
    score = Score(
        id="ETH/USD:2026-03-02T12:00",
        symbol="ETH/USD",
        cycle_id="c",
        instance_id="i",
        fencing_token=1,
        generated_at="2026-03-02T12:00:02.000Z",
        analyzer="builtin",
        model="score-v1",
        latency_ms=1,
        score=39,
        grade="D",
        factors=["f"],
        reasoning="r",
    )
    sig = signal("BUY", 0.8)

    scored = await builtin.BuiltinAdvisor().answer(
        StageRequest("advise", "ETH/USD", JUMP, MINUTE, 5, sig, score)
    )
    unscored = await builtin.BuiltinAdvisor().answer(StageRequest("advise", "ETH/USD", JUMP, MINUTE, 5, sig))

    assert (scored.action, scored.reasoning) == ("HOLD", "no position: score 39 is below 40")
    assert (unscored.action, unscored.position_size_pct) == ("BUY", 12.8)  # 20 * 0.8 * 80 / 100


# The built-in report ------------------------------------------------------------------------------


def result(symbol: str, status: SymbolStatus = SymbolStatus.OK, reason: str | None = None) -> SymbolResult:
    code = {SymbolStatus.OK: Code.OK, SymbolStatus.PAUSED: Code.PAUSED}.get(status, Code.TIMEOUT)
    return SymbolResult(symbol=symbol, status=status, code=code, reason=reason)


def doc(symbol: str) -> dict[str, Any]:
    return {
        "id": f"{symbol}:2026-03-02T12:00",
        "symbol": symbol,
        "cycle_id": "c",
        "instance_id": "i",
        "fencing_token": 1,
        "generated_at": "2026-03-02T12:00:02.000Z",
        "analyzer": "builtin",
        "latency_ms": 1,
    }


def scored(symbol: str, score: int) -> Score:
    grade = grade_of(score)
    return Score(**doc(symbol), model="score-v1", score=score, grade=grade, factors=["f"], reasoning="r")


def advised(
    symbol: str, action: str, size: float, levels: tuple[Any, Any, Any] = (100.0, 95.0, 110.0)
) -> Advice:
    entry, stop, target = levels
    return Advice(
        **doc(symbol),
        model="advice-v1",
        action=action,  # type: ignore[arg-type]
        entry=entry,
        stop_loss=stop,
        take_profit=target,
        position_size_pct=size,
        horizon_minutes=15,
        reasoning="r",
        limited_by=[],
    )


def signals(*actions: tuple[str, str]) -> list[Signal]:
    return [signal(action, symbol=symbol) for symbol, action in actions]


def report(results: list[SymbolResult], sigs: list[Signal], scores: list[Score], advice: list[Advice]) -> str:
    return builtin.summarize(ReportRequest("c", "0/1", MINUTE, 5.0, results, sigs, scores, advice)).summary


def test_the_report_word_for_word() -> None:
    results = [
        result("BTC/USD"),
        result("ETH/USD"),
        result("LTC/USD"),
        result("XRP/USD"),
        result("ADA/USD"),
        result("DOT/USD"),
        result("SOL/USD", SymbolStatus.FAILED, "timeout: analysis took longer than 10.0s"),
        result("AVAX/USD", SymbolStatus.PAUSED, "paused"),
    ]
    sigs = signals(
        ("BTC/USD", "SELL"), ("ETH/USD", "BUY"), ("LTC/USD", "BUY"), ("XRP/USD", "BUY"), ("ADA/USD", "HOLD")
    )
    scores = [scored("BTC/USD", 65), scored("ETH/USD", 80), scored("LTC/USD", 0)]
    advice = [
        advised("BTC/USD", "SELL", 5.5, (200.0, 210.0, None)),  # no target: no levels shown
        advised("ETH/USD", "BUY", 10),
        advised("LTC/USD", "BUY", 1),
        advised("XRP/USD", "BUY", 2),  # never scored: ranked as 0, after LTC by name
        advised("ADA/USD", "HOLD", 0, (100.0, None, None)),
        advised("DOT/USD", "BUY", 0),  # cut to nothing by the limits: no position
    ]

    got = builtin.summarize(ReportRequest("c", "0/1", MINUTE, 5.0, results, sigs, scores, advice))

    assert (got.analyzer, got.model) == ("builtin", "report-v1")
    assert got.summary.splitlines() == [
        "**Cycle 2026-03-02 12:00 UTC, shard 0/1**: 6 of 7 symbol(s) through every stage.",
        "",
        "Signals: 3 BUY, 1 SELL, 1 HOLD. Advice: 4 position(s), 18.5% exposure.",
        "",
        "| symbol | action | score | size % | entry | stop | target |",
        "|---|---|---|---|---|---|---|",
        "| ETH/USD | BUY | 80 | 10 | 100 | 95 | 110 |",
        "| BTC/USD | SELL | 65 | 5.5 | | | |",
        "| LTC/USD | BUY | 0 | 1 | 100 | 95 | 110 |",
        "| XRP/USD | BUY | - | 2 | 100 | 95 | 110 |",
        "",
        "Not through: SOL/USD failed (timeout: analysis took longer than 10.0s).",
    ]


def test_a_report_of_a_cycle_without_positions_or_trouble_has_no_table_and_no_trouble_line() -> None:
    got = report([result("ETH/USD")], signals(("ETH/USD", "HOLD")), [], [advised("ETH/USD", "HOLD", 0)])

    assert got.splitlines() == [
        "**Cycle 2026-03-02 12:00 UTC, shard 0/1**: 1 of 1 symbol(s) through every stage.",
        "",
        "Signals: 0 BUY, 0 SELL, 1 HOLD. Advice: 0 position(s), 0% exposure.",
    ]


def test_the_report_names_five_symbols_that_did_not_get_through_and_counts_the_rest() -> None:
    five = [result(f"S{i}/USD", SymbolStatus.FAILED, "x") for i in range(5)]
    seven = [result(f"S{i}/USD", SymbolStatus.FAILED, "x") for i in range(7)]

    assert report(five, [], [], []).splitlines()[-1] == (
        "Not through: S0/USD failed (x); S1/USD failed (x); S2/USD failed (x); S3/USD failed (x); "
        "S4/USD failed (x)."
    )
    assert report(seven, [], [], []).splitlines()[-1].endswith("S4/USD failed (x); and 2 more.")


def test_the_trouble_line_is_cut_at_1500_characters() -> None:
    long = [result(f"S{i}/USD", SymbolStatus.FAILED, "y" * 400) for i in range(5)]

    line = report(long, [], [], []).splitlines()[-1]

    assert len(line) == 1500
    assert line.startswith("Not through: S0/USD failed (yyy")


def test_a_position_without_levels_or_a_score_shows_dashes_and_blanks() -> None:
    sigs = signals(("ETH/USD", "SELL"))
    advice = [advised("ETH/USD", "SELL", 3, (100.0, 105.0, None))]

    got = report([result("ETH/USD")], sigs, [], advice)

    assert got.splitlines()[-1] == "| ETH/USD | SELL | - | 3 | | | |"
