"""The built-in EMA/RSI analyzer and the deterministic synthetic candle feed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.analyzers.base import AnalysisRequest
from runner.analyzers.builtin import RSI_PERIOD, SLOW, BuiltinAnalyzer, decide, ema, rsi
from runner.errors import InvalidOutput
from runner.market.synthetic import SyntheticSource

MIN_CANDLES = SLOW + RSI_PERIOD
MINUTE = datetime(2026, 11, 23, 14, 5, tzinfo=UTC)


def trend(step: float, n: int = 60, start: float = 100.0, wiggle: float = 2.0) -> list[float]:
    """A trend of ``step`` per bar with an alternating wiggle, so RSI stays out of its extremes."""
    return [start + step * i + (wiggle if i % 2 else 0.0) for i in range(n)]


# ema / rsi -------------------------------------------------------------------------------------


def test_ema_of_a_constant_series_is_constant() -> None:
    assert ema([5.0] * 30, 9) == [5.0] * 30


def test_ema_with_period_one_follows_the_values() -> None:
    values = [1.0, 4.0, 2.0, 8.0]

    assert ema(values, 1) == values


def test_ema_moves_toward_new_values_by_its_weight() -> None:
    out = ema([0.0, 10.0], 9)  # k = 2 / 10

    assert out == pytest.approx([0.0, 2.0])


def test_rsi_extremes() -> None:
    rising = [float(i) for i in range(40)]

    assert rsi(rising) == 100.0
    assert rsi(list(reversed(rising))) == 0.0
    assert rsi([7.0] * 40) == 50.0


def test_rsi_is_between_0_and_100_on_a_wiggly_series() -> None:
    value = rsi(trend(0.5))

    assert 50 < value < 70


# decide ------------------------------------------------------------------------------------------


def test_uptrend_is_a_buy() -> None:
    action, confidence, reasoning = decide(trend(0.5))

    assert action == "BUY"
    assert 0.5 < confidence <= 1.0
    assert "EMA9" in reasoning
    assert "RSI14" in reasoning


def test_downtrend_is_a_sell() -> None:
    action, confidence, _ = decide(trend(-0.5, start=200.0))

    assert action == "SELL"
    assert 0.5 < confidence <= 1.0


def test_overbought_uptrend_is_a_hold() -> None:
    action, confidence, _ = decide([100.0 + i for i in range(60)])  # RSI 100

    assert action == "HOLD"
    assert confidence == 0.5


def test_same_closes_give_the_same_answer() -> None:
    closes = trend(0.3)

    assert decide(closes) == decide(list(closes))


def test_too_few_candles_is_invalid_output() -> None:
    with pytest.raises(InvalidOutput, match=str(MIN_CANDLES)):
        decide(trend(0.5, n=MIN_CANDLES - 1))


def test_exactly_enough_candles_is_an_answer() -> None:
    action, _, _ = decide(trend(0.5, n=MIN_CANDLES))

    assert action in ("BUY", "SELL", "HOLD")


@given(st.lists(st.floats(min_value=0.01, max_value=1e6), min_size=MIN_CANDLES, max_size=120))
def test_any_prices_give_a_valid_action_and_confidence(closes: list[float]) -> None:
    action, confidence, reasoning = decide(closes)

    assert action in ("BUY", "SELL", "HOLD")
    assert 0.0 <= confidence <= 1.0
    assert reasoning


async def test_builtin_analyzer_answers_for_the_requested_symbol() -> None:
    candles = await SyntheticSource().candles("ETH/USD", MINUTE, 100)
    request = AnalysisRequest(symbol="ETH/USD", candles=candles, scheduled_minute=MINUTE, timeout=10)

    analysis = await BuiltinAnalyzer().analyze(request)

    assert analysis.symbol == "ETH/USD"
    assert analysis.analyzer == "builtin"
    assert analysis.price == pytest.approx(candles[-1].close)
    assert 0.0 <= analysis.confidence <= 1.0
    assert analysis == await BuiltinAnalyzer().analyze(request)


async def test_builtin_analyzer_refuses_too_few_candles() -> None:
    candles = await SyntheticSource().candles("ETH/USD", MINUTE, 10)
    request = AnalysisRequest(symbol="ETH/USD", candles=candles, scheduled_minute=MINUTE, timeout=10)

    with pytest.raises(InvalidOutput):
        await BuiltinAnalyzer().analyze(request)


# Synthetic feed ----------------------------------------------------------------------------------


async def test_same_symbol_and_minute_give_the_same_candles() -> None:
    source = SyntheticSource()

    first = await source.candles("BTC/USD", MINUTE, 50)
    again = await SyntheticSource().candles("BTC/USD", MINUTE + timedelta(seconds=42), 50)

    assert first == again


async def test_different_minutes_give_different_candles() -> None:
    source = SyntheticSource()

    now = await source.candles("BTC/USD", MINUTE, 50)
    next_minute = await source.candles("BTC/USD", MINUTE + timedelta(minutes=1), 50)

    assert now != next_minute
    assert now[1:] == next_minute[:-1]  # the window slides by one bar


async def test_different_symbols_give_different_prices() -> None:
    source = SyntheticSource()

    eth = await source.candles("ETH/USD", MINUTE, 5)
    sol = await source.candles("SOL/USD", MINUTE, 5)

    assert [c.close for c in eth] != [c.close for c in sol]


async def test_candles_are_count_consecutive_minutes_ending_at_the_minute() -> None:
    candles = await SyntheticSource().candles("ETH/USD", MINUTE + timedelta(seconds=59, microseconds=5), 30)

    assert len(candles) == 30
    assert candles[-1].start == MINUTE
    assert candles[0].start == MINUTE - timedelta(minutes=29)
    for earlier, later in pairwise(candles):
        assert later.start - earlier.start == timedelta(minutes=1)
        assert later.open == earlier.close
    for c in candles:
        assert c.start.second == 0
        assert c.start.microsecond == 0
        assert c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high
        assert c.volume > 0


async def test_synthetic_feed_gives_every_action_over_a_day() -> None:
    source, actions = SyntheticSource(), set()
    for hour in range(24):
        candles = await source.candles("ETH/USD", MINUTE + timedelta(hours=hour), 100)
        actions.add(decide([c.close for c in candles])[0])

    assert {"BUY", "SELL"} <= actions
