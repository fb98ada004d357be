"""Builds what a cycle talks to: the analyzer and the candle source the settings ask for (imports
stay lazy), and ``open_deps``, which opens them with the Redis connection for the CLI and for
``runner serve`` alike and closes them all on the way out.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from runner.analyzers.base import Analyzer, Client
from runner.clock import Clock, SystemClock
from runner.config import Settings, StageSettings
from runner.errors import ConfigError
from runner.market.base import CandleSource
from runner.pipeline.base import Stages
from runner.run import Deps
from runner.store.connection import redis_session
from runner.store.keys import Keys

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
        stages = build_stages(settings)
        stack.push_async_callback(_close_quietly, stages)
        slot_key = Keys.for_settings(settings).fencing
        yield Deps(
            redis=handle.client,
            analyzer=analyzer,
            market=market,
            clock=clock or SystemClock(),
            stages=stages,
            replicas=None if handle.embedded is not None else (lambda: handle.replicas(slot_key)),
        )


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
    analyzer: Analyzer = _load(settings.analyzer.plugin, "analyzer.plugin")(settings)
    return analyzer


def _load(spec: str | None, field: str) -> Any:
    """The callable ``module:name`` names, or a ``ConfigError`` naming ``field``."""
    import importlib

    spec = spec or ""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"autonomous_runner.{field}: must look like module:factory (got {spec!r})")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"autonomous_runner.{field}: cannot load {spec!r} ({exc})") from exc


def build_stages(settings: Settings) -> Stages:
    """The stages after the signal: built in unless ``pipeline.<stage>.backend`` says otherwise."""
    from runner.pipeline import llm

    p = settings.pipeline
    stages = Stages()
    if "score" in p.stages and p.score.backend != "builtin":
        stages.scorer = _plugin_stage(settings, "score", p.score) or llm.scorer(
            _client(settings, "score", p.score), p.score.agent, p.score.tools == "agent"
        )
    if "advise" in p.stages and p.advise.backend != "builtin":
        stages.advisor = _plugin_stage(settings, "advise", p.advise) or llm.advisor(
            _client(settings, "advise", p.advise), p.advise.agent, p.advise.tools == "agent"
        )
    if p.report.enabled and p.report.backend != "builtin":
        stages.reporter = _plugin_stage(settings, "report", p.report) or llm.reporter(
            _client(settings, "report", p.report), p.report.agent, p.report.tools == "agent"
        )
    return stages


def _client(settings: Settings, stage: str, cfg: StageSettings) -> Client:
    field = f"pipeline.{stage}"
    model = cfg.model or settings.analyzer.model
    if cfg.backend == "openai":
        if cfg.tools == "agent":
            raise ConfigError(
                f"autonomous_runner.{field}.tools: 'agent' is for the opencode backend (got 'agent')"
            )
        from runner.analyzers.openai import ChatClient

        return ChatClient(
            settings, model=model, base_url=cfg.base_url or settings.analyzer.base_url, field=f"{field}.model"
        )
    from runner.analyzers.opencode import OpenCodeClient

    return OpenCodeClient(settings, model=model, agent=cfg.agent, field=field)


def _plugin_stage(settings: Settings, stage: str, cfg: StageSettings) -> Any:
    """``pipeline.<stage>.plugin``'s ``factory(settings, stage)``, when the backend is ``plugin``."""
    if cfg.backend != "plugin":
        return None
    return _load(cfg.plugin, f"pipeline.{stage}.plugin")(settings, stage)


def build_market(settings: Settings) -> CandleSource:
    if settings.market.source == "synthetic":
        from runner.market.synthetic import SyntheticSource

        return SyntheticSource()
    from runner.market.exchange import ExchangeSource

    return ExchangeSource(settings.market.exchange_url, timeout=settings.timeouts.symbol_timeout_seconds)
