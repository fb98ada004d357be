"""Deterministic technical analysis: EMA(9)/EMA(21) trend plus RSI(14), offline.

The default analyzer, so the job runs out of the box. Same candles, same signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from runner.analyzers.base import AnalysisRequest
from runner.errors import InvalidOutput
from runner.models import Action, Analysis

FAST, SLOW, RSI_PERIOD = 9, 21, 14


def ema(values: Sequence[float], period: int) -> list[float]:
    """Exponential moving average, seeded with the first value."""
    k = 2.0 / (period + 1)
    out = [values[0]]
    for v in values[1:]:
        out.append(v * k + out[-1] * (1 - k))
    return out


def rsi(values: Sequence[float], period: int = RSI_PERIOD) -> float:
    """Wilder's relative strength index of the last value, 0..100."""
    gains = losses = 0.0
    deltas = [b - a for a, b in pairwise(values)]
    for d in deltas[:period]:
        gains += max(d, 0.0)
        losses += max(-d, 0.0)
    avg_gain, avg_loss = gains / period, losses / period
    for d in deltas[period:]:
        avg_gain = (avg_gain * (period - 1) + max(d, 0.0)) / period
        avg_loss = (avg_loss * (period - 1) + max(-d, 0.0)) / period
    if avg_loss == 0:
        return 100.0 if avg_gain > 0 else 50.0
    return 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)


def decide(closes: Sequence[float]) -> tuple[Action, float, str]:
    """Action, confidence and reasoning from closing prices (pure)."""
    if len(closes) < SLOW + RSI_PERIOD:
        raise InvalidOutput(f"need at least {SLOW + RSI_PERIOD} candles, got {len(closes)}")
    fast, slow = ema(closes, FAST)[-1], ema(closes, SLOW)[-1]
    strength = rsi(closes)
    spread = (fast - slow) / slow
    action: Action
    if spread > 0 and strength < 70:
        action = "BUY"
    elif spread < 0 and strength > 30:
        action = "SELL"
    else:
        action = "HOLD"
    if action == "HOLD":
        confidence = 0.5
    else:
        trend = min(abs(spread) / 0.01, 1.0)
        room = (70 - strength) / 40 if action == "BUY" else (strength - 30) / 40
        confidence = 0.5 + 0.3 * trend + 0.2 * max(0.0, min(room, 1.0))
    reasoning = (
        f"EMA{FAST} {fast:.6g} vs EMA{SLOW} {slow:.6g} ({spread * 100:+.3f}%), RSI{RSI_PERIOD} {strength:.1f}"
    )
    return action, round(min(confidence, 1.0), 4), reasoning


class BuiltinAnalyzer:
    """EMA cross plus RSI on the request's candles."""

    name = "builtin"
    remote = False

    async def analyze(self, request: AnalysisRequest) -> Analysis:
        closes = [c.close for c in request.candles]
        action, confidence, reasoning = decide(closes)
        return Analysis(
            symbol=request.symbol,
            action=action,
            confidence=confidence,
            reasoning=reasoning,
            price=round(closes[-1], 8),
            analyzer=self.name,
            model="ema-rsi-v1",
        )

    async def aclose(self) -> None:
        return None
