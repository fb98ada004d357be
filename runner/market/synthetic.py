"""A deterministic synthetic feed: the same symbol and minute always give the same candles.

Prices follow a few slow sine waves with a symbol-specific phase plus seeded noise per minute,
so trends and reversals occur (the built-in analyzer gives all three actions over time) and any
run can be reproduced offline.
"""

from __future__ import annotations

import math
import zlib
from datetime import datetime, timedelta

from runner.clock import minute_floor
from runner.market.base import Candle

_BASE_PRICES = {"BTC": 65000.0, "ETH": 3100.0, "SOL": 150.0, "DOGE": 0.15}


_MASK = (1 << 64) - 1


def _seed(symbol: str) -> int:
    return zlib.crc32(symbol.encode())


def _units(key: int) -> tuple[float, float]:
    """Two uniform numbers in [0, 1) from ``key`` (splitmix64): fast and the same everywhere."""
    x = (key + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    x ^= x >> 31
    return (x >> 32) / 4294967296.0, (x & 0xFFFFFFFF) / 4294967296.0


def _normal(key: int) -> float:
    """A roughly standard-normal number (sum of four uniforms, rescaled to unit variance)."""
    a, b = _units(key)
    c, d = _units(key + 1)
    return (a + b + c + d - 2.0) * 1.7320508075688772


def _close(seed: int, base: float, phase: float, minute_index: int) -> float:
    wave = (
        0.020 * math.sin(minute_index / 47.0 + phase)
        + 0.010 * math.sin(minute_index / 13.0 + 2 * phase)
        + 0.004 * math.sin(minute_index / 5.0 + 3 * phase)
    )
    return base * math.exp(wave + 0.0015 * _normal(seed * 1_000_003 + minute_index * 8))


class SyntheticSource:
    """Offline candles, deterministic in (symbol, minute)."""

    name = "synthetic"

    async def candles(self, symbol: str, until: datetime, count: int) -> list[Candle]:
        last = minute_floor(until)
        last_index = int(last.timestamp() // 60)
        seed = _seed(symbol)
        base = _BASE_PRICES.get(symbol.split("/")[0], 1.0 + (seed % 5000) / 10.0)
        phase = (seed % 1000) / 1000 * 2 * math.pi
        first = last_index - count + 1
        closes = [_close(seed, base, phase, i) for i in range(first - 1, last_index + 1)]
        out: list[Candle] = []
        for k in range(count):
            index = first + k
            prev, close = closes[k], closes[k + 1]
            jitter, size = _units(seed * 7_000_003 + index * 8 + 5)
            spread = abs(close - prev) + close * 0.0008 * jitter
            out.append(
                Candle(
                    start=last - timedelta(minutes=count - 1 - k),
                    open=prev,
                    high=max(prev, close) + spread / 2,
                    low=min(prev, close) - spread / 2,
                    close=close,
                    volume=round(1000 + 500 * size, 3),
                )
            )
        return out

    async def aclose(self) -> None:
        return None
