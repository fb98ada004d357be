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
            topology=lambda: handle.describe(slot_key),
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
    wanted = {"score": "score" in p.stages, "advise": "advise" in p.stages, "report": p.report.enabled}
    configs: dict[str, StageSettings] = {"score": p.score, "advise": p.advise, "report": p.report}
    built: dict[str, Any] = {}
    for name, cfg in configs.items():
        if wanted[name] and cfg.backend != "builtin":
            built[name] = _plugin_stage(settings, name, cfg) or llm.stage(
                _client(settings, name, cfg), name, cfg.agent, cfg.tools == "agent"
            )
    stages = Stages()
    stages.scorer = built.get("score", stages.scorer)
    stages.advisor = built.get("advise", stages.advisor)
    stages.reporter = built.get("report", stages.reporter)
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
