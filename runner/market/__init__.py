"""Candle sources: market data for prompts and the built-in analyzer."""

from runner.market.base import Candle, CandleSource

__all__ = ["Candle", "CandleSource"]
