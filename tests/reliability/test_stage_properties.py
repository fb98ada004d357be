"""Scenario 29: property-based tests of the stages' answer checks after the signal
(``runner.pipeline.prompts.validate_score``, ``validate_advice``, ``validate_report``, reached
from the model's text through ``extract_json`` as every LLM client does), and of the risk limits
applied to what they accept. The signal's own parser is scenario 20.

An answer is either a document whose every value is within its schema, or ``InvalidOutput``
with one line saying why; nothing else ever leaves the check.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runner.analyzers.prompt import extract_json
from runner.config import Risk
from runner.errors import InvalidOutput
from runner.models import (
    MAX_FACTOR_CHARS,
    MAX_FACTORS,
    MAX_HORIZON_MINUTES,
    MAX_REASONING_CHARS,
    MAX_REPORT_CHARS,
    AdviceAnswer,
    ReportAnswer,
    ScoreAnswer,
    grade_of,
)
from runner.pipeline import prompts
from runner.pipeline.base import ReportRequest, StageRequest
from runner.pipeline.risk import allocate
from tests.unit.test_pipeline_stages import MINUTE, signal

pytestmark = pytest.mark.scenario("29")

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROVENANCE = {"analyzer": "openai", "model": "m", "requested_model": "m"}
ACTIONS = ("BUY", "SELL", "HOLD")

symbols = st.from_regex(r"[A-Z0-9]{1,6}/[A-Z0-9]{1,4}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
#: Keys a model may add to claim what only code may fill in.
intruders = st.dictionaries(
    st.sampled_from(["analyzer", "model", "cost_usd", "tokens_in", "limited_by", "prompt_hash", "id"]),
    json_values,
    max_size=3,
)


def stage_request(stage: str, symbol: str) -> StageRequest:
    return StageRequest(
        stage=stage,
        symbol=symbol,
        candles=[],
        scheduled_minute=MINUTE,
        timeout=1,
        signal=signal(symbol=symbol),
    )


REPORT_REQUEST = ReportRequest(
    cycle_id="c",
    shard="0/1",
    scheduled_minute=MINUTE,
    timeout=1,
    results=[],
    signals=[],
    scores=[],
    advice=[],
)


def _finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def _text(value: Any, most: int) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= most


def check_score(answer: ScoreAnswer) -> None:
    assert isinstance(answer, ScoreAnswer)
    assert type(answer.score) is int
    assert 0 <= answer.score <= 100
    assert answer.grade == grade_of(answer.score)
    assert len(answer.factors) <= MAX_FACTORS
    assert all(_text(f, MAX_FACTOR_CHARS) for f in answer.factors)
    assert _text(answer.reasoning, MAX_REASONING_CHARS)


def check_advice(answer: AdviceAnswer) -> None:
    assert isinstance(answer, AdviceAnswer)
    assert answer.action in ACTIONS
    for price in (answer.entry, answer.stop_loss, answer.take_profit):
        assert price is None or (_finite(price) and price > 0)
    assert _finite(answer.position_size_pct)
    assert 0 <= answer.position_size_pct <= 100
    assert type(answer.horizon_minutes) is int
    assert 1 <= answer.horizon_minutes <= MAX_HORIZON_MINUTES
    assert _text(answer.reasoning, MAX_REASONING_CHARS)
    assert answer.limited_by == [], "only the risk limits say what cut a size"
    if answer.action == "HOLD":
        assert answer.position_size_pct == 0
    else:
        assert answer.entry is not None
        assert answer.stop_loss is not None
        below = answer.action == "BUY"
        assert (answer.stop_loss < answer.entry) if below else (answer.stop_loss > answer.entry)
        if answer.take_profit is not None:
            assert (answer.take_profit > answer.entry) if below else (answer.take_profit < answer.entry)


def check_report(answer: ReportAnswer) -> None:
    assert isinstance(answer, ReportAnswer)
    assert _text(answer.summary, MAX_REPORT_CHARS)


STAGES = {
    "score": (
        lambda data, symbol: prompts.validate_score(data, stage_request("score", symbol), **PROVENANCE),
        check_score,
    ),
    "advise": (
        lambda data, symbol: prompts.validate_advice(data, stage_request("advise", symbol), **PROVENANCE),
        check_advice,
    ),
    "report": (
        lambda data, symbol: prompts.validate_report(data, REPORT_REQUEST, **PROVENANCE),
        check_report,
    ),
}


def answer_or_reason(stage: str, text: str, symbol: str) -> Any:
    """The model's text through ``extract_json`` and the stage's check: the accepted answer
    (checked against its schema, with our provenance, and serialisable as strict JSON), or the
    one-line reason of ``InvalidOutput``. Any other exception fails the test."""
    validate, check = STAGES[stage]
    try:
        answer = validate(extract_json(text), symbol)
    except InvalidOutput as exc:
        reason = str(exc)
        assert reason.strip(), "a reason is given"
        assert "\n" not in reason
        assert len(reason) <= 300, reason
        return reason
    check(answer)
    assert (answer.analyzer, answer.model) == ("openai", "m"), "provenance comes from us, not the model"
    assert answer.cost_usd is None
    assert answer.tokens_in is None
    json.loads(
        answer.model_dump_json(), parse_constant=_no_constant
    )  # no NaN or Infinity in what is published
    return answer


def _no_constant(name: str) -> Any:
    raise AssertionError(f"{name} in a validated answer")


# Any text, any JSON ---------------------------------------------------------------------------


@SETTINGS
@given(stage=st.sampled_from(sorted(STAGES)), text=st.text(max_size=300), symbol=symbols)
@example(stage="score", text='{"symbol": "ETH/USD", "score": Infinity}', symbol="ETH/USD")
@example(stage="score", text='{"symbol": "ETH/USD", "score": NaN}', symbol="ETH/USD")
@example(stage="advise", text='{"symbol": "ETH/USD", "horizon_minutes": -Infinity}', symbol="ETH/USD")
@example(stage="advise", text='{"symbol": "ETH/USD", "horizon_minutes": NaN}', symbol="ETH/USD")
@example(stage="advise", text='{"symbol": "ETH/USD", "entry": 1e999}', symbol="ETH/USD")
@example(stage="report", text='{"summary": ""}', symbol="ETH/USD")
@example(stage="report", text="```json\n[]\n```", symbol="ETH/USD")
def test_any_text_is_a_valid_answer_or_one_line(stage: str, text: str, symbol: str) -> None:
    """Arbitrary text as the model's answer to the score, advise or report stage: the check
    raises nothing but InvalidOutput (one line), or returns an answer whose every value is in
    its schema (score 0-100 with its grade; prices finite and positive on the right side of the
    entry; a size from 0 to 100, a HOLD's 0; a horizon of 1 minute to a week; bounded texts)."""
    answer_or_reason(stage, text, symbol)


@SETTINGS
@given(stage=st.sampled_from(sorted(STAGES)), value=json_values, symbol=symbols, fenced=st.booleans())
def test_any_json_value_is_a_valid_answer_or_one_line(
    stage: str, value: Any, symbol: str, fenced: bool
) -> None:
    """Arbitrary JSON (NaN and Infinity included, as Python's decoder takes them), bare or in
    a ```json fence: the same guarantee."""
    text = json.dumps(value)
    answer_or_reason(stage, f"```json\n{text}\n```" if fenced else text, symbol)


@SETTINGS
@given(
    stage=st.sampled_from(["score", "advise"]),
    symbol=symbols,
    fields=st.dictionaries(
        st.sampled_from(sorted({*prompts.SCORE_SCHEMA["properties"], *prompts.ADVICE_SCHEMA["properties"]})),
        json_values,
        max_size=11,
    ),
)
def test_objects_with_the_right_keys_and_any_values_are_valid_or_one_line(
    stage: str, symbol: str, fields: dict[str, Any]
) -> None:
    """Objects with the stage's own keys holding any JSON value (the symbol asked for most of
    the time): the same guarantee."""
    if "symbol" not in fields or len(fields) % 2:
        fields["symbol"] = symbol
    answer_or_reason(stage, json.dumps(fields), symbol)


# Near-valid answers: accepted exactly when valid ---------------------------------------------

reasoning = st.text(min_size=1, max_size=40) | st.just("r" * MAX_REASONING_CHARS)
bad_reasoning = st.sampled_from(["", "r" * (MAX_REASONING_CHARS + 1), 5, None, ["r"], {"r": 1}])
MISSING = object()


@st.composite
def good_score(draw: st.DrawFn, symbol: str) -> dict[str, Any]:
    score = draw(st.integers(0, 100))
    factors = st.text(min_size=1, max_size=20) | st.just("f" * MAX_FACTOR_CHARS)
    return {
        "symbol": symbol,
        "score": score,
        "grade": grade_of(score),
        "factors": draw(st.lists(factors, max_size=MAX_FACTORS)),
        "reasoning": draw(reasoning),
    }


def score_mutations(doc: dict[str, Any]) -> st.SearchStrategy[tuple[str, Any]]:
    """(key, a value that makes this answer invalid whatever the rest; MISSING drops the key)."""
    wrong_grade = st.sampled_from([g for g in "ABCD" if g != doc["grade"]])
    return st.one_of(
        st.tuples(
            st.just("symbol"),
            st.sampled_from([doc["symbol"].lower(), "OTHER/USD", "", None, MISSING]).filter(
                lambda v: v != doc["symbol"]
            ),
        ),
        st.tuples(
            st.just("score"),
            st.sampled_from(
                [-1, 101, 50.5, math.nan, math.inf, -math.inf, "50", True, None, MISSING, 10**30]
            ),
        ),
        st.tuples(st.just("grade"), wrong_grade | st.sampled_from(["a", "E", "", None, 1, MISSING])),
        st.tuples(
            st.just("factors"),
            st.sampled_from(
                [
                    ["f"] * (MAX_FACTORS + 1),
                    [""],
                    ["x" * (MAX_FACTOR_CHARS + 1)],
                    [1],
                    [None],
                    "f",
                    None,
                    {"f": 1},
                    MISSING,
                ]
            ),
        ),
        st.tuples(st.just("reasoning"), bad_reasoning | st.just(MISSING)),
    )


@st.composite
def good_advice(draw: st.DrawFn, symbol: str) -> dict[str, Any]:
    action = draw(st.sampled_from(ACTIONS))
    entry = draw(st.floats(1e-3, 1e6))
    nearer, further = draw(st.floats(0.01, 0.99)), draw(st.floats(1.01, 10.0))
    levels = {
        "BUY": (entry, entry * nearer, draw(st.none() | st.just(entry * further))),
        "SELL": (entry, entry * further, draw(st.none() | st.just(entry * nearer))),
        "HOLD": draw(
            st.sampled_from([(None, None, None), (entry, None, None), (entry, entry * nearer, None)])
        ),
    }[action]
    size = 0 if action == "HOLD" else draw(st.floats(0, 100) | st.integers(0, 100))
    return {
        "symbol": symbol,
        "action": action,
        "entry": levels[0],
        "stop_loss": levels[1],
        "take_profit": levels[2],
        "position_size_pct": size,
        "horizon_minutes": draw(st.integers(1, MAX_HORIZON_MINUTES)),
        "reasoning": draw(reasoning),
    }


def advice_mutations(doc: dict[str, Any]) -> st.SearchStrategy[tuple[str, Any]]:
    bad_price = st.sampled_from([-1.0, 0, math.inf, math.nan, "100", True, [1], {"p": 1}])
    options = [
        st.tuples(st.just("symbol"), st.sampled_from(["OTHER/USD", "", None, MISSING]).filter(
            lambda v: v != doc["symbol"])),
        st.tuples(st.just("action"), st.sampled_from(["buy", "Hold", "STRONG_BUY", "", None, 1, MISSING])),
        st.tuples(st.sampled_from(["entry", "stop_loss", "take_profit"]), bad_price),
        st.tuples(st.just("horizon_minutes"), st.sampled_from(
            [0, -5, MAX_HORIZON_MINUTES + 1, 1.5, math.nan, math.inf, "15", True, None, MISSING, 10**30])),
        st.tuples(st.just("reasoning"), bad_reasoning | st.just(MISSING)),
        st.tuples(st.just("position_size_pct"), st.sampled_from(
            [-0.1, 100.1, math.nan, math.inf, "5", True, None, MISSING])),
    ]  # fmt: skip
    entry = doc["entry"]
    if doc["action"] == "HOLD":
        options.append(st.tuples(st.just("position_size_pct"), st.floats(0.001, 100)))
    else:
        wrong = "stop_loss" if doc["action"] == "BUY" else "take_profit"
        options += [
            st.tuples(st.just("entry"), st.just(None)),
            st.tuples(st.just("stop_loss"), st.sampled_from([None, entry])),
            st.tuples(st.just("take_profit"), st.just(entry)),
            # A BUY's stop above its entry, a SELL's take-profit above its entry.
            st.tuples(st.just(wrong), st.just(entry * 2)),
        ]
    return st.one_of(*options)


@st.composite
def near_valid(draw: st.DrawFn, stage: str) -> tuple[str, dict[str, Any], tuple[str, Any] | None]:
    """(symbol asked, an answer, the one change that makes it invalid or None)."""
    symbol = draw(symbols)
    doc = draw(good_score(symbol) if stage == "score" else good_advice(symbol))
    change = draw(st.none() | (score_mutations(doc) if stage == "score" else advice_mutations(doc)))
    if change is not None:
        key, value = change
        if value is MISSING:
            doc.pop(key, None)
        else:
            doc[key] = value
    doc.update(draw(intruders))
    return symbol, doc, change


@SETTINGS
@given(case=near_valid("score"), fenced=st.booleans())
@example(
    case=(
        "ETH/USD",
        {"symbol": "ETH/USD", "score": math.inf, "grade": "A", "factors": [], "reasoning": "r"},
        ("score", math.inf),
    ),
    fenced=False,
)
def test_near_valid_scores_are_accepted_exactly_when_valid(
    case: tuple[str, dict[str, Any], tuple[str, Any] | None], fenced: bool
) -> None:
    """A valid score answer, or one with a single field made wrong (another symbol, a score out
    of 0-100, fractional, NaN or infinite, a string or a bool; a grade that does not match the
    score; too many, empty or overlong factors; empty or overlong reasoning; a key missing),
    with keys the model has no say over (`analyzer`, `cost_usd`, `limited_by`): accepted exactly
    when valid, with the model's values; otherwise one line naming what is wrong."""
    symbol, doc, change = case
    text = json.dumps(doc)
    result = answer_or_reason("score", f"```json\n{text}\n```" if fenced else text, symbol)
    if change is None:
        assert isinstance(result, ScoreAnswer), (doc, result)
        assert (result.score, result.grade, result.factors, result.reasoning) == (
            doc["score"],
            doc["grade"],
            doc["factors"],
            doc["reasoning"],
        )
    else:
        assert isinstance(result, str), (change, result)


@SETTINGS
@given(case=near_valid("advise"))
@example(
    case=(
        "ETH/USD",
        {
            "symbol": "ETH/USD",
            "action": "HOLD",
            "entry": None,
            "stop_loss": None,
            "take_profit": None,
            "position_size_pct": 0,
            "horizon_minutes": math.nan,
            "reasoning": "r",
        },
        ("horizon_minutes", math.nan),
    )
)
def test_near_valid_advice_is_accepted_exactly_when_valid(
    case: tuple[str, dict[str, Any], tuple[str, Any] | None],
) -> None:
    """A valid advice, or one with a single field made wrong (an unknown action; a price that is
    not positive, finite and a number; a stop or a take-profit on the wrong side of the entry or
    missing; a HOLD with a size; a size out of 0-100; a horizon out of a minute to a week, or
    fractional, NaN or infinite; a key missing): accepted exactly when valid, with the model's
    values; otherwise one line naming what is wrong."""
    symbol, doc, change = case
    result = answer_or_reason("advise", json.dumps(doc), symbol)
    if change is None:
        assert isinstance(result, AdviceAnswer), (doc, result)
        assert (result.action, result.entry, result.stop_loss, result.take_profit) == (
            doc["action"],
            doc["entry"],
            doc["stop_loss"],
            doc["take_profit"],
        )
        assert result.position_size_pct == doc["position_size_pct"]
    else:
        assert isinstance(result, str), (change, result)


@SETTINGS
@given(
    summary=st.text(min_size=1, max_size=200) | st.just("s" * MAX_REPORT_CHARS),
    bad=st.none() | st.sampled_from(["", "s" * (MAX_REPORT_CHARS + 1), 5, None, ["s"], {"s": 1}, MISSING]),
    extra=intruders,
)
def test_reports_are_accepted_exactly_when_valid(summary: str, bad: Any, extra: dict[str, Any]) -> None:
    """A report answer with a summary of 1 to 4,000 characters is accepted as it is; an empty,
    overlong, missing or non-text summary is one line."""
    doc: dict[str, Any] = {"summary": summary, **extra}
    if bad is MISSING:
        del doc["summary"]
    elif bad is not None:
        doc["summary"] = bad
    result = answer_or_reason("report", json.dumps(doc), "ETH/USD")
    if bad is None:
        assert isinstance(result, ReportAnswer)
        assert result.summary == summary
    else:
        assert isinstance(result, str), (bad, result)


# What the risk limits make of accepted advice -------------------------------------------------


@SETTINGS
@given(
    docs=st.lists(symbols.flatmap(good_advice), min_size=1, max_size=12, unique_by=lambda d: d["symbol"]),
    scores=st.lists(st.integers(0, 100), min_size=12, max_size=12),
    position=st.floats(0.01, 100),
    total=st.floats(0.01, 100),
    positions=st.integers(1, 20),
)
def test_the_risk_limits_keep_every_accepted_advice_within_them(
    docs: list[dict[str, Any]], scores: list[int], position: float, total: float, positions: int
) -> None:
    """Accepted advice of any size, through the cycle's risk limits (any position cap, total
    exposure and number of positions): every size stays from 0 to its cap, the positions taken
    are at most their number and add up to at most the total, each cut says which limit cut it,
    and what is published is still a valid advice."""
    risk = Risk(max_position_size_pct=position, max_total_exposure_pct=total, max_positions=positions)
    answers = [answer_or_reason("advise", json.dumps(d), d["symbol"]) for d in docs]
    assert all(isinstance(a, AdviceAnswer) for a in answers)
    out = allocate(
        [(d["symbol"], scores[i], a) for i, (d, a) in enumerate(zip(docs, answers, strict=True))], risk
    )
    assert set(out) == {d["symbol"] for d in docs}
    taken = [a for a in out.values() if a.action != "HOLD" and a.position_size_pct > 0]
    assert len(taken) <= positions
    assert sum(a.position_size_pct for a in taken) <= total + 1e-4
    for before, after in zip(answers, (out[d["symbol"]] for d in docs), strict=True):
        # A cut size is rounded to 4 decimals.
        assert 0 <= after.position_size_pct <= min(position, before.position_size_pct) + 1e-4
        if after.position_size_pct < before.position_size_pct - 1e-4:
            assert after.limited_by, "a cut says which limit made it"
        AdviceAnswer.model_validate(after.model_dump())
