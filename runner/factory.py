"""Builds the analyzer and the candle source the settings ask for (imports stay lazy)."""

from __future__ import annotations

from runner.analyzers.base import Analyzer
from runner.config import Settings
from runner.errors import ConfigError
from runner.market.base import CandleSource


def build_analyzer(settings: Settings) -> Analyzer:
    backend = settings.analyzer.backend
    if backend == "builtin":
        from runner.analyzers.builtin import BuiltinAnalyzer

        return BuiltinAnalyzer()
    raise ConfigError(
        f"autonomous_runner.analyzer.backend: {backend!r} is not available yet (got {backend!r})"
    )


def build_market(settings: Settings) -> CandleSource:
    if settings.market.source == "synthetic":
        from runner.market.synthetic import SyntheticSource

        return SyntheticSource()
    raise ConfigError("autonomous_runner.market.source: 'exchange' is not available yet (got 'exchange')")
