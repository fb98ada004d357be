"""A stage's answer holding NaN or Infinity (Python's JSON decoder takes both): one line of
InvalidOutput, never a ValueError or an OverflowError from the checks."""

from __future__ import annotations

import math
from typing import Any

import pytest

from runner.errors import InvalidOutput
from runner.pipeline import prompts
from runner.pipeline.base import StageRequest
from tests.unit.test_pipeline_stages import MINUTE, signal


def request(stage: str) -> StageRequest:
    return StageRequest(
        stage=stage, symbol="ETH/USD", candles=[], scheduled_minute=MINUTE, timeout=1, signal=signal()
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_score_that_is_no_finite_number_is_invalid_output(value: float) -> None:
    data = {"symbol": "ETH/USD", "score": value, "grade": "A", "factors": [], "reasoning": "r"}

    with pytest.raises(InvalidOutput, match=r"^score must be a finite number"):
        prompts.validate_score(data, request("score"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("horizon_minutes", math.nan),
        ("horizon_minutes", math.inf),
        ("entry", math.inf),
        ("position_size_pct", math.nan),
    ],
)
def test_an_advice_number_that_is_no_finite_number_is_invalid_output(name: str, value: float) -> None:
    data: dict[str, Any] = {
        "symbol": "ETH/USD",
        "action": "HOLD",
        "entry": None,
        "stop_loss": None,
        "take_profit": None,
        "position_size_pct": 0,
        "horizon_minutes": 15,
        "reasoning": "r",
        name: value,
    }

    with pytest.raises(InvalidOutput, match=rf"^{name} must be a finite number"):
        prompts.validate_advice(data, request("advise"))
