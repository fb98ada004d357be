"""A plugin stage (score or advise) the CLI tests load with ``RUNNER_PIPELINE__<STAGE>__BACKEND=plugin``
and ``RUNNER_PIPELINE__<STAGE>__PLUGIN=tests.support.scripted_stage:make``.

It answers as the built-in stage does, unless the environment says otherwise:

* ``SCRIPTED_STAGE_LOG``: a file each started answer appends ``<symbol>\\n`` to
* ``SCRIPTED_STAGE_GATE``: a file each answer waits for (after logging its start)
* ``SCRIPTED_STAGE_GARBAGE``: comma-separated symbols (or ``*``) whose answer is garbage: a
  malformed object that goes through the real validator of the LLM stages, so the stage fails
  with ``invalid_output`` exactly as a model answering it would
* ``SCRIPTED_STAGE_HANG``: comma-separated symbols (or ``*``) whose answer never comes: the
  stage's timeout ends it
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from runner.models import AdviceAnswer, ScoreAnswer
from runner.pipeline import prompts
from runner.pipeline.base import StageRequest
from runner.pipeline.builtin import BuiltinAdvisor, BuiltinScorer

#: What a model answering garbage sends, per stage: each is wrong in its own way.
GARBAGE: dict[str, list[Any]] = {
    "score": [
        {"score": "ninety", "grade": "A", "factors": [], "reasoning": "x"},
        {"score": 85, "grade": "D", "factors": ["f"], "reasoning": "grade does not match"},
        {"score": 140, "grade": "A", "factors": ["f"], "reasoning": "out of range"},
        ["not", "an", "object"],
    ],
    "advise": [
        {"action": "BUY", "entry": 100, "stop_loss": 120, "take_profit": 130, "position_size_pct": 5,
         "horizon_minutes": 15, "reasoning": "stop above entry"},
        {"action": "YOLO", "entry": 100, "stop_loss": None, "take_profit": None, "position_size_pct": 0,
         "horizon_minutes": 15, "reasoning": "unknown action"},
        {"action": "HOLD", "entry": None, "stop_loss": None, "take_profit": None, "position_size_pct": 0,
         "horizon_minutes": 0, "reasoning": "horizon 0"},
        "no json here",
    ],
}  # fmt: skip


def _listed(name: str, symbol: str) -> bool:
    chosen = {s for s in os.environ.get(name, "").split(",") if s}
    return symbol in chosen or "*" in chosen


def _exists(path: str) -> bool:
    return os.path.exists(path)


class ScriptedStage:
    remote = False

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.name = f"scripted-{stage}"
        self.builtin: Any = BuiltinScorer() if stage == "score" else BuiltinAdvisor()

    async def answer(self, request: StageRequest) -> ScoreAnswer | AdviceAnswer:
        log_path = os.environ.get("SCRIPTED_STAGE_LOG")
        if log_path:
            with open(log_path, "a", encoding="utf-8") as fh:  # noqa: ASYNC230 - a tiny local write
                fh.write(request.symbol + "\n")
        gate = os.environ.get("SCRIPTED_STAGE_GATE")
        while gate and not _exists(gate):  # noqa: ASYNC110 - another process creates the file
            await asyncio.sleep(0.01)
        if _listed("SCRIPTED_STAGE_HANG", request.symbol):
            await asyncio.Event().wait()  # until the stage's timeout cancels it
        if _listed("SCRIPTED_STAGE_GARBAGE", request.symbol):
            options = GARBAGE[self.stage]
            data = options[sum(map(ord, request.symbol + request.cycle_id)) % len(options)]
            if isinstance(data, dict):
                data = {"symbol": request.symbol, **data}
            validate = prompts.validate_score if self.stage == "score" else prompts.validate_advice
            answer: ScoreAnswer | AdviceAnswer = validate(
                data, request, analyzer=self.name, model="garbage-1"
            )
            raise AssertionError(f"the validator accepted garbage: {data!r} -> {answer!r}")
        result: ScoreAnswer | AdviceAnswer = await self.builtin.answer(request)
        return result

    async def aclose(self) -> None:
        return None


def make(settings: Any, stage: str) -> ScriptedStage:
    return ScriptedStage(stage)
