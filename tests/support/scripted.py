"""A plugin analyzer the CLI tests load with ``RUNNER_ANALYZER__BACKEND=plugin``.

Its behaviour comes from environment variables, so a test can make a real ``runner cycle``
subprocess slow, failing or wrong:

* ``SCRIPTED_GATE``: a file each analysis waits for before it answers: the run stays busy
  until the test creates the file (``tests.integration.helpers.Gate``), however slow the machine
* ``SCRIPTED_GATE_<BASE>``: the same for one symbol (``SCRIPTED_GATE_ETH``); empty: no gate
* ``SCRIPTED_DELAY``: seconds each analysis takes (default 0); only for latency that must be at
  least this long, or to shape load where the verdict holds whichever way a race goes
* ``SCRIPTED_DELAY_<BASE>``: the same for one symbol (``SCRIPTED_DELAY_ETH``)
* ``SCRIPTED_FAIL``: comma-separated symbols that fail; ``SCRIPTED_FAIL_KIND``: transient
  (default), invalid, auth or permanent
* ``SCRIPTED_ACTION``: the action to answer (default HOLD)
* ``SCRIPTED_LOG``: a file to which each started analysis appends ``<symbol>\\n``
* ``SCRIPTED_GATE``: a file each analysis waits for (after logging its start), so a test can
  hold several runs inside their analysis at once and release them together
* ``SCRIPTED_COST``: the cost in USD each answer reports (counts toward the daily budget)
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from runner.analyzers.base import AnalysisRequest
from runner.errors import AuthError, InvalidOutput, PermanentError, TransientError
from runner.models import Analysis


class ScriptedAnalyzer:
    name = "scripted"
    remote = False

    async def analyze(self, request: AnalysisRequest) -> Analysis:
        base = request.symbol.split("/")[0]
        log_path = os.environ.get("SCRIPTED_LOG")
        if log_path:
            _append(log_path, request.symbol + "\n")
        gate = os.environ.get(f"SCRIPTED_GATE_{base}", os.environ.get("SCRIPTED_GATE", ""))
        # The gate is a file another process creates: no asyncio.Event reaches across, and a
        # cancelled analysis (deadline, SIGTERM) stops polling at once.
        while gate and not _exists(gate):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        delay = float(os.environ.get(f"SCRIPTED_DELAY_{base}", os.environ.get("SCRIPTED_DELAY", "0")))
        if delay:
            await asyncio.sleep(delay)
        failing = {s for s in os.environ.get("SCRIPTED_FAIL", "").split(",") if s}
        if request.symbol in failing or "*" in failing:
            kind = os.environ.get("SCRIPTED_FAIL_KIND", "transient")
            if kind == "invalid":
                raise InvalidOutput("confidence 7 is not in [0, 1]")
            if kind == "auth":
                raise AuthError("401 invalid API key")
            if kind == "permanent":
                raise PermanentError("400 bad request")
            raise TransientError("503 service unavailable")
        return Analysis(
            symbol=request.symbol,
            action=os.environ.get("SCRIPTED_ACTION", "HOLD"),  # type: ignore[arg-type]
            confidence=0.5,
            reasoning=f"scripted answer for {request.symbol}",
            price=100.0,
            analyzer=self.name,
            model="scripted-1",
            cost_usd=float(os.environ["SCRIPTED_COST"]) if os.environ.get("SCRIPTED_COST") else None,
        )

    async def aclose(self) -> None:
        return None


def _append(path: str, line: str) -> None:
    # A tiny local write; blocking the loop for it is fine in a test plugin.
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def make(settings: Any) -> ScriptedAnalyzer:
    return ScriptedAnalyzer()
