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
    if backend == "openai":
        from runner.analyzers.openai import OpenAIAnalyzer

        return OpenAIAnalyzer(settings)
    if backend == "opencode":
        from runner.analyzers.opencode import OpenCodeAnalyzer

        return OpenCodeAnalyzer(settings)
    if backend == "plugin":
        return _plugin(settings)
    raise ConfigError(
        f"autonomous_runner.analyzer.backend: {backend!r} is not available yet (got {backend!r})"
    )


def _plugin(settings: Settings) -> Analyzer:
    """Load ``module:factory`` and call ``factory(settings)``: bring your own analyzer."""
    import importlib

    spec = settings.analyzer.plugin or ""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"autonomous_runner.analyzer.plugin: must look like module:factory (got {spec!r})")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"autonomous_runner.analyzer.plugin: cannot load {spec!r} ({exc})") from None
    analyzer: Analyzer = factory(settings)
    return analyzer


def build_market(settings: Settings) -> CandleSource:
    if settings.market.source == "synthetic":
        from runner.market.synthetic import SyntheticSource

        return SyntheticSource()
    from runner.market.exchange import ExchangeSource

    return ExchangeSource(settings.market.exchange_url, timeout=settings.timeouts.symbol_timeout_seconds)
