"""A deterministic synthetic feed: the same symbol and minute always give the same candles.

Prices follow a few slow sine waves with a symbol-specific phase plus seeded noise per minute,
so trends and reversals occur (the built-in analyzer gives all three actions over time) and any
run can be reproduced offline.
"""

from __future__ import annotations

import math
import random
import zlib
from datetime import datetime, timedelta

from runner.clock import minute_floor
from runner.market.base import Candle

_BASE_PRICES = {"BTC": 65000.0, "ETH": 3100.0, "SOL": 150.0, "DOGE": 0.15}


def _seed(symbol: str) -> int:
    return zlib.crc32(symbol.encode())


def _close(symbol: str, minute_index: int) -> float:
    seed = _seed(symbol)
    base = _BASE_PRICES.get(symbol.split("/")[0], 1.0 + (seed % 5000) / 10.0)
    phase = (seed % 1000) / 1000 * 2 * math.pi
    wave = (
        0.020 * math.sin(minute_index / 47.0 + phase)
        + 0.010 * math.sin(minute_index / 13.0 + 2 * phase)
        + 0.004 * math.sin(minute_index / 5.0 + 3 * phase)
    )
    noise = random.Random(seed * 1_000_003 + minute_index).gauss(0.0, 0.0015)
    return base * math.exp(wave + noise)


class SyntheticSource:
    """Offline candles, deterministic in (symbol, minute)."""

    name = "synthetic"

    async def candles(self, symbol: str, until: datetime, count: int) -> list[Candle]:
        last = minute_floor(until)
        last_index = int(last.timestamp() // 60)
        out: list[Candle] = []
        for offset in range(count - 1, -1, -1):
            index = last_index - offset
            close = _close(symbol, index)
            prev = _close(symbol, index - 1)
            rng = random.Random(_seed(symbol) ^ index)
            spread = abs(close - prev) + close * 0.0008 * rng.random()
            out.append(
                Candle(
                    start=last - timedelta(minutes=offset),
                    open=prev,
                    high=max(prev, close) + spread / 2,
                    low=min(prev, close) - spread / 2,
                    close=close,
                    volume=round(1000 + 500 * rng.random(), 3),
                )
            )
        return out

    async def aclose(self) -> None:
        return None
