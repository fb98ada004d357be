"""One cycle's metric increments: series names, label escaping, cumulative histogram buckets."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.utils import floatToGoString

from runner.metrics import BUCKETS, Increments, parse_series, series

SYMBOL_BUCKETS = BUCKETS["symbol_processing_duration_seconds"]


def buckets(inc: Increments, name: str, symbol: str | None = None) -> dict[str, float]:
    """``le`` -> count of one histogram's buckets (of one symbol, if given)."""
    out: dict[str, float] = {}
    for key, value in inc.values.items():
        if not key.startswith(f"{name}_bucket{{"):
            continue
        if (symbol is None) != ("symbol=" not in key) or (symbol and f'symbol="{symbol}"' not in key):
            continue
        le = re.search(r'le="([^"]+)"', key)
        assert le is not None, key
        out[le.group(1)] = value
    return out


# Series names ------------------------------------------------------------------------------------


def test_series_without_labels_is_the_name() -> None:
    assert series("cycle_failures_total") == "cycle_failures_total"
    assert series("cycle_failures_total", {}) == "cycle_failures_total"


def test_series_labels_are_sorted() -> None:
    name = series("signal_generation_total", {"symbol": "ETH/USD", "action": "BUY"})

    assert name == 'signal_generation_total{action="BUY",symbol="ETH/USD"}'


def test_series_escapes_backslash_and_quote() -> None:
    name = series("m", {"reason": 'say "hi" \\ bye'})

    assert name == 'm{reason="say \\"hi\\" \\\\ bye"}'


def test_series_escapes_newline() -> None:
    assert series("m", {"symbol": "ETH/USD\n"}) == 'm{symbol="ETH/USD\\n"}'


def test_series_turns_values_into_text() -> None:
    assert series("m", {"shard": 3}) == 'm{shard="3"}'  # type: ignore[dict-item]


label_names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
label_values = st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)))


@given(st.dictionaries(label_names, label_values, max_size=4))
def test_series_names_parse_back_to_their_labels(labels: dict[str, str]) -> None:
    assert parse_series(series("signal_generation_total", labels)) == ("signal_generation_total", labels)


def test_parse_series_refuses_what_is_not_a_series() -> None:
    assert parse_series("not a series") is None
    assert parse_series("last_success") == ("last_success", {})


# Counters ----------------------------------------------------------------------------------------


def test_increments_add_up_per_series() -> None:
    inc = Increments()

    inc.inc("signal_generation_total", {"symbol": "ETH/USD", "action": "BUY"})
    inc.inc("signal_generation_total", {"action": "BUY", "symbol": "ETH/USD"})
    inc.inc("signal_generation_total", {"symbol": "BTC/USD", "action": "SELL"})
    inc.inc("circuit_breaker_rejected_total", {"breaker": "llm_service"}, by=4)

    assert inc.values == {
        'signal_generation_total{action="BUY",symbol="ETH/USD"}': 2.0,
        'signal_generation_total{action="SELL",symbol="BTC/USD"}': 1.0,
        'circuit_breaker_rejected_total{breaker="llm_service"}': 4.0,
    }


# Histograms --------------------------------------------------------------------------------------


def test_one_observation_fills_every_bucket_at_or_above_it() -> None:
    inc = Increments()

    inc.observe("symbol_processing_duration_seconds", 0.3, {"symbol": "ETH/USD"})

    counts = buckets(inc, "symbol_processing_duration_seconds", "ETH/USD")
    assert counts.get("0.1", 0) == 0
    assert counts["0.5"] == 1
    assert counts["30.0"] == 1
    assert counts["+Inf"] == 1
    assert inc.values['symbol_processing_duration_seconds_sum{symbol="ETH/USD"}'] == pytest.approx(0.3)
    assert inc.values['symbol_processing_duration_seconds_count{symbol="ETH/USD"}'] == 1


def test_a_value_equal_to_a_bound_counts_in_that_bucket() -> None:
    inc = Increments()

    inc.observe("symbol_processing_duration_seconds", 1.0)

    counts = buckets(inc, "symbol_processing_duration_seconds")
    assert counts["1.0"] == 1
    assert "0.5" not in counts


def test_a_value_above_every_bound_is_only_in_inf() -> None:
    inc = Increments()

    inc.observe("llm_latency_ms", 45000)

    assert buckets(inc, "llm_latency_ms") == {"+Inf": 1.0}
    assert inc.values["llm_latency_ms_count"] == 1
    assert inc.values["llm_latency_ms_sum"] == 45000


def test_buckets_are_cumulative_and_end_in_count() -> None:
    inc = Increments()
    observed = [0.05, 0.3, 0.3, 7.0, 100.0]

    inc.observe_many("symbol_processing_duration_seconds", observed)

    counts = buckets(inc, "symbol_processing_duration_seconds")
    ordered = [counts.get(floatToGoString(b), 0.0) for b in SYMBOL_BUCKETS] + [counts["+Inf"]]
    assert ordered == sorted(ordered)  # never decreasing
    for bound in SYMBOL_BUCKETS:
        assert counts.get(floatToGoString(bound), 0.0) == sum(1 for v in observed if v <= bound)
    assert counts["+Inf"] == len(observed)
    assert inc.values["symbol_processing_duration_seconds_count"] == len(observed)
    assert inc.values["symbol_processing_duration_seconds_sum"] == pytest.approx(sum(observed))


@pytest.mark.parametrize("name", sorted(BUCKETS))
def test_le_labels_are_formatted_as_prometheus_client_does(name: str) -> None:
    inc = Increments()

    inc.observe(name, 0.0)  # lands in every bucket

    assert set(buckets(inc, name)) == {floatToGoString(b) for b in BUCKETS[name]} | {"+Inf"}


def test_histograms_keep_other_labels_apart() -> None:
    inc = Increments()

    inc.observe("symbol_processing_duration_seconds", 2.0, {"symbol": "ETH/USD"})
    inc.observe("symbol_processing_duration_seconds", 2.0, {"symbol": "BTC/USD"})

    assert inc.values['symbol_processing_duration_seconds_count{symbol="ETH/USD"}'] == 1
    assert inc.values['symbol_processing_duration_seconds_count{symbol="BTC/USD"}'] == 1
    assert inc.values['symbol_processing_duration_seconds_bucket{le="+Inf",symbol="BTC/USD"}'] == 1
