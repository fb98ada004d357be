"""Builds what a cycle talks to: the analyzer and the candle source the settings ask for (imports
stay lazy), and ``open_deps``, which opens them with the Redis connection for the CLI and for
``runner serve`` alike and closes them all on the way out.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from runner.analyzers.base import Analyzer
from runner.clock import Clock, SystemClock
from runner.config import Settings
from runner.errors import ConfigError
from runner.market.base import CandleSource
from runner.run import Deps
from runner.store.connection import redis_session

log = logging.getLogger(__name__)


class _Closable(Protocol):
    async def aclose(self) -> None: ...


@contextlib.asynccontextmanager
async def open_deps(settings: Settings, clock: Clock | None = None) -> AsyncIterator[Deps]:
    """Redis, the analyzer and the candle source, closed in reverse order on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        handle = await stack.enter_async_context(redis_session(settings))
        if handle.embedded is not None:
            log.info("using %s; set REDIS_URL to use a server", handle.description)
        analyzer = build_analyzer(settings)
        stack.push_async_callback(_close_quietly, analyzer)
        market = build_market(settings)
        stack.push_async_callback(_close_quietly, market)
        yield Deps(redis=handle.client, analyzer=analyzer, market=market, clock=clock or SystemClock())


async def _close_quietly(resource: _Closable) -> None:
    try:
        await resource.aclose()
    except Exception as exc:  # closing is best effort: the cycle's outcome is already decided
        log.debug("closing %r failed: %s", resource, exc)


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
        raise ConfigError(f"autonomous_runner.analyzer.plugin: cannot load {spec!r} ({exc})") from exc
    analyzer: Analyzer = factory(settings)
    return analyzer


def build_market(settings: Settings) -> CandleSource:
    if settings.market.source == "synthetic":
        from runner.market.synthetic import SyntheticSource

        return SyntheticSource()
    from runner.market.exchange import ExchangeSource

    return ExchangeSource(settings.market.exchange_url, timeout=settings.timeouts.symbol_timeout_seconds)
