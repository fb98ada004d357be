"""A scriptable analyzer for tests and benchmarks: ``FakeAnalyzer(handler)``.

The handler receives each request and returns an ``Analysis`` or raises an ``AnalyzerError``;
it may be a plain or an async function (an async one can ``await asyncio.sleep`` to play latency).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from runner.analyzers.base import AnalysisRequest
from runner.models import Analysis

Handler = Callable[[AnalysisRequest], Analysis | Awaitable[Analysis]]


def hold(request: AnalysisRequest) -> Analysis:
    """A handler that answers HOLD at once."""
    return Analysis(symbol=request.symbol, action="HOLD", confidence=0.5, reasoning="fake", analyzer="fake")


class FakeAnalyzer:
    """Calls ``handler`` for each request and records the requests it saw."""

    name = "fake"

    def __init__(self, handler: Handler = hold, *, remote: bool = False) -> None:
        self.handler = handler
        self.remote = remote
        self.requests: list[AnalysisRequest] = []

    async def analyze(self, request: AnalysisRequest) -> Analysis:
        self.requests.append(request)
        result = self.handler(request)
        if inspect.isawaitable(result):
            return await result
        return result

    async def aclose(self) -> None:
        return None
