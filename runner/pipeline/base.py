"""The stage interface: one async method, ``answer(request)``, as analyzers have ``analyze``.

A stage receives the symbol's market data and every earlier stage's output and returns its
validated answer, or raises the ``AnalyzerError`` family (``runner.errors``) as analyzers do:
transient errors are retried by the cycle, ``InvalidOutput`` is the symbol's failure. A stage
never turns a failure into a default answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from runner.market.base import Candle
from runner.models import Advice, AdviceAnswer, ReportAnswer, Score, ScoreAnswer, Signal, SymbolResult


@dataclass(frozen=True)
class StageRequest:
    """Everything a score or advise stage needs for one symbol."""

    stage: str
    symbol: str
    candles: list[Candle]
    scheduled_minute: datetime
    #: Seconds this attempt may take (the cycle enforces it too).
    timeout: float
    signal: Signal
    #: The published score, for the advise stage (None when the pipeline has no score stage).
    score: Score | None = None
    cycle_id: str = ""
    attempt: int = 1


@dataclass(frozen=True)
class ReportRequest:
    """What the report stage summarizes: the cycle's results and what it published."""

    cycle_id: str
    shard: str
    scheduled_minute: datetime
    timeout: float
    results: list[SymbolResult]
    signals: list[Signal]
    scores: list[Score]
    advice: list[Advice]


class Scorer(Protocol):
    """Answers the score stage."""

    name: str
    #: Whether each call costs an external request (a rate-limit slot, the breaker, the budget).
    remote: bool

    async def answer(self, request: StageRequest) -> ScoreAnswer: ...

    async def aclose(self) -> None: ...


class Advisor(Protocol):
    """Answers the advise stage (the risk limits are applied afterwards, in code)."""

    name: str
    remote: bool

    async def answer(self, request: StageRequest) -> AdviceAnswer: ...

    async def aclose(self) -> None: ...


class Reporter(Protocol):
    """Writes the cycle's summary."""

    name: str
    remote: bool

    async def answer(self, request: ReportRequest) -> ReportAnswer: ...

    async def aclose(self) -> None: ...


def _builtin_scorer() -> Scorer:
    from runner.pipeline.builtin import BuiltinScorer

    return BuiltinScorer()


def _builtin_advisor() -> Advisor:
    from runner.pipeline.builtin import BuiltinAdvisor

    return BuiltinAdvisor()


def _builtin_reporter() -> Reporter:
    from runner.pipeline.builtin import BuiltinReporter

    return BuiltinReporter()


@dataclass
class Stages:
    """Who answers each stage after the signal (the built-in ones unless told otherwise).
    Which stages run is the settings' ``pipeline.stages`` and ``pipeline.report``."""

    scorer: Scorer = field(default_factory=_builtin_scorer)
    advisor: Advisor = field(default_factory=_builtin_advisor)
    reporter: Reporter = field(default_factory=_builtin_reporter)

    @property
    def remote(self) -> bool:
        return any(s.remote for s in (self.scorer, self.advisor, self.reporter))

    async def aclose(self) -> None:
        for stage in (self.scorer, self.advisor, self.reporter):
            await stage.aclose()
