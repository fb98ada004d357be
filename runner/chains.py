"""One symbol's chain of stages (signal -> score -> advise) and how it ends: its result.

A ``Chain`` records what each stage did (``StageRecord``) and, for each document it handed to the
publisher, the future of what became of it. ``settle`` turns that into the symbol's result once
publishing is over (pure): the first stage that did not succeed decides the status, and every
later stage is ``skipped`` with reason ``upstream <stage> <status>``; a symbol is ok only when
every stage of its chain succeeded. A document published but not confirmed by a replica makes
its stage (and the symbol) ``unconfirmed``, without skipping the stages after it: they ran and
were published too. Nothing is defaulted in place of an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.errors import Code
from runner.market.base import Candle
from runner.models import Advice, AdviceAnswer, Score, Signal, SymbolResult, SymbolStatus
from runner.store.publish import Publication, PublishResult


@dataclass
class StageRecord:
    """What one stage of a chain did."""

    status: SymbolStatus
    code: Code
    reason: str | None = None
    attempts: int = 0
    duration_ms: int = 0
    #: The failure looks like an outage of the service (it counts toward the breaker).
    outage: bool = False
    #: The failure belongs to the symbol (it counts toward pausing it).
    symbol_fault: bool = False
    #: What became of the stage's document, once handed to the publisher.
    publishing: Publication | None = None

    @property
    def ok(self) -> bool:
        return self.status is SymbolStatus.OK

    def settled(self) -> StageRecord:
        """The record with its publish outcome folded in (a document not published is a failure,
        one no replica confirmed is unconfirmed)."""
        if self.publishing is None or not self.ok:
            return self
        fate = self.publishing.fate()
        if fate is PublishResult.PUBLISHED:
            return self
        if fate is PublishResult.DUPLICATE:
            return _replace(self, code=Code.DUPLICATE, reason="already published this minute")
        if fate is PublishResult.SKIPPED:  # the chain's earlier document was not published: it decides
            return _replace(self, status=SymbolStatus.SKIPPED, reason="upstream not published")
        if fate is PublishResult.UNCONFIRMED:
            note = self.publishing.note or "no replica confirmed it"
            return _replace(
                self, status=SymbolStatus.UNCONFIRMED, code=Code.UNCONFIRMED, reason=f"unconfirmed: {note}"
            )
        code = Code.FENCED if fate is PublishResult.FENCED else Code.PUBLISH_FAILED
        note = f": {self.publishing.note}" if self.publishing.note else ""
        return _replace(self, status=SymbolStatus.FAILED, code=code, reason=f"not published ({fate}){note}")


def _replace(record: StageRecord, **changes: Any) -> StageRecord:
    return StageRecord(**{**record.__dict__, **changes})


def not_started(code: Code, status: SymbolStatus = SymbolStatus.NOT_STARTED) -> StageRecord:
    """A stage that was not started, and why."""
    return StageRecord(status, code, code.value)


@dataclass
class Chain:
    """One symbol's way through the stages; results are settled once publishing is over."""

    symbol: str
    #: The stages this chain runs, in order.
    stages: tuple[str, ...]
    began: float | None = None
    ended: float | None = None
    #: The stage running now (a cancellation lands on it).
    current: str | None = None
    records: dict[str, StageRecord] = field(default_factory=dict)
    candles: list[Candle] = field(default_factory=list)
    signal: Signal | None = None
    score: Score | None = None
    #: The advise stage's answer, waiting for the cycle's risk allocation.
    pending_advice: AdviceAnswer | None = None
    advice: Advice | None = None

    def record(self, stage: str, record: StageRecord) -> StageRecord:
        self.records[stage] = record
        self.current = None
        return record

    def next_stages(self, after: str) -> tuple[str, ...]:
        return self.stages[self.stages.index(after) + 1 :]

    def settle(self, now: float) -> SymbolResult:
        """The symbol's result (pure, given the chain and its publish outcomes)."""
        settled = {stage: rec.settled() for stage, rec in self.records.items()}
        blocker: tuple[str, StageRecord] | None = None
        unconfirmed: tuple[str, StageRecord] | None = None
        statuses: dict[str, SymbolStatus] = {}
        reasons: dict[str, str] = {}
        for stage in self.stages:
            rec = settled.get(stage)
            if blocker is not None or rec is None:
                statuses[stage] = SymbolStatus.SKIPPED
                if blocker is not None:
                    reasons[stage] = (
                        f"upstream {blocker[0]} {blocker[1].code if blocker[1].ok else blocker[1].status}"
                    )
                continue
            statuses[stage] = rec.status
            if rec.status is SymbolStatus.UNCONFIRMED:  # published: the next stages ran on it
                unconfirmed = unconfirmed or (stage, rec)
                reasons[stage] = rec.reason or rec.code.value
            elif not rec.ok or rec.code is Code.DUPLICATE:
                blocker = (stage, rec)
                reasons[stage] = rec.reason or rec.code.value
        blocker = blocker or unconfirmed
        began = self.began if self.began is not None else now
        end = self.ended if self.ended is not None else now
        common: dict[str, Any] = {
            "attempts": max((r.attempts for r in settled.values()), default=0),
            "duration_ms": int(max(0.0, end - began) * 1000),
            "stages": statuses,
            "stage_reasons": reasons,
            "timings": {s: r.duration_ms for s, r in settled.items() if r.attempts},
        }
        docs: dict[str, Any] = {
            "signal": self.signal if _published(settled.get("signal")) else None,
            "score": self.score if _published(settled.get("score")) else None,
            "advice": self.advice if _published(settled.get("advise")) else None,
        }
        if blocker is None:
            return SymbolResult(symbol=self.symbol, status=SymbolStatus.OK, code=Code.OK, **common, **docs)
        stage, rec = blocker
        if rec.code is Code.DUPLICATE:  # an earlier run of this minute did the work: nothing to redo
            return SymbolResult(
                symbol=self.symbol,
                status=SymbolStatus.OK,
                code=Code.DUPLICATE,
                reason=rec.reason,
                **common,
                **docs,
            )
        reason = rec.reason if stage == "signal" else f"{stage}: {rec.reason}"
        return SymbolResult(
            symbol=self.symbol,
            status=rec.status,
            code=rec.code,
            reason=reason,
            outage=rec.outage,
            symbol_fault=rec.symbol_fault,
            **common,
            **docs,
        )


def _published(record: StageRecord | None) -> bool:
    return record is not None and record.ok and record.code is Code.OK
