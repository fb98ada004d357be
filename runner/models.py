"""The data the cycle produces: signals, per-symbol results and the cycle outcome.

Results carry a machine code (``errors.Code``) next to the human ``reason``; times stay
datetimes until they are written out.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from runner.clock import iso_ms
from runner.errors import Code, ExitCode

SCHEMA_VERSION = 1
MAX_REASONING_CHARS = 2000

Action = Literal["BUY", "SELL", "HOLD"]


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


class SymbolStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    LOCKED = "locked"
    RATE_LIMITED = "rate_limited"
    PAUSED = "paused"
    NOT_STARTED = "not_started"


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
    signal: Signal | None = Field(default=None, exclude=True)


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
    results: list[SymbolResult] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
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
