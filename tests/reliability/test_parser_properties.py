"""Scenario 20: property-based tests of the analyzer-output parser
(``runner.analyzers.prompt.parse_answer`` / ``validate_answer``)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runner.analyzers.base import AnalysisRequest
from runner.analyzers.prompt import parse_answer, validate_answer
from runner.errors import InvalidOutput
from runner.models import MAX_REASONING_CHARS, Analysis

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ACTIONS = ("BUY", "SELL", "HOLD")
PROVENANCE = {"analyzer": "openai", "model": "m", "requested_model": "m"}

symbols = st.from_regex(r"[A-Z0-9]{1,6}/[A-Z0-9]{1,4}", fullmatch=True)


def request_for(symbol: str) -> AnalysisRequest:
    return AnalysisRequest(
        symbol=symbol, candles=[], scheduled_minute=datetime(2026, 1, 1, tzinfo=UTC), timeout=1
    )


def check_valid(result: Analysis, symbol: str) -> None:
    """What any accepted answer must satisfy."""
    assert isinstance(result, Analysis)
    assert result.symbol == symbol
    assert result.action in ACTIONS
    assert isinstance(result.confidence, float)
    assert math.isfinite(result.confidence)
    assert 0.0 <= result.confidence <= 1.0
    assert isinstance(result.reasoning, str)
    assert 1 <= len(result.reasoning) <= MAX_REASONING_CHARS
    assert result.price is None or (math.isfinite(result.price) and result.price > 0)
    assert (result.analyzer, result.model) == ("openai", "m"), "provenance comes from us, not the model"
    assert result.cost_usd is None
    assert result.tokens_in is None


def parse_or_invalid(text: str, symbol: str) -> Analysis | None:
    """parse_answer, allowing only InvalidOutput as a failure."""
    try:
        result = parse_answer(text, request_for(symbol), **PROVENANCE)
    except InvalidOutput:
        return None
    check_valid(result, symbol)
    return result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)

bad_action = st.sampled_from(["buy", "Hold", "STRONG_BUY", "", "NONE"]) | st.none() | st.integers()
#: Values for each field, valid and not, tagged with whether they are valid.
good_confidence = st.floats(min_value=0, max_value=1) | st.sampled_from([0, 1])
bad_confidence = (
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not 0 <= x <= 1)
    | st.booleans()
    | st.text(max_size=5)
    | st.none()
    | st.lists(st.integers(), max_size=2)
)
good_reasoning = st.text(min_size=1, max_size=60) | st.just("r" * MAX_REASONING_CHARS)
bad_reasoning = (
    st.just("")
    | st.just("r" * (MAX_REASONING_CHARS + 1))
    | st.integers()
    | st.none()
    | st.lists(st.text(), max_size=2)
)
good_price = st.none() | st.floats(min_value=1e-9, max_value=1e12) | st.integers(min_value=1, max_value=10**9)
#: Prices that are wrong but of a JSON number type (or the wrong container type).
bad_price = (
    st.floats(max_value=0) | st.integers(max_value=0) | st.just(float("inf")) | st.just(float("nan"))
    | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)  # fmt: skip


def field(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[bool, Any]]:
    return st.tuples(st.just(True), good) | st.tuples(st.just(False), bad)


@st.composite
def answers(
    draw: st.DrawFn, bad_prices: st.SearchStrategy[Any] = bad_price
) -> tuple[str, dict[str, Any], bool]:
    """(symbol asked, the decoded answer, whether the contract says it is valid)."""
    asked = draw(symbols)
    other = draw(symbols.filter(lambda s: s != asked))
    bad_symbol = st.sampled_from([other, asked.lower(), asked + " ", ""]).filter(lambda v: v != asked)
    fields: dict[str, tuple[bool, Any]] = {
        "symbol": draw(field(st.just(asked), bad_symbol)),
        "action": draw(field(st.sampled_from(ACTIONS), bad_action)),
        "confidence": draw(field(good_confidence, bad_confidence)),
        "reasoning": draw(field(good_reasoning, bad_reasoning)),
        "price": draw(field(good_price, bad_prices)),
    }  # fmt: skip
    doc = {k: v for k, (_, v) in fields.items()}
    missing = draw(st.sets(st.sampled_from(sorted(doc)), max_size=2))
    for k in missing:
        del doc[k]
    if draw(st.booleans()):
        doc.update(
            draw(
                st.dictionaries(
                    st.sampled_from(["analyzer", "model", "cost_usd", "order", "tools"]),
                    json_values,
                    max_size=3,
                )
            )
        )
    valid = all(ok for k, (ok, _) in fields.items() if k not in missing) and not (missing - {"price"})
    return asked, doc, valid


@pytest.mark.scenario("20")
@SETTINGS
@given(text=st.text(max_size=300), symbol=symbols)
@example(text="", symbol="ETH/USD")
@example(text="HOLD", symbol="ETH/USD")
@example(
    text='{"symbol": "ETH/USD", "action": "HOLD", "confidence": NaN, "reasoning": "r"}', symbol="ETH/USD"
)
@example(text='```json\n{"symbol": "ETH/USD", "action": "HOLD"}\n```', symbol="ETH/USD")
@example(text="1" * 5000, symbol="ETH/USD")
def test_any_text_is_an_analysis_in_range_or_invalid_output(text: str, symbol: str):
    """Arbitrary text: `parse_answer` raises nothing but InvalidOutput, or returns an Analysis
    for the symbol asked whose fields are all in range (action in BUY/SELL/HOLD, finite confidence
    in [0, 1], bounded reasoning, positive price or none) with our provenance."""
    parse_or_invalid(text, symbol)


@pytest.mark.scenario("20")
@SETTINGS
@given(value=json_values, symbol=symbols, fenced=st.booleans())
def test_any_json_value_is_an_analysis_in_range_or_invalid_output(value: Any, symbol: str, fenced: bool):
    """Arbitrary JSON documents (nested lists, objects, numbers, strings), bare or in a ```json
    fence: the same guarantee."""
    text = json.dumps(value)
    parse_or_invalid(f"```json\n{text}\n```" if fenced else text, symbol)


@pytest.mark.scenario("20")
@SETTINGS
@given(case=answers(), fenced=st.booleans(), pad=st.sampled_from(["", " ", "\n\t"]))
def test_near_valid_answers_are_accepted_exactly_when_valid(
    case: tuple[str, dict[str, Any], bool], fenced: bool, pad: str
):
    """Answers built field by field from valid and invalid values (wrong or missing symbol,
    unknown action, confidence out of range, NaN, a bool or a string, empty or unbounded
    reasoning, non-positive or infinite price, extra keys such as `order` or `cost_usd`): accepted
    exactly when every field is valid (a missing price is none), and then with the model's values
    and our provenance; otherwise InvalidOutput, so an invalid answer never becomes a HOLD."""
    asked, doc, valid = case
    text = pad + json.dumps(doc) + pad
    if fenced:
        text = f"```json\n{text}\n```"
    result = parse_or_invalid(text, asked)
    if valid:
        assert result is not None, doc
        assert (result.action, result.confidence, result.reasoning) == (
            doc["action"],
            doc["confidence"],
            doc["reasoning"],
        )
        assert result.price == doc.get("price")
    else:
        assert result is None, (doc, result)


@pytest.mark.scenario("20")
@SETTINGS
@given(data=json_values.filter(lambda v: not isinstance(v, dict)), symbol=symbols)
def test_validate_answer_rejects_anything_but_an_object(data: Any, symbol: str):
    """`validate_answer` on a decoded value that is not a JSON object: InvalidOutput."""
    with pytest.raises(InvalidOutput):
        validate_answer(data, request_for(symbol), **PROVENANCE)


@pytest.mark.scenario("20")
@SETTINGS
@given(case=answers(bad_prices=st.sampled_from([True, "100", " 5 ", "1e3"])))
def test_price_of_the_wrong_type_is_invalid_output(case: tuple[str, dict[str, Any], bool]):
    """The same property with prices of the wrong JSON type (`true`, `"100"`): accepted only if
    valid, never a HOLD from an invalid answer."""
    asked, doc, valid = case
    result = parse_or_invalid(json.dumps(doc), asked)
    assert (result is not None) == valid, (doc, result)


@pytest.mark.scenario("20")
@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000])
def test_deeply_nested_json_is_invalid_output(text: str):
    """100000 nested arrays or 50000 nested objects: InvalidOutput, like any other bad answer."""
    parse_or_invalid(text, "ETH/USD")
