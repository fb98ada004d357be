"""Outcomes: signals scored as they mature, checked against a calculation done here, on cycles over
simulated minutes (a frozen clock, the synthetic feed) against fakeredis and a real redis-server;
and the scorecard's arithmetic."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runner.analyzers.builtin import BuiltinAnalyzer
from runner.clock import FrozenClock
from runner.config import Settings
from runner.cycle import Deps, run_cycle
from runner.errors import ConfigError
from runner.market.synthetic import SyntheticSource
from runner.outcomes import Filters, calibration, days_with_data, merge, parse_since, rows, summaries
from runner.store.keys import Keys
from tests.unit.test_cycle import make_settings

KEYS = Keys()
START = datetime(2026, 3, 2, 12, 0, 5, tzinfo=UTC)
SYMBOLS = ["ETH/USD", "BTC/USD"]
FEE = 0.001  # 10 bp


def settings(**overrides: Any) -> Settings:
    return make_settings(outcomes={"horizons_minutes": [1, 3]}, **overrides)


async def minutes(redis: Any, count: int, *, symbols: Any = None, cfg: Settings | None = None) -> FrozenClock:
    """Run one cycle a minute for ``count`` minutes; ``symbols(i)`` picks each minute's symbols."""
    clock = FrozenClock(START)
    for i in range(count):
        chosen = symbols(i) if symbols else SYMBOLS
        await run_cycle(
            cfg or settings(), Deps(redis, BuiltinAnalyzer(), SyntheticSource(), clock), symbols=chosen
        )
        clock.advance(60)
    return clock


async def close_at(symbol: str, minute: datetime) -> float:
    """The synthetic feed's close of ``minute``, asked for on its own."""
    return (await SyntheticSource().candles(symbol, minute, 1))[-1].close


async def expected(redis: Any, horizons: list[int], last: datetime) -> list[dict[str, Any]]:
    """Every outcome that should exist by ``last``, computed here from the published signals."""
    out = []
    for _, fields in await redis.xrange(KEYS.stream):
        signal = json.loads(fields["signal"])
        minute = datetime.fromisoformat(signal["id"].split(":", 1)[1] + ":00+00:00")
        for h in horizons:
            if minute + timedelta(minutes=h) > last:
                continue
            entry = await close_at(signal["symbol"], minute)
            exit_ = await close_at(signal["symbol"], minute + timedelta(minutes=h))
            r = exit_ / entry - 1
            hit = {"BUY": r > FEE, "SELL": r < -FEE, "HOLD": abs(r) <= FEE}[signal["action"]]
            out.append({"id": f"{signal['id']}:{h}m", "action": signal["action"], "r": r, "hit": hit, "h": h})
    return sorted(out, key=lambda o: o["id"])


async def written(redis: Any) -> list[dict[str, Any]]:
    return sorted(
        (json.loads(f["doc"]) for _, f in await redis.xrange(KEYS.outcomes_stream)), key=lambda d: d["id"]
    )


async def test_outcomes_match_a_calculation_done_independently(any_redis: Any) -> None:
    await minutes(any_redis, 6)
    last = START.replace(second=0) + timedelta(minutes=5)

    want = await expected(any_redis, [1, 3], last)
    got = await written(any_redis)

    assert [d["id"] for d in got] == [w["id"] for w in want]
    assert len(got) == 2 * (5 + 3)  # per symbol: minutes 0-4 at 1 m, minutes 0-2 at 3 m
    for d, w in zip(got, want, strict=True):
        assert d["return"] == pytest.approx(w["r"], rel=1e-9)
        assert d["hit"] is w["hit"]
        assert d["horizon_minutes"] == w["h"]
        assert d["signal_id"] == d["id"].rsplit(":", 1)[0]
        assert d["model"] == "ema-rsi-v1"


async def test_the_scorecard_adds_up_to_the_outcomes(any_redis: Any) -> None:
    await minutes(any_redis, 6)
    docs = await written(any_redis)
    day = START.replace(hour=0, minute=0, second=0)

    totals = merge([await any_redis.hgetall(KEYS.outcome_day(day))])
    table = rows(totals)

    for row in table:
        mine = [
            d
            for d in docs
            if (d["symbol"], d["action"], d["horizon_minutes"])
            == (row.symbol, row.action, row.horizon_minutes)
        ]
        own = [{"BUY": d["return"], "SELL": -d["return"], "HOLD": 0.0}[d["action"]] for d in mine]
        assert row.count == len(mine)
        assert row.hits == sum(d["hit"] for d in mine)
        assert row.mean_return == pytest.approx(sum(own) / len(mine))
        assert row.buy_and_hold_return == pytest.approx(sum(d["return"] for d in mine) / len(mine))
        assert row.brier == pytest.approx(sum((d["confidence"] - d["hit"]) ** 2 for d in mine) / len(mine))
    assert sum(r.count for r in table) == len(docs)


async def test_a_rerun_in_the_same_minute_writes_no_outcome_twice(any_redis: Any) -> None:
    clock = await minutes(any_redis, 4)
    before = await written(any_redis)
    clock.advance(-60 + 20)  # back into the last minute run
    await run_cycle(settings(), Deps(any_redis, BuiltinAnalyzer(), SyntheticSource(), clock), symbols=SYMBOLS)

    assert await written(any_redis) == before


async def test_a_symbol_not_run_when_its_signal_matured_is_scored_by_a_later_cycle(any_redis: Any) -> None:
    # ETH/USD runs at minute 0, is left out at minutes 1-2, runs again at 3.
    await minutes(any_redis, 4, symbols=lambda i: SYMBOLS if i in (0, 3) else ["BTC/USD"])

    eth = [d for d in await written(any_redis) if d["symbol"] == "ETH/USD"]

    assert sorted(d["id"] for d in eth) == ["ETH/USD:2026-03-02T12:00:1m", "ETH/USD:2026-03-02T12:00:3m"]
    one = next(d for d in eth if d["horizon_minutes"] == 1)
    # Lua encodes numbers with 14 significant digits.
    assert one["exit_price"] == pytest.approx(
        await close_at("ETH/USD", START.replace(second=0) + timedelta(minutes=1)), rel=1e-13
    )


async def test_a_signal_whose_later_candle_is_gone_is_unscored_never_guessed(any_redis: Any) -> None:
    cfg = settings(market={"candles": 35})
    clock = FrozenClock(START)
    deps = Deps(any_redis, BuiltinAnalyzer(), SyntheticSource(), clock)
    await run_cycle(cfg, deps, symbols=["ETH/USD"])
    clock.advance(60 * 40)  # the window of 35 candles no longer reaches minute 1 or 3
    await run_cycle(cfg, deps, symbols=["ETH/USD"])

    ids = [d["id"] for d in await written(any_redis)]
    totals = await any_redis.hgetall(KEYS.outcome_totals)

    assert not any(i.startswith("ETH/USD:2026-03-02T12:00") for i in ids)
    unscored = {k: v for k, v in totals.items() if k.endswith("|unscored")}
    assert sorted(k.split("|")[3] for k in unscored) == ["1", "3"]
    counters = await any_redis.hgetall(KEYS.counters("0-1"))
    assert float(counters['signal_outcomes_total{horizon="1",result="unscored"}']) == 1


async def test_a_dry_run_scores_nothing(any_redis: Any) -> None:
    clock = FrozenClock(START)
    for _ in range(3):
        await run_cycle(
            settings(),
            Deps(any_redis, BuiltinAnalyzer(), SyntheticSource(), clock),
            symbols=SYMBOLS,
            dry_run=True,
        )
        clock.advance(60)

    assert await any_redis.keys("*") == []


async def test_outcomes_can_be_switched_off(any_redis: Any) -> None:
    await minutes(any_redis, 3, cfg=make_settings(outcomes={"enabled": False}))

    assert (
        await any_redis.exists(KEYS.outcomes_stream, KEYS.outcome_totals, KEYS.outcome_pending("ETH/USD"))
        == 0
    )


# The scorecard's arithmetic -------------------------------------------------------------------------


def test_rows_are_means_per_signal_with_buy_and_hold_beside() -> None:
    totals = {
        "ETH/USD|m|BUY|5|count": 4.0,
        "ETH/USD|m|BUY|5|hits": 3.0,
        "ETH/USD|m|BUY|5|return": 0.02,
        "ETH/USD|m|BUY|5|hold_return": 0.02,
        "ETH/USD|m|BUY|5|brier": 0.5,
        "ETH/USD|m|BUY|5|cost": 0.03,
        "ETH/USD|m|SELL|5|count": 2.0,
        "ETH/USD|m|SELL|5|return": -0.01,
        "ETH/USD|m|SELL|5|hold_return": 0.01,
        "ETH/USD|m|SELL|5|unscored": 1.0,
        "cal|ETH/USD|m|5|7|count": 4.0,
        "all|ETH/USD|5|count": 6.0,
    }

    buy, sell = rows(totals)

    assert (buy.action, buy.count, buy.hits, buy.hit_rate) == ("BUY", 4, 3, 0.75)
    assert buy.mean_return == pytest.approx(0.005)
    assert buy.brier == pytest.approx(0.125)
    assert buy.cost_per_hit == pytest.approx(0.01)
    assert (sell.hit_rate, sell.unscored, sell.cost_per_hit) == (0.0, 1, None)
    assert sell.buy_and_hold_return == pytest.approx(0.005)
    (summary,) = summaries(totals, {("ETH/USD", "m"): 2})
    assert summary.count == 6
    assert summary.hit_rate == pytest.approx(0.5)
    assert summary.mean_return == pytest.approx(0.01 / 6)
    assert summary.buy_and_hold_return == pytest.approx(0.03 / 6)
    assert summary.beats_buy_and_hold is False
    assert summary.signals_per_day == 3.5  # 6 scored + 1 unscored over 2 days


def test_filters_pick_symbol_model_and_horizon() -> None:
    totals = {"A/USD|m1|BUY|5|count": 1.0, "A/USD|m2|BUY|5|count": 1.0, "B/USD|m1|BUY|15|count": 1.0}

    assert [(r.symbol, r.model) for r in rows(totals, Filters(symbol="A/USD"))] == [
        ("A/USD", "m1"),
        ("A/USD", "m2"),
    ]
    assert [r.model for r in rows(totals, Filters(model="m2"))] == ["m2"]
    assert [r.horizon_minutes for r in rows(totals, Filters(horizon=15))] == [15]


def test_calibration_is_hit_rate_per_confidence_decile() -> None:
    totals = {"cal|A/USD|m|5|7|count": 10.0, "cal|A/USD|m|5|7|hits": 7.0, "cal|B/USD|m|5|2|count": 4.0}

    got = calibration(totals)

    assert [(c.decile, c.count, c.hits, c.hit_rate) for c in got] == [(2, 4, 0, 0.0), (7, 10, 7, 0.7)]
    assert (got[1].confidence_from, got[1].confidence_to) == (0.7, 0.8)
    assert [c.decile for c in calibration(totals, Filters(symbol="A/USD"))] == [7]


def test_days_add_up_and_count_where_each_symbol_had_data() -> None:
    day1 = {"A/USD|m|BUY|5|count": "2", "cal|A/USD|m|5|1|count": "2"}
    day2 = {"A/USD|m|BUY|5|count": "3", "B/USD|m|SELL|5|count": "1", "bad": "x"}

    assert merge([day1, day2])["A/USD|m|BUY|5|count"] == 5
    assert days_with_data([day1, day2]) == {("A/USD", "m"): 2, ("B/USD", "m"): 1}


@pytest.mark.parametrize(("text", "days"), [("7d", 7), ("2w", 14), ("all", 92), ("365d", 92), ("1d", 1)])
def test_since_is_a_number_of_days(text: str, days: int) -> None:
    assert parse_since(text, 92) == days


@pytest.mark.parametrize("text", ["", "7", "0d", "7h", "-1d", "x"])
def test_a_bad_since_is_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match="--since: must look like 7d, 2w or all"):
        parse_since(text, 92)


async def test_the_hit_ratio_per_symbol_and_horizon_is_exported(any_redis: Any) -> None:
    from prometheus_client import generate_latest

    from runner.cycle import Exports

    pushed: list[Any] = []
    clock = FrozenClock(START)
    for _ in range(3):
        deps = Deps(any_redis, BuiltinAnalyzer(), SyntheticSource(), clock)
        await run_cycle(settings(), deps, symbols=SYMBOLS, exports=Exports(on_metrics=pushed.append))
        clock.advance(60)
    text = generate_latest(pushed[-1]).decode()
    docs = await written(any_redis)

    for symbol in SYMBOLS:
        mine = [d for d in docs if d["symbol"] == symbol and d["horizon_minutes"] == 1]
        ratio = sum(d["hit"] for d in mine) / len(mine)
        assert f'signal_outcome_hit_ratio{{horizon="1",symbol="{symbol}"}} {ratio}' in text
    assert "signal_outcomes_total{" in text


def test_every_figure_of_a_row_and_a_summary_is_the_one_its_fields_give() -> None:
    totals = {
        "ETH/USD|m|BUY|5|count": 4.0,
        "ETH/USD|m|BUY|5|hits": 2.0,
        "ETH/USD|m|BUY|5|return": 0.04,
        "ETH/USD|m|BUY|5|hold_return": 0.04,
        "ETH/USD|m|BUY|5|brier": 1.0,
        "ETH/USD|m|BUY|5|cost": 0.5,
    }

    (row,) = rows(totals)
    (summary,) = summaries(totals, {("ETH/USD", "m"): 2})

    assert row.as_dict() == {
        "symbol": "ETH/USD",
        "model": "m",
        "action": "BUY",
        "horizon_minutes": 5,
        "count": 4,
        "hits": 2,
        "hit_rate": 0.5,
        "mean_return": 0.01,
        "buy_and_hold_return": 0.01,
        "brier": 0.25,
        "unscored": 0,
        "cost_usd": 0.5,
        "cost_per_hit": 0.25,
    }
    # Following the signals returned exactly what holding did: that does not beat it.
    assert summary.as_dict() == {
        "symbol": "ETH/USD",
        "model": "m",
        "horizon_minutes": 5,
        "count": 4,
        "hit_rate": 0.5,
        "mean_return": 0.01,
        "buy_and_hold_return": 0.01,
        "beats_buy_and_hold": False,
        "brier": 0.25,
        "signals_per_day": 2.0,
        "cost_per_hit": 0.25,
    }


def test_a_summary_beats_buy_and_hold_only_by_returning_more() -> None:
    more = {"A/USD|m|BUY|5|count": 2.0, "A/USD|m|BUY|5|return": 0.03, "A/USD|m|BUY|5|hold_return": 0.01}

    (summary,) = summaries(more, {})

    assert summary.beats_buy_and_hold is True
    assert summary.signals_per_day is None, "no day with data: no rate per day"


def test_free_signals_have_no_cost_per_hit_and_unscored_ones_no_rates() -> None:
    totals = {
        "A/USD|m|BUY|5|count": 2.0,
        "A/USD|m|BUY|5|hits": 1.0,
        "B/USD|m|SELL|5|unscored": 3.0,
    }

    free_row, unscored_row = rows(totals)
    free, unscored = summaries(totals, {("B/USD", "m"): 3})

    assert (free_row.cost_usd, free_row.cost_per_hit) == (0.0, None)
    assert free.cost_per_hit is None
    assert (unscored_row.count, unscored_row.unscored, unscored_row.hit_rate, unscored_row.brier) == (
        0,
        3,
        None,
        None,
    )
    assert (unscored.count, unscored.hit_rate, unscored.mean_return, unscored.beats_buy_and_hold) == (
        0,
        None,
        None,
        None,
    )
    assert unscored.signals_per_day == 1.0, "3 unscored signals over 3 days"


def test_fields_of_another_shape_are_left_out_of_rows_and_summaries() -> None:
    totals = {
        "A/USD|m|BUY|soon|count": 9.0,  # a horizon that is not a number
        "A/USD|m|BUY|count": 9.0,  # too few parts
        "A/USD|m|BUY|5|count|x": 9.0,  # too many
        "A/USD|m|BUY|5|bogus": 9.0,  # not a stat
        "cal|A/USD|m|5|count": 9.0,  # the calibration table's and every model's tallies are no rows
        "all|A/USD|m|5|count": 9.0,
        "A/USD|m|BUY|5|count": 2.0,
    }

    assert [(r.symbol, r.model, r.action, r.horizon_minutes, r.count) for r in rows(totals)] == [
        ("A/USD", "m", "BUY", 5, 2)
    ]
    assert [(s.symbol, s.count) for s in summaries(totals, {})] == [("A/USD", 2)]


def test_calibration_counts_deciles_0_to_9_across_symbols_and_leaves_out_the_rest() -> None:
    totals = {
        "cal|A/USD|m|5|x|count": 9.0,  # a decile that is not a number
        "bad|A/USD|m|5|3|count": 9.0,  # not the calibration table
        "cal|A/USD|m|5|3|brier": 9.0,  # not a calibration stat
        "cal|A/USD|m|5|3|count|x": 9.0,
        "cal|A/USD|m|5|10|count": 9.0,  # no decile 10
        "cal|A/USD|m|5|-1|count": 9.0,
        "cal|A/USD|m|5|0|count": 2.0,
        "cal|A/USD|m|5|0|hits": 1.0,
        "cal|A/USD|m|5|9|count": 5.0,
        "cal|A/USD|m|5|9|hits": 4.0,
        "cal|B/USD|m|5|9|count": 3.0,
        "cal|B/USD|m|5|9|hits": 2.0,
    }

    got = calibration(totals)

    assert [c.as_dict() for c in got] == [
        {"decile": 0, "confidence_from": 0.0, "confidence_to": 0.1, "count": 2, "hits": 1, "hit_rate": 0.5},
        {"decile": 9, "confidence_from": 0.9, "confidence_to": 1.0, "count": 8, "hits": 6, "hit_rate": 0.75},
    ]


def test_calibration_filters_by_model_and_horizon() -> None:
    totals = {"cal|A/USD|m1|5|7|count": 1.0, "cal|A/USD|m2|5|8|count": 1.0, "cal|A/USD|m1|15|6|count": 1.0}

    assert [c.decile for c in calibration(totals, Filters(model="m2"))] == [8]
    assert [c.decile for c in calibration(totals, Filters(horizon=15))] == [6]


def test_unreadable_values_are_left_out_wherever_they_come() -> None:
    assert merge([{"bad": "x", "a": "1.5", "none": None}, {"a": "2"}]) == {"a": 3.5}
    # A field whose every value is unreadable is no row of zeros.
    assert rows(merge([{"A/USD|m|BUY|5|count": "x"}])) == []


def test_a_day_with_several_actions_of_one_model_is_one_day_of_it() -> None:
    day = {"A/USD|m|BUY|5|count": "2", "A/USD|m|SELL|5|count": "1", "A/USD|m|BUY|15|count": "2"}

    assert days_with_data([day, day]) == {("A/USD", "m"): 2}
