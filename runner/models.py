"""The data the cycle produces: signals, per-symbol results and the cycle outcome.

Results carry a machine code (``errors.Code``) next to the human ``reason``; times stay
datetimes until they are written out.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from runner.clock import iso_ms
from runner.errors import Code, ExitCode

SCHEMA_VERSION = 1
MAX_REASONING_CHARS = 2000
MAX_REPORT_CHARS = 4000
MAX_FACTORS, MAX_FACTOR_CHARS = 8, 120
#: The longest horizon an advice may name: one week.
MAX_HORIZON_MINUTES = 7 * 24 * 60

Action = Literal["BUY", "SELL", "HOLD"]
Grade = Literal["A", "B", "C", "D"]
#: The lowest score of each grade, best first.
GRADE_FLOORS: tuple[tuple[Grade, int], ...] = (("A", 80), ("B", 60), ("C", 40), ("D", 0))


def grade_of(score: int) -> Grade:
    """The grade of a score: A from 80, B from 60, C from 40, else D."""
    return next(grade for grade, floor in GRADE_FLOORS if score >= floor)


class Analysis(BaseModel):
    """What an analyzer returns for one symbol, validated before it becomes a signal."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    symbol: str
    action: Action
    confidence: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    reasoning: str = Field(min_length=1, max_length=MAX_REASONING_CHARS)
    price: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    #: Provenance filled in by the analyzer, not by the model.
    analyzer: str = "builtin"
    model: str | None = None
    requested_model: str | None = None
    prompt_hash: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None


class Provenance(BaseModel):
    """Who answered a stage, filled in by the backend, not by the model."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    analyzer: str = "builtin"
    model: str | None = None
    requested_model: str | None = None
    prompt_hash: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None


class ScoreAnswer(Provenance):
    """A score stage's validated answer: how good the signal is, 0-100."""

    score: int = Field(ge=0, le=100)
    grade: Grade
    factors: list[Annotated[str, Field(min_length=1, max_length=MAX_FACTOR_CHARS)]] = Field(
        max_length=MAX_FACTORS
    )
    reasoning: str = Field(min_length=1, max_length=MAX_REASONING_CHARS)

    @model_validator(mode="after")
    def _graded(self) -> ScoreAnswer:
        if self.grade != grade_of(self.score):
            raise ValueError(
                f"grade {self.grade} does not match score {self.score} (it is {grade_of(self.score)})"
            )
        return self


class AdviceAnswer(Provenance):
    """An advise stage's validated answer, before the risk limits of the whole cycle."""

    action: Action
    entry: float | None = Field(gt=0, allow_inf_nan=False)
    stop_loss: float | None = Field(gt=0, allow_inf_nan=False)
    take_profit: float | None = Field(gt=0, allow_inf_nan=False)
    position_size_pct: float = Field(ge=0, le=100, allow_inf_nan=False)
    horizon_minutes: int = Field(ge=1, le=MAX_HORIZON_MINUTES)
    reasoning: str = Field(min_length=1, max_length=MAX_REASONING_CHARS)
    #: The risk limits that cut the size (filled in by code, never by the model).
    limited_by: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sides(self) -> AdviceAnswer:
        if self.action == "HOLD":
            if self.position_size_pct != 0:
                raise ValueError(f"a HOLD takes no position (got position_size_pct {self.position_size_pct})")
            return self
        if self.entry is None or self.stop_loss is None:
            raise ValueError(f"a {self.action} needs an entry and a stop_loss")
        below = self.action == "BUY"
        if (self.stop_loss >= self.entry) if below else (self.stop_loss <= self.entry):
            side = "below" if below else "above"
            raise ValueError(
                f"a {self.action}'s stop_loss {self.stop_loss} must be {side} its entry {self.entry}"
            )
        if self.take_profit is not None and (
            (self.take_profit <= self.entry) if below else (self.take_profit >= self.entry)
        ):
            side = "above" if below else "below"
            raise ValueError(
                f"a {self.action}'s take_profit {self.take_profit} must be {side} its entry {self.entry}"
            )
        return self


class ReportAnswer(Provenance):
    """A report stage's answer: the cycle's summary in markdown."""

    summary: str = Field(min_length=1, max_length=MAX_REPORT_CHARS)


class Signal(BaseModel):
    """A published trading signal (``schema_version`` 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    symbol: str
    action: Action
    confidence: float = Field(ge=0.0, le=1.0)
    reasoning: str
    price: float | None
    generated_at: str
    cycle_id: str
    instance_id: str
    analyzer: str
    model: str | None
    latency_ms: int
    fencing_token: int
    schema_version: int = SCHEMA_VERSION
    requested_model: str | None = None
    prompt_hash: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=False)


class Document(BaseModel):
    """What every published document after the signal carries: who wrote it, under which fencing
    token, when, and what answering it cost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    stage: str
    cycle_id: str
    instance_id: str
    fencing_token: int
    generated_at: str
    analyzer: str
    model: str | None
    latency_ms: int
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    requested_model: str | None = None
    prompt_hash: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=False)


class StageDoc(Document):
    """A stage's document about one symbol; its ``id`` is the signal id, ``<symbol>:<minute>``."""

    symbol: str


class Score(StageDoc):
    """A published score of a signal (stream ``signals:scored``)."""

    stage: Literal["score"] = "score"
    score: int
    grade: Grade
    factors: list[str]
    reasoning: str


class Advice(StageDoc):
    """A published trade advice (stream ``signals:advised``), sized within the risk limits."""

    stage: Literal["advise"] = "advise"
    action: Action
    entry: float | None
    stop_loss: float | None
    take_profit: float | None
    position_size_pct: float
    horizon_minutes: int
    reasoning: str
    limited_by: list[str]


class Report(Document):
    """The report of one cycle and shard (stream ``reports:cycle``, string ``reports:latest``);
    its ``id`` is ``report:<minute>:<shard>`` and its fencing token the cycle lease's."""

    stage: Literal["report"] = "report"
    shard: str
    minute: str
    summary: str
    counts: dict[str, int]
    top: list[dict[str, Any]]


class SymbolStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    LOCKED = "locked"
    RATE_LIMITED = "rate_limited"
    PAUSED = "paused"
    NOT_STARTED = "not_started"
    #: A later stage of a chain whose earlier stage did not succeed (stages only).
    SKIPPED = "skipped"
    #: Published on the master, but no replica confirmed it: a failover may lose it.
    UNCONFIRMED = "unconfirmed"


class CycleStatus(StrEnum):
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    SKIPPED = "skipped"


class SymbolResult(BaseModel):
    """How one selected symbol fared in a cycle."""

    symbol: str
    status: SymbolStatus
    #: Why, for machines (metrics, breaker, auto-pause); ``reason`` says it for people.
    code: Code
    reason: str | None = None
    attempts: int = 0
    duration_ms: int = 0
    #: Whether the failure belongs to the symbol (invalid output, unknown symbol).
    symbol_fault: bool = False
    #: Whether the failure looks like an outage of the analyzer service.
    outage: bool = False
    #: Stage -> status of the symbol's chain (``signal``, ``score``, ``advise``).
    stages: dict[str, SymbolStatus] = Field(default_factory=dict)
    #: Stage -> why, for each stage that did not succeed (``upstream score failed`` for the later ones).
    stage_reasons: dict[str, str] = Field(default_factory=dict)
    signal: Signal | None = Field(default=None, exclude=True)
    score: Score | None = Field(default=None, exclude=True)
    advice: Advice | None = Field(default=None, exclude=True)
    #: Stage -> milliseconds, for the per-stage metrics.
    timings: dict[str, int] = Field(default_factory=dict, exclude=True)


class Outcome(BaseModel):
    """The result of one invocation of ``runner cycle``; the CLI turns it into an exit code."""

    cycle_id: str
    instance_id: str
    shard: str = "0/1"
    status: CycleStatus
    skip_reason: str | None = None
    skip_detail: str | None = None
    exit_code: int
    started_at: datetime
    scheduled_minute: str
    duration_ms: int
    published: bool = True
    signals: list[Signal] = Field(default_factory=list)
    scores: list[Score] = Field(default_factory=list)
    advice: list[Advice] = Field(default_factory=list)
    report: Report | None = None
    #: What became of the report (``skipped`` when it is off), and why when it is not ok.
    report_status: SymbolStatus | None = None
    report_reason: str | None = None
    report_ms: int = Field(default=0, exclude=True)
    results: list[SymbolResult] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    #: Why the cycle ended early (the Redis master moved or is gone), as the one line the CLI prints.
    error: str | None = None
    stats: dict[str, Any] = Field(default_factory=dict)

    @field_serializer("started_at")
    def _iso(self, value: datetime) -> str:
        return iso_ms(value)

    def summary(self) -> dict[str, Any]:
        """The compact record kept in the cycle history."""
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status.value] = counts.get(r.status.value, 0) + 1
        return {
            "cycle_id": self.cycle_id,
            "instance_id": self.instance_id,
            "shard": self.shard,
            "status": self.status.value,
            "skip_reason": self.skip_reason,
            "skip_detail": self.skip_detail,
            "exit_code": self.exit_code,
            "started_at": iso_ms(self.started_at),
            "scheduled_minute": self.scheduled_minute,
            "duration_ms": self.duration_ms,
            "signals": len(self.signals),
            "scores": len(self.scores),
            "advice": len(self.advice),
            "report": self.report.id if self.report else None,
            "error": self.error,
            "counts": counts,
            "results": [r.model_dump(mode="json", exclude={"symbol_fault", "outage"}) for r in self.results],
        }


def decide_status(results: list[SymbolResult]) -> tuple[CycleStatus, ExitCode, str | None]:
    """The cycle status and exit code for a cycle that ran, from its per-symbol results.

    Paused symbols are not part of the work. Every remaining symbol held by a live owner is a
    guarded skip (exit 0); otherwise all ok is completed (0), some ok is partial (1), none is
    failed (3).
    """
    work = [r for r in results if r.status is not SymbolStatus.PAUSED]
    if not work:
        return CycleStatus.SKIPPED, ExitCode.OK, "no_symbols"
    if all(r.status is SymbolStatus.LOCKED for r in work):
        return CycleStatus.SKIPPED, ExitCode.OK, "all_locked"
    ok = sum(r.status is SymbolStatus.OK for r in work)
    if ok == len(work):
        return CycleStatus.COMPLETED, ExitCode.OK, None
    if ok:
        return CycleStatus.PARTIAL, ExitCode.PARTIAL, None
    return CycleStatus.FAILED, ExitCode.FAILED, None
