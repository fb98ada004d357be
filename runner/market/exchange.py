"""Candles from a public exchange REST API (Kraken's ``/0/public/OHLC``; no key needed).

Kraken names a few assets its own way (BTC is XBT, DOGE is XDG). The last row Kraken returns is
the still-open minute; only committed candles up to the scheduled minute are used. An unknown
pair is the symbol's own failure (``UnknownSymbol``); network trouble is transient.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from runner.clock import minute_floor
from runner.errors import InvalidOutput, TransientError, UnknownSymbol
from runner.market.base import Candle

KRAKEN_ASSETS = {"BTC": "XBT", "DOGE": "XDG"}


def kraken_pair(symbol: str) -> str:
    base, quote = symbol.split("/")
    return f"{KRAKEN_ASSETS.get(base, base)}{KRAKEN_ASSETS.get(quote, quote)}"


def parse_ohlc(symbol: str, body: Any, until: datetime, count: int) -> list[Candle]:
    """Candles from a Kraken OHLC response body (pure)."""
    if not isinstance(body, dict):
        raise TransientError("exchange answered something that is not a JSON object")
    errors = body.get("error") or []
    if errors:
        text = "; ".join(str(e) for e in errors)[:200]
        if "Unknown asset pair" in text or "Invalid arguments" in text:
            raise UnknownSymbol(f"exchange does not list {symbol}: {text}")
        raise TransientError(f"exchange error: {text}")
    result = body.get("result")
    rows = next((v for k, v in (result or {}).items() if k != "last" and isinstance(v, list)), None)
    if rows is None:
        raise TransientError("exchange response has no candles")
    last_minute = minute_floor(until)
    out: list[Candle] = []
    for row in rows:
        try:
            start = datetime.fromtimestamp(int(row[0]), UTC)
            candle = Candle(start, float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[6]))
        except (TypeError, ValueError, IndexError) as exc:
            raise InvalidOutput(f"exchange returned a malformed candle: {str(row)[:80]}") from exc
        if start < last_minute:
            out.append(candle)
    if not out:
        raise TransientError(f"exchange returned no committed candles for {symbol}")
    return out[-count:]


class ExchangeSource:
    """Kraken's public OHLC endpoint."""

    name = "exchange"

    def __init__(
        self, base_url: str, timeout: float = 5.0, transport: httpx.AsyncBaseTransport | None = None
    ):
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=httpx.Timeout(timeout), transport=transport
        )

    async def candles(self, symbol: str, until: datetime, count: int) -> list[Candle]:
        since = int(minute_floor(until).timestamp()) - (count + 1) * 60
        try:
            response = await self.client.get(
                "/0/public/OHLC", params={"pair": kraken_pair(symbol), "interval": 1, "since": since}
            )
        except httpx.HTTPError as exc:
            raise TransientError(f"exchange unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(f"exchange answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise TransientError(f"exchange answered HTTP {response.status_code} without JSON") from exc
        return parse_ohlc(symbol, body, until, count)

    async def aclose(self) -> None:
        await self.client.aclose()
