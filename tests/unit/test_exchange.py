"""The exchange candle source on a recorded Kraken OHLC response."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import respx

from runner.errors import TransientError, UnknownSymbol
from runner.market.exchange import ExchangeSource, kraken_pair, parse_ohlc

RECORDED = json.loads((Path(__file__).parent.parent / "data" / "kraken_ohlc_ethusd.json").read_text())
UNTIL = datetime(2026, 11, 23, 15, 47, 30, tzinfo=UTC)


def test_pairs_use_krakens_asset_names() -> None:
    assert kraken_pair("BTC/USD") == "XBTUSD"
    assert kraken_pair("DOGE/USD") == "XDGUSD"
    assert kraken_pair("ETH/USD") == "ETHUSD"


def test_only_committed_candles_up_to_the_scheduled_minute_are_used() -> None:
    candles = parse_ohlc("ETH/USD", RECORDED, UNTIL, 100)
    assert len(candles) == 4  # the still-open 15:47 candle is dropped
    assert candles[-1].start == datetime(2026, 11, 23, 15, 46, tzinfo=UTC)
    assert (candles[0].open, candles[0].close, candles[0].volume) == (3101.10, 3102.01, 12.5)
    assert parse_ohlc("ETH/USD", RECORDED, UNTIL, 2) == candles[-2:]


def test_unknown_pair_is_the_symbols_own_failure() -> None:
    with pytest.raises(UnknownSymbol):
        parse_ohlc("FOO/USD", {"error": ["EQuery:Unknown asset pair"]}, UNTIL, 10)


@respx.mock
async def test_fetches_over_http_and_maps_server_errors() -> None:
    route = respx.get("https://api.kraken.com/0/public/OHLC").mock(
        return_value=httpx.Response(200, json=RECORDED)
    )
    source = ExchangeSource("https://api.kraken.com")
    candles = await source.candles("ETH/USD", UNTIL, 50)
    assert len(candles) == 4
    assert route.calls.last.request.url.params["pair"] == "ETHUSD"
    assert route.calls.last.request.url.params["interval"] == "1"
    respx.get("https://api.kraken.com/0/public/OHLC").mock(return_value=httpx.Response(503, text="down"))
    with pytest.raises(TransientError, match="503"):
        await source.candles("ETH/USD", UNTIL, 50)
    await source.aclose()
