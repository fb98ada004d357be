"""The analyzer interface, and the question an LLM client answers.

An analyzer implements one method, ``analyze(request) -> Analysis``. It raises only the
``AnalyzerError`` family (``runner.errors``): transient errors are retried by the cycle, permanent
ones are not, ``InvalidOutput`` is the symbol's failure. It never turns a failure into a HOLD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from runner.market.base import Candle
from runner.models import Analysis


@dataclass(frozen=True)
class AnalysisRequest:
    """Everything an analyzer needs for one symbol."""

    symbol: str
    candles: list[Candle]
    scheduled_minute: datetime
    #: Seconds this attempt may take (the cycle enforces it too).
    timeout: float
    cycle_id: str = ""
    attempt: int = 1
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Ask:
    """One question to an LLM: instructions, the delimited data, the JSON schema of the answer."""

    system: str
    user: str
    schema: dict[str, Any]
    schema_name: str
    #: Seconds the whole call may take.
    timeout: float
    #: A short title for the conversation (OpenCode names its session with it).
    title: str = ""
    #: The OpenCode agent to ask; None: the client's own.
    agent: str | None = None
    #: Let the agent use the tools its own config grants (OpenCode); else only the answer tool.
    agent_tools: bool = False


@dataclass(frozen=True)
class Reply:
    """The decoded JSON answer (not yet validated) and where it came from (analyzer, model,
    requested_model, prompt_hash, tokens_in, tokens_out, cost_usd)."""

    data: Any
    provenance: dict[str, Any]


class Client(Protocol):
    """An LLM backend: answers one ``Ask`` with a ``Reply``, or raises an ``AnalyzerError``."""

    name: str

    async def ask(self, ask: Ask) -> Reply: ...

    async def aclose(self) -> None: ...


class Analyzer(Protocol):
    """Turns one symbol's market context into an analysis."""

    name: str
    #: Whether each call costs an external request (and so takes a rate-limit slot).
    remote: bool

    async def analyze(self, request: AnalysisRequest) -> Analysis: ...

    async def aclose(self) -> None: ...


def check_symbol(request: AnalysisRequest, analysis: Analysis) -> Analysis:
    """Reject an answer about another symbol than the one asked for."""
    from runner.errors import InvalidOutput

    if analysis.symbol != request.symbol:
        raise InvalidOutput(f"answer is about {analysis.symbol!r}, asked for {request.symbol!r}")
    return analysis
