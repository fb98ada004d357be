"""Which symbols this run works on: shard parsing, the split, paused symbols and the cap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.config import DEFAULT_SYMBOLS
from runner.errors import ConfigError
from runner.shards import Shard, from_environment, parse_shard, select

symbols_strategy = st.lists(
    st.from_regex(r"[A-Z0-9]{1,6}/[A-Z]{3}", fullmatch=True), min_size=1, max_size=40, unique=True
)


@pytest.mark.parametrize(
    ("text", "index", "count"), [("0/1", 0, 1), ("0/3", 0, 3), ("2/3", 2, 3), ("9/10", 9, 10)]
)
def test_parse_shard_accepts_i_of_n(text: str, index: int, count: int) -> None:
    shard = parse_shard(text)

    assert shard == Shard(index, count)
    assert shard.label == text
    assert shard.key == f"{index}-{count}"


@pytest.mark.parametrize(
    "text", ["3/3", "-1/3", "1/0", "0/0", "0/-2", "a/b", "1", "", "0/3/1", "1.5/3", "/3"]
)
def test_parse_shard_refuses_anything_else(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_shard(text)

    message = str(info.value)
    assert message.startswith("--shard:")
    assert repr(text) in message
    assert "\n" not in message


@given(symbols_strategy, st.integers(min_value=1, max_value=8))
def test_split_is_a_partition_of_the_symbols(symbols: list[str], count: int) -> None:
    shares = [select(symbols, {}, Shard(i, count))[0] for i in range(count)]

    flat = [s for share in shares for s in share]
    assert sorted(flat) == sorted(symbols)  # every symbol on exactly one shard
    assert len(flat) == len(set(flat))


@given(symbols_strategy, st.integers(min_value=1, max_value=8))
def test_a_symbols_shard_does_not_depend_on_the_other_symbols(symbols: list[str], count: int) -> None:
    for sym in symbols:
        alone = [i for i in range(count) if select([sym], {}, Shard(i, count))[0] == [sym]]
        among = [i for i in range(count) if sym in select(symbols, {}, Shard(i, count))[0]]
        assert alone == among
        assert len(alone) == 1


def test_split_is_the_same_every_time() -> None:
    first = [select(DEFAULT_SYMBOLS, {}, Shard(i, 3))[0] for i in range(3)]
    second = [select(list(DEFAULT_SYMBOLS), {}, Shard(i, 3))[0] for i in range(3)]

    assert first == second
    assert all(first)  # 20 symbols over 3 shards: no shard is empty


#: Where known symbols live (CRC-32 of the symbol modulo the count). These must never change: a
#: symbol that moved would be analyzed twice or not at all while shards of two releases run.
KNOWN_SHARDS = {
    3: {"BTC/USD": 0, "ETH/USD": 0, "XRP/USD": 1, "AVAX/USD": 1, "MKR/USD": 2},
    7: {"BTC/USD": 2, "ETH/USD": 1, "SOL/USD": 6, "DOGE/USD": 3, "XRP/USD": 4, "MKR/USD": 0},
}


@pytest.mark.parametrize("count", sorted(KNOWN_SHARDS))
def test_a_known_symbol_lands_on_its_known_shard(count: int) -> None:
    found = {sym: [i for i in range(count) if Shard(i, count).owns(sym)] for sym in KNOWN_SHARDS[count]}

    assert found == {sym: [index] for sym, index in KNOWN_SHARDS[count].items()}


def test_single_shard_owns_everything_in_order() -> None:
    run, paused = select(DEFAULT_SYMBOLS, {}, Shard(0, 1))

    assert run == DEFAULT_SYMBOLS
    assert paused == []


def test_select_removes_paused_symbols_and_keeps_order() -> None:
    candidates = ["ETH/USD", "BTC/USD", "SOL/USD", "DOGE/USD"]

    run, paused = select(candidates, {"BTC/USD": "{}", "DOGE/USD": "{}", "XRP/USD": "{}"}, Shard(0, 1))

    assert run == ["ETH/USD", "SOL/USD"]
    assert paused == ["BTC/USD", "DOGE/USD"]  # only paused symbols that were candidates


def test_select_reports_only_this_shards_paused_symbols() -> None:
    paused_all = dict.fromkeys(DEFAULT_SYMBOLS, "{}")

    reported = [select(DEFAULT_SYMBOLS, paused_all, Shard(i, 4))[1] for i in range(4)]

    assert all(select(DEFAULT_SYMBOLS, paused_all, Shard(i, 4))[0] == [] for i in range(4))
    assert sorted(s for share in reported for s in share) == sorted(DEFAULT_SYMBOLS)


def test_cap_keeps_the_first_symbols() -> None:
    run, _ = select(DEFAULT_SYMBOLS, {}, Shard(0, 1), cap=3)

    assert run == DEFAULT_SYMBOLS[:3]


def test_no_cap_or_zero_cap_keeps_everything() -> None:
    assert select(DEFAULT_SYMBOLS, {}, Shard(0, 1), cap=None)[0] == DEFAULT_SYMBOLS
    assert select(DEFAULT_SYMBOLS, {}, Shard(0, 1), cap=0)[0] == DEFAULT_SYMBOLS


def test_cap_applies_to_this_shards_share() -> None:
    share = select(DEFAULT_SYMBOLS, {}, Shard(1, 2))[0]

    assert select(DEFAULT_SYMBOLS, {}, Shard(1, 2), cap=2)[0] == share[:2]


# The shard from the flag or the environment ---------------------------------------------------


def test_the_flag_wins_over_the_job_completion_index() -> None:
    assert from_environment("1/3", 5, {"JOB_COMPLETION_INDEX": "4"}) == Shard(1, 3)


@pytest.mark.parametrize(("index", "shards"), [("0", 1), ("0", 4), ("3", 4)])
def test_an_indexed_job_is_its_completion_index_of_the_configured_shards(index: str, shards: int) -> None:
    assert from_environment(None, shards, {"JOB_COMPLETION_INDEX": index}) == Shard(int(index), shards)


@pytest.mark.parametrize("environ", [{}, {"JOB_COMPLETION_INDEX": ""}])
def test_one_shard_without_flag_or_index_is_everything(environ: dict[str, str]) -> None:
    assert from_environment(None, 1, environ) == Shard(0, 1)
    assert from_environment("", 1, environ) == Shard(0, 1)


SET_SHARDS = "set RUNNER_SHARDS to the Job's completions"


@pytest.mark.parametrize(
    ("flag", "shards", "environ", "message"),
    [
        ("3/3", 1, {}, "--shard: need 0 <= I < N (got '3/3')"),
        (None, 4, {"JOB_COMPLETION_INDEX": "-1"}, "JOB_COMPLETION_INDEX: must be a whole number (got '-1')"),
        (
            None,
            4,
            {"JOB_COMPLETION_INDEX": "two"},
            "JOB_COMPLETION_INDEX: must be a whole number (got 'two')",
        ),
        (
            None,
            4,
            {"JOB_COMPLETION_INDEX": "4"},
            f"JOB_COMPLETION_INDEX: 4 is not below RUNNER_SHARDS=4; {SET_SHARDS}",
        ),
        (
            None,
            1,
            {"JOB_COMPLETION_INDEX": "1"},
            f"JOB_COMPLETION_INDEX: 1 is not below RUNNER_SHARDS=1; {SET_SHARDS}",
        ),
        (
            None,
            3,
            {},
            "RUNNER_SHARDS: 3 shards need --shard I/N or JOB_COMPLETION_INDEX (got neither)",
        ),
        (
            None,
            2,
            {"JOB_COMPLETION_INDEX": ""},
            "RUNNER_SHARDS: 2 shards need --shard I/N or JOB_COMPLETION_INDEX (got neither)",
        ),
    ],
)
def test_an_impossible_shard_is_a_one_line_config_error(
    flag: str | None, shards: int, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        from_environment(flag, shards, environ)

    assert str(info.value) == message
