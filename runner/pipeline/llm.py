"""Stages answered by an LLM client (``openai`` or ``opencode``): a prompt, a schema, a validator.

Each call goes through the same cycle machinery as the signal's (timeouts, retries, the shared
rate limit, the daily budget, the ``llm_service`` breaker); this module only asks and checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from runner.analyzers.base import Ask, Client
from runner.models import AdviceAnswer, ReportAnswer, ScoreAnswer
from runner.pipeline import prompts
from runner.pipeline.base import ReportRequest, StageRequest

Req = TypeVar("Req", bound=StageRequest | ReportRequest)
Ans = TypeVar("Ans", bound=ScoreAnswer | AdviceAnswer | ReportAnswer)


class LLMStage(Generic[Req, Ans]):
    """One stage through one client: build the question, ask, validate the answer."""

    remote = True

    def __init__(
        self,
        client: Client,
        *,
        stage: str,
        system: str,
        schema: dict[str, Any],
        prompt: Callable[[Req], str],
        validate: Callable[..., Ans],
        agent: str | None = None,
        agent_tools: bool = False,
        title: Callable[[Req], str],
    ) -> None:
        self.client = client
        self.name = client.name
        self.stage = stage
        self.system = system
        self.schema = schema
        self.prompt: Callable[[Req], str] = prompt
        self.validate: Callable[..., Ans] = validate
        self.agent = agent
        self.agent_tools = agent_tools
        self.title: Callable[[Req], str] = title

    async def answer(self, request: Req) -> Ans:
        ask = Ask(
            self.system,
            self.prompt(request),
            self.schema,
            f"trading_{self.stage}",
            request.timeout,
            title=self.title(request),
            agent=self.agent,
            agent_tools=self.agent_tools,
        )
        reply = await self.client.ask(ask)
        return self.validate(reply.data, request, **reply.provenance)

    async def aclose(self) -> None:
        await self.client.aclose()


def _symbol_title(request: StageRequest) -> str:
    title = f"{request.stage} {request.symbol} {request.scheduled_minute:%Y-%m-%dT%H:%M}Z"
    if request.cycle_id:
        title += f" cycle {request.cycle_id}"
    return title + (f" attempt {request.attempt}" if request.attempt > 1 else "")


def _report_title(request: ReportRequest) -> str:
    return f"report {request.scheduled_minute:%Y-%m-%dT%H:%M}Z shard {request.shard} cycle {request.cycle_id}"


#: Per stage: its instructions, the schema of its answer, the question, the check, the title.
QUESTIONS: dict[
    str, tuple[str, dict[str, Any], Callable[..., str], Callable[..., Any], Callable[..., str]]
] = {
    "score": (
        prompts.SCORE_PROMPT,
        prompts.SCORE_SCHEMA,
        prompts.stage_prompt,
        prompts.validate_score,
        _symbol_title,
    ),
    "advise": (
        prompts.ADVISE_PROMPT,
        prompts.ADVICE_SCHEMA,
        prompts.stage_prompt,
        prompts.validate_advice,
        _symbol_title,
    ),
    "report": (
        prompts.REPORT_PROMPT,
        prompts.REPORT_SCHEMA,
        prompts.report_prompt,
        prompts.validate_report,
        _report_title,
    ),
}


def stage(client: Client, name: str, agent: str | None, agent_tools: bool) -> LLMStage[Any, Any]:
    """The ``name`` stage (score, advise or report) answered through ``client``."""
    system, schema, prompt, validate, title = QUESTIONS[name]
    return LLMStage(
        client,
        stage=name,
        system=system,
        schema=schema,
        prompt=prompt,
        validate=validate,
        agent=agent,
        agent_tools=agent_tools,
        title=title,
    )
