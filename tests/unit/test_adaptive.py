"""Latency window, adaptive concurrency and timeout, and backpressure."""

from __future__ import annotations

import pytest

from runner.adaptive import (
    FUTURE_TOLERANCE_SECONDS,
    Backpressure,
    Sample,
    after_cycle,
    after_skip_for_cooldown,
    parse_samples,
    percentile,
    plan,
    recent,
)
from runner.config import Adaptive, Parallel, Timeouts

CFG = Adaptive()
PARALLEL = Parallel()
TIMEOUTS = Timeouts()
NOW = 1_800_000_000.0


# Percentile (the specification's: sorted[min(int(n * q), n - 1)]) ---------------------------


def test_percentile_of_nothing_is_zero() -> None:
    assert percentile([], 0.95) == 0.0


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([1234.0], 0.95) == 1234.0
    assert percentile([1234.0], 0.99) == 1234.0


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([float(v) for v in range(1, 11)], 0.95, 10.0),  # int(9.5) = 9 -> the 10th value
        ([float(v) for v in range(1, 11)], 0.5, 6.0),  # int(5.0) = 5 -> the 6th value
        ([float(v) for v in range(1, 21)], 0.95, 20.0),  # int(19.0) = 19
        ([float(v) for v in range(1, 101)], 0.95, 96.0),  # int(95.0) = 95
        ([float(v) for v in range(1, 101)], 0.99, 100.0),
        ([float(v) for v in range(1, 5)], 0.0, 1.0),
    ],
)
def test_percentile_is_the_specifications_nearest_rank(
    values: list[float], q: float, expected: float
) -> None:
    assert percentile(values, q) == expected


def test_percentile_sorts_its_input() -> None:
    assert percentile([9000.0, 100.0, 200.0, 300.0], 0.5) == 300.0


def test_the_hundredth_percentile_is_the_largest_value() -> None:
    assert percentile([3.0, 1.0, 2.0], 1.0) == 3.0


# Samples and the window ------------------------------------------------------------------------


def test_parse_samples_reads_epoch_and_ms_and_drops_garbage() -> None:
    samples = parse_samples([f"{NOW}:1500", "garbage", f"{NOW - 5}:abc", ":", f"{NOW - 10}:900.5"])

    assert samples == [Sample(NOW, 1500.0), Sample(NOW - 10, 900.5)]


def test_recent_drops_samples_older_than_max_age() -> None:
    cfg = Adaptive(sample_max_age_seconds=60)
    samples = [Sample(NOW - 10, 1.0), Sample(NOW - 60, 2.0), Sample(NOW - 61, 3.0)]

    assert recent(samples, NOW, cfg) == [1.0, 2.0]


def test_recent_keeps_samples_up_to_the_future_tolerance_and_drops_later_ones() -> None:
    edge = NOW + FUTURE_TOLERANCE_SECONDS
    samples = [Sample(edge, 1.0), Sample(edge + 0.001, 2.0), Sample(NOW, 3.0)]

    assert recent(samples, NOW, CFG) == [1.0, 3.0]


def test_recent_caps_at_the_window_size_keeping_the_newest() -> None:
    cfg = Adaptive(latency_window_size=3)
    samples = [Sample(NOW - i, float(i)) for i in range(10)]  # newest first

    assert recent(samples, NOW, cfg) == [0.0, 1.0, 2.0]


def test_recent_counts_the_window_after_ageing() -> None:
    cfg = Adaptive(latency_window_size=2, sample_max_age_seconds=30)
    samples = [Sample(NOW - 100, 1.0), Sample(NOW - 5, 2.0), Sample(NOW - 200, 3.0), Sample(NOW - 6, 4.0)]

    assert recent(samples, NOW, cfg) == [2.0, 4.0]


# The plan --------------------------------------------------------------------------------------


def test_normal_latency_runs_at_full_concurrency_and_base_timeout() -> None:
    p = plan([1000.0] * 10, CFG, PARALLEL, TIMEOUTS)

    assert p.concurrency == 10
    assert p.symbol_timeout == 10
    assert not p.high_latency
    assert not p.skip
    assert p.samples == 10


def test_no_samples_is_normal() -> None:
    p = plan([], CFG, PARALLEL, TIMEOUTS)

    assert (p.concurrency, p.symbol_timeout, p.p95_ms, p.skip) == (10, 10, 0.0, False)


def test_high_p95_halves_concurrency_and_stretches_the_timeout() -> None:
    p = plan([8500.0] * 10, CFG, PARALLEL, TIMEOUTS)

    assert p.high_latency
    assert p.p95_ms == 8500
    assert p.concurrency == 5
    assert p.symbol_timeout == 15  # 10 * 1.5, also the cap
    assert not p.skip


def test_p95_exactly_at_threshold_is_not_high() -> None:
    assert not plan([8000.0] * 10, CFG, PARALLEL, TIMEOUTS).high_latency


def test_halved_concurrency_never_goes_below_min_concurrent() -> None:
    p = plan([8500.0] * 10, CFG, Parallel(max_concurrent=4, min_concurrent=3), TIMEOUTS)

    assert p.concurrency == 3


@pytest.mark.parametrize(("max_concurrent", "halved"), [(5, 2), (7, 3), (1, 1)])
def test_halving_an_odd_max_concurrent_rounds_down_to_a_whole_number(
    max_concurrent: int, halved: int
) -> None:
    p = plan([8500.0] * 10, CFG, Parallel(max_concurrent=max_concurrent, min_concurrent=1), TIMEOUTS)

    assert p.concurrency == halved
    assert type(p.concurrency) is int


def test_min_concurrent_above_max_is_capped_at_max() -> None:
    p = plan([8500.0] * 10, CFG, Parallel(max_concurrent=2, min_concurrent=3), TIMEOUTS)

    assert p.concurrency == 2


def test_min_concurrent_equal_to_max_keeps_max() -> None:
    p = plan([8500.0] * 10, CFG, Parallel(max_concurrent=3, min_concurrent=3), TIMEOUTS)

    assert p.concurrency == 3


def test_stretched_timeout_is_capped_at_symbol_timeout_max() -> None:
    stretched = plan([8500.0] * 10, CFG, PARALLEL, Timeouts(symbol_timeout_seconds=8))
    capped = plan(
        [8500.0] * 10, CFG, PARALLEL, Timeouts(symbol_timeout_seconds=12, symbol_timeout_max_seconds=15)
    )

    assert stretched.symbol_timeout == 12
    assert capped.symbol_timeout == 15


def test_high_p99_skips_the_cycle() -> None:
    p = plan([1000.0] * 9 + [9500.0], CFG, PARALLEL, TIMEOUTS)

    assert p.p99_ms == 9500
    assert p.skip


def test_p99_at_threshold_does_not_skip() -> None:
    assert not plan([1000.0] * 9 + [9000.0], CFG, PARALLEL, TIMEOUTS).skip


def test_p99_of_a_long_window_is_not_its_slowest_sample() -> None:
    # 200 samples: p99 is the 199th value; only the 200th is slow.
    cfg = Adaptive(latency_window_size=200)

    p = plan([1000.0] * 199 + [9500.0], cfg, PARALLEL, TIMEOUTS)

    assert p.p99_ms == 1000
    assert not p.skip


def test_the_plan_reports_both_percentiles_and_the_sample_count() -> None:
    latencies = [float(v) for v in range(100, 1100, 10)]  # 100 samples: 100, 110, ..., 1090

    p = plan(latencies, CFG, PARALLEL, TIMEOUTS)

    assert (p.p95_ms, p.p99_ms, p.samples) == (1050.0, 1090.0, 100)


def test_skip_and_slow_down_are_judged_separately() -> None:
    # 100 samples: p95 is the 96th value (fast), p99 the 100th (very slow).
    p = plan([1000.0] * 98 + [9500.0] * 2, CFG, PARALLEL, TIMEOUTS)

    assert p.p95_ms == 1000
    assert p.skip
    assert not p.high_latency
    assert p.concurrency == PARALLEL.max_concurrent


def test_high_latency_skip_stops_once_the_samples_age_out() -> None:
    cfg = Adaptive(sample_max_age_seconds=600)
    samples = [Sample(NOW - i, 9500.0) for i in range(10)]

    while_fresh = plan(recent(samples, NOW, cfg), cfg, PARALLEL, TIMEOUTS)
    much_later = plan(recent(samples, NOW + 700, cfg), cfg, PARALLEL, TIMEOUTS)

    assert while_fresh.skip
    assert not much_later.skip
    assert much_later.samples == 0
    assert much_later.concurrency == PARALLEL.max_concurrent


# Backpressure ------------------------------------------------------------------------------------


def test_overruns_below_the_limit_build_a_streak() -> None:
    bp, cooling = after_cycle(Backpressure(), True, CFG)
    bp, cooling2 = after_cycle(bp, True, CFG)

    assert bp == Backpressure(consecutive_overruns=2, cooldown_remaining=0)
    assert not cooling
    assert not cooling2


def test_max_overruns_in_a_row_start_a_cooldown() -> None:
    bp = Backpressure()
    started = []
    for _ in range(CFG.backpressure_max_overruns):
        bp, cooling = after_cycle(bp, True, CFG)
        started.append(cooling)

    assert started == [False, False, True]
    assert bp == Backpressure(consecutive_overruns=0, cooldown_remaining=CFG.cooldown_cycles)


def test_a_cycle_without_overrun_resets_the_streak() -> None:
    bp, _ = after_cycle(Backpressure(consecutive_overruns=2), False, CFG)
    bp, cooling = after_cycle(bp, True, CFG)

    assert bp.consecutive_overruns == 1
    assert not cooling


def test_a_clean_cycle_does_not_cancel_a_cooldown() -> None:
    bp, cooling = after_cycle(Backpressure(cooldown_remaining=2), False, CFG)

    assert bp == Backpressure(0, 2)
    assert not cooling


def test_a_cooldown_of_one_cycle_starts() -> None:
    cfg = Adaptive(backpressure_max_overruns=1, cooldown_cycles=1)

    bp, cooling = after_cycle(Backpressure(), True, cfg)

    assert cooling
    assert bp == Backpressure(consecutive_overruns=0, cooldown_remaining=1)


def test_an_overrun_below_the_limit_keeps_the_cooldown_it_found() -> None:
    bp, cooling = after_cycle(Backpressure(consecutive_overruns=1, cooldown_remaining=2), True, CFG)

    assert bp == Backpressure(consecutive_overruns=2, cooldown_remaining=2)
    assert not cooling


def test_zero_cooldown_cycles_never_start_a_cooldown() -> None:
    cfg = Adaptive(cooldown_cycles=0)
    bp = Backpressure()
    for _ in range(5):
        bp, cooling = after_cycle(bp, True, cfg)
        assert not cooling

    assert bp.cooldown_remaining == 0


def test_each_skipped_cycle_counts_the_cooldown_down_to_zero() -> None:
    bp = Backpressure(cooldown_remaining=2)

    bp = after_skip_for_cooldown(bp)
    assert bp.cooldown_remaining == 1
    bp = after_skip_for_cooldown(bp)
    assert bp.cooldown_remaining == 0
    bp = after_skip_for_cooldown(bp)
    assert bp.cooldown_remaining == 0


def test_backpressure_fields_round_trip() -> None:
    bp = Backpressure(consecutive_overruns=2, cooldown_remaining=1)

    assert Backpressure.from_fields(bp.to_fields()) == bp
    assert Backpressure.from_fields({}) == Backpressure()


@pytest.mark.parametrize(
    "fields", [{"consecutive_overruns": "-1"}, {"cooldown_remaining": "x"}, {"cooldown_remaining": "-2"}]
)
def test_garbage_backpressure_raises_value_error(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"."):
        Backpressure.from_fields(fields)


def test_negative_backpressure_counters_are_named_in_the_error() -> None:
    # The message reaches the operator in the "unreadable (...); reset" warning.
    with pytest.raises(ValueError, match=r"^negative backpressure counters$"):
        Backpressure.from_fields({"consecutive_overruns": "0", "cooldown_remaining": "-1"})
