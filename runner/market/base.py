"""The candle-source interface."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV bar; ``start`` is the bar's opening minute (UTC)."""

    start: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


class CandleSource(Protocol):
    """Gives the last ``count`` one-minute candles of a symbol up to ``until``."""

    name: str

    async def candles(self, symbol: str, until: datetime, count: int) -> list[Candle]: ...

    async def aclose(self) -> None: ...
