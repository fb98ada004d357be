"""Step 5 of a cycle: each symbol's chain of stages in a sliding window, then the advice and the report.

A chain holds one concurrency slot from its first stage to its last: market data, the signal
(the analyzer), the score, the advice, each within its own timeout and the cycle's deadline,
behind the shared rate limit, the daily budget and the circuit breaker, with retries. Each
document is published as soon as it is ready, and the next stage starts once it is published.
The advice waits for the cycle's risk allocation (best score first) and is published in one
batch when every chain has ended; the report follows. A failure costs its symbol only.

``analyze_all`` returns the chains (``chains.Chain``, settled into results by the caller) and
fills a ``Tally`` of what the step learned, for the record step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from runner import breaker, retries
from runner.analyzers.base import AnalysisRequest, check_symbol
from runner.breaker import BreakerState, Event, State
from runner.chains import Chain, StageRecord, not_started
from runner.clock import iso_ms
from runner.errors import (
    AnalyzerError,
    AuthError,
    Code,
    InvalidOutput,
    RateLimited,
    RedisUnavailable,
    TransientError,
    ends_cycle,
)
from runner.guards import Decision
from runner.identity import signal_id
from runner.models import (
    Advice,
    AdviceAnswer,
    Provenance,
    Report,
    Score,
    ScoreAnswer,
    Signal,
    SymbolResult,
    SymbolStatus,
)
from runner.pipeline import risk
from runner.pipeline.base import ReportRequest, StageRequest
from runner.run import Control, Run
from runner.scheduler import SlidingWindow
from runner.store.cycle_store import Holding
from runner.store.locks import LockResult
from runner.store.publish import Pending, Publication, PublishResult, Target, targets
from runner.store.ratelimit import RateLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")

#: (event, symbol or "plan", result when done): ``plan`` carries the number of runnable symbols.
Progress = Callable[[str, str, SymbolResult | None], None]


class AttemptTimeout(TransientError):
    """One attempt of a stage ran out of time."""

    code = Code.TIMEOUT


@dataclass
class Tally:
    """What the analysis step learned, for the record step."""

    #: The breaker as this run found it (after claiming probes); ``events`` apply to it.
    breaker_base: BreakerState
    #: The breaker after this run's events, as admission saw it.
    breaker: BreakerState
    events: list[tuple[Event, float]] = field(default_factory=list)
    #: (epoch seconds, milliseconds) per analyzer call of the signal stage: the adaptive window.
    latencies: list[tuple[float, float]] = field(default_factory=list)
    #: Milliseconds per remote call of the later stages.
    stage_latencies: list[float] = field(default_factory=list)
    spent_usd: float = 0.0
    remote_calls: int = 0
    #: Stage starts refused because the breaker was open.
    rejected: int = 0
    #: Set when a remote backend refused our credentials: no further remote call is made.
    auth_failure: str | None = None
    #: Symbol -> (epoch of its first candle's minute, one close per minute, None where the
    #: source had no candle): what the outcomes of earlier signals are scored against.
    closes: dict[str, tuple[float, list[float | None]]] = field(default_factory=dict)


def symbol_result(
    symbol: str, status: SymbolStatus, code: Code, reason: str | None = None, **kw: Any
) -> SymbolResult:
    """A symbol's result, for the steps that decide it without analyzing (paused, locked)."""
    return SymbolResult(symbol=symbol, status=status, code=code, reason=reason, **kw)


class Admission:
    """Whether a stage may start now: the chain's first stage only while the run admits new
    symbols (not stopping, credentials good, budget left, breaker closed or a probe left, time
    and rate-limit slots enough to finish the chain); a later stage while its calls are allowed
    and it can finish before the deadline."""

    def __init__(
        self,
        run: Run,
        decision: Decision,
        tally: Tally,
        probes: int | None,
        spent_today: float,
        control: Control,
        limiter: RateLimiter | None,
    ) -> None:
        self.run = run
        self.tally = tally
        self.probes = probes
        self.spent_today = spent_today
        self.control = control
        self.limiter = limiter
        self.plan = decision.plan
        #: Remote calls the chains in flight still have to make.
        self.owed: dict[str, int] = {}

    def timeout(self, stage: str) -> float:
        """Seconds one attempt of ``stage`` may take."""
        cfg = self.run.settings.pipeline
        own = {"score": cfg.score.timeout_seconds, "advise": cfg.advise.timeout_seconds}.get(stage)
        if stage == "report":
            own = cfg.report.timeout_seconds
        return own or self.plan.symbol_timeout

    def estimate(self, stage: str, remote: bool) -> float:
        """How long ``stage`` is expected to take: recent p95 (a second when unknown), capped by
        its timeout; a built-in stage's next to nothing."""
        if stage != "signal" and not remote:
            return 0.0
        p95 = self.plan.p95_ms / 1000.0
        return min(self.timeout(stage), p95 if p95 > 0 else 1.0)

    def first(self, symbol: str, remote_calls: int, remote: bool) -> Code | None:
        """Why the chain of ``symbol`` may not start, or None (then its calls are owed)."""
        if self.control.stopping.is_set():
            return Code.REDIS if self.control.aborted else Code.SHUTDOWN
        refusal = self.calls_refused(remote=True)  # the signal stage answers to the breaker, remote or not
        if refusal is not None:
            return refusal
        if self.run.deadline.remaining() < self.estimate("signal", remote):
            return Code.DEADLINE
        if self.limiter is not None and remote_calls:
            # Finish chains before starting new ones: a chain starts only when the slots it needs,
            # after those the chains in flight still need, come before the deadline.
            owed = sum(self.owed.values()) + remote_calls
            wait = self.limiter.expected_wait(self.run.deps.clock.now().timestamp())
            if wait + (owed - 1) * self.limiter.interval > self.run.deadline.remaining() - self.estimate(
                "signal", remote
            ):
                return Code.RATE_LIMITED
        if not self.take_probe():
            return Code.BREAKER_HALF_OPEN
        self.owed[symbol] = remote_calls
        return None

    def later(self, stage: str, remote: bool) -> Code | None:
        """Why a later stage of a chain in flight may not start, or None."""
        if self.control.aborted:
            return Code.REDIS
        if remote:
            refusal = self.calls_refused(remote=True)
            if refusal is None and not self.take_probe():
                refusal = Code.BREAKER_HALF_OPEN
            if refusal is not None:
                return refusal
        if self.run.deadline.remaining() < self.estimate(stage, remote):
            return Code.DEADLINE
        return None

    def calls_refused(self, *, remote: bool) -> Code | None:
        """Why no remote call may go out now (credentials, budget, breaker), or None."""
        if not remote:
            return None
        budget = self.run.settings.analyzer.daily_budget_usd
        if self.tally.auth_failure:
            return Code.AUTH_FAILED
        if budget is not None and self.spent_today + self.tally.spent_usd >= budget:
            return Code.BUDGET
        if self.tally.breaker.state is State.OPEN:
            self.tally.rejected += 1
            return Code.BREAKER_OPEN
        return None

    def take_probe(self) -> bool:
        if self.probes is None:
            return True
        if self.probes <= 0:
            return False
        self.probes -= 1
        return True

    def paid(self, symbol: str) -> None:
        """One owed remote call of ``symbol``'s chain went out (or will never)."""
        if self.owed.get(symbol, 0) > 0:
            self.owed[symbol] -= 1

    def done(self, symbol: str) -> None:
        self.owed.pop(symbol, None)


async def analyze_all(
    run: Run,
    symbols: list[str],
    *,
    decision: Decision,
    tally: Tally,
    probes: int | None,
    spent_today: float,
    holding: Holding,
    control: Control,
    progress: Progress | None = None,
) -> dict[str, Chain]:
    """Run each symbol's chain in a sliding window of the planned concurrency, then publish the
    cycle's advice; a chain for each symbol, to be settled (``Chain.settle``) into its result."""
    clock, deps = run.deps.clock, run.deps
    stages = tuple(run.settings.pipeline.stages)
    remote = {
        "signal": deps.analyzer.remote,
        "score": deps.stages.scorer.remote,
        "advise": deps.stages.advisor.remote,
    }
    remote_calls = sum(1 for s in stages if remote[s])
    limiter = run.store.rate_limiter(any(remote[s] for s in stages) or deps.stages.reporter.remote)
    admission = Admission(run, decision, tally, probes, spent_today, control, limiter)
    chains = {s: Chain(s, stages) for s in symbols}
    steps = Steps(run, tally, limiter, holding, admission)

    def admit(symbol: str) -> str | None:
        refusal = admission.first(symbol, remote_calls, remote["signal"])
        return None if refusal is None else refusal.value

    def refused(symbol: str, why: str) -> Chain:
        code = Code(why)
        if code is Code.DEADLINE and control.stopping.is_set():
            # The grace period ran out, or Redis ended the cycle: not the cycle's own deadline.
            code = Code.REDIS if control.aborted else Code.SHUTDOWN
        status = SymbolStatus.RATE_LIMITED if code is Code.RATE_LIMITED else SymbolStatus.NOT_STARTED
        chains[symbol].record("signal", not_started(code, status))
        return chains[symbol]

    def interrupted(symbol: str) -> Chain:
        chain = chains[symbol]
        if chain.current is not None:  # cut off inside a stage (a publish in flight settles later)
            code = Code.SHUTDOWN if control.stopping.is_set() else Code.DEADLINE
            status, reason = SymbolStatus.TIMEOUT, code.value
            if control.aborted:
                code, status, reason = Code.REDIS, SymbolStatus.FAILED, f"redis: {control.aborted}"
            began = chain.began if chain.began is not None else clock.monotonic()
            attempts = 1 if chain.current == "signal" else 0
            elapsed = int((clock.monotonic() - began) * 1000)
            chain.record(chain.current, StageRecord(status, code, reason, attempts, elapsed))
        chain.ended = clock.monotonic()
        return chain

    def on_start(symbol: str) -> None:
        chains[symbol].began = clock.monotonic()
        if progress:
            progress("start", symbol, None)

    def on_done(symbol: str, chain: Chain) -> None:
        admission.done(symbol)
        if progress:
            progress("done", symbol, chain.settle(clock.monotonic()))

    async def work(symbol: str) -> Chain:
        chain = chains[symbol]
        await steps.chain(chain)
        chain.ended = clock.monotonic()
        return chain

    window = SlidingWindow(
        work,
        limit=decision.plan.concurrency,
        admit=admit,
        refused=refused,
        interrupted=interrupted,
        on_start=on_start,
        on_done=on_done,
    )
    try:
        async with control.bounded(run.deadline.remaining() + 1.0):
            await window.run(symbols, cancelled_reason=Code.DEADLINE.value)
    except TimeoutError:
        if not control.aborted:
            log.warning("cycle deadline reached with %d symbol(s) unfinished", len(window.in_flight))
    await steps.publish_advice(list(chains.values()))
    await steps.publishes_done(list(chains.values()))
    return chains


class Steps:
    """The stages of a chain, and the cycle-wide steps after the window."""

    def __init__(
        self, run: Run, tally: Tally, limiter: RateLimiter | None, holding: Holding, admission: Admission
    ) -> None:
        self.run = run
        self.tally = tally
        self.limiter = limiter
        self.holding = holding
        self.admission = admission
        self.clock = run.deps.clock
        self.cfg = run.settings.circuit_breaker.llm_service
        self.targets = targets(run.keys, run.settings.publish.stream_maxlen)

    # A chain -----------------------------------------------------------------------------------

    async def chain(self, chain: Chain) -> None:
        """Signal, then each later stage once the earlier one is published; stops at the first
        stage that does not succeed (the later ones settle as skipped)."""
        if not await self.signal(chain) or chain.signal is None:
            return
        for stage in chain.next_stages("signal"):
            if not await self.later(chain, stage):
                return

    async def signal(self, chain: Chain) -> bool:
        deps, settings = self.run.deps, self.run.settings
        chain.current = "signal"
        timeout = self.admission.timeout("signal")
        began = self.clock.monotonic()

        async def candles(budget: float) -> None:
            try:
                async with asyncio.timeout(budget):
                    chain.candles = await deps.market.candles(
                        chain.symbol, self.run.minute, settings.market.candles
                    )
                    self.tally.closes[chain.symbol] = minute_closes(chain.candles)
            except TimeoutError as exc:
                raise AttemptTimeout(
                    f"market data for {chain.symbol} took longer than {budget:.1f}s"
                ) from exc

        async def analyze(budget: float, attempt: int) -> Any:
            request = AnalysisRequest(
                symbol=chain.symbol,
                candles=chain.candles,
                scheduled_minute=self.run.minute,
                timeout=budget,
                cycle_id=self.run.owner.cycle_id,
                attempt=attempt,
            )
            return check_symbol(request, await deps.analyzer.analyze(request))

        record, analysis = await self.attempt(
            chain, "signal", timeout, deps.analyzer.remote, analyze, before=candles, latencies=True
        )
        if analysis is None:
            chain.record("signal", record)
            return False
        chain.signal = Signal(
            id=signal_id(chain.symbol, self.run.minute),
            symbol=chain.symbol,
            action=analysis.action,
            confidence=analysis.confidence,
            reasoning=analysis.reasoning,
            price=analysis.price,
            generated_at=iso_ms(self.clock.now()),
            cycle_id=self.run.owner.cycle_id,
            instance_id=self.run.owner.instance_id,
            analyzer=analysis.analyzer,
            model=analysis.model,
            latency_ms=int((self.clock.monotonic() - began) * 1000),
            fencing_token=self.lock(chain).token,
            requested_model=analysis.requested_model,
            prompt_hash=analysis.prompt_hash,
            tokens_in=analysis.tokens_in,
            tokens_out=analysis.tokens_out,
            cost_usd=analysis.cost_usd,
        )
        return await self.publish(
            chain, "signal", record, chain.signal.id, chain.signal.to_json(), self.targets.signal
        )

    async def later(self, chain: Chain, stage: str) -> bool:
        """One stage after the signal; False when the chain stops here."""
        stages = self.run.deps.stages
        backend = stages.scorer if stage == "score" else stages.advisor
        refusal = self.admission.later(stage, backend.remote)
        if refusal is not None:
            status = SymbolStatus.RATE_LIMITED if refusal is Code.RATE_LIMITED else SymbolStatus.NOT_STARTED
            chain.record(stage, not_started(refusal, status))
            return False
        chain.current = stage
        signal = chain.signal
        assert signal is not None

        async def answer(budget: float, attempt: int) -> Any:
            request = StageRequest(
                stage=stage,
                symbol=chain.symbol,
                candles=chain.candles,
                scheduled_minute=self.run.minute,
                timeout=budget,
                signal=signal,
                score=chain.score,
                cycle_id=self.run.owner.cycle_id,
                attempt=attempt,
            )
            return await backend.answer(request)

        record, got = await self.attempt(chain, stage, self.admission.timeout(stage), backend.remote, answer)
        if got is None:
            chain.record(stage, record)
            return False
        common = self.common(chain, got, record.duration_ms)
        if stage == "score":
            assert isinstance(got, ScoreAnswer)
            chain.score = Score(
                **common, score=got.score, grade=got.grade, factors=got.factors, reasoning=got.reasoning
            )
            return await self.publish(
                chain, "score", record, f"score:{chain.score.id}", chain.score.to_json(), self.targets.score
            )
        assert isinstance(got, AdviceAnswer)
        chain.pending_advice = risk.cap_position(got, self.run.settings.risk)
        chain.record(stage, record)  # published with the cycle's advice, once every chain has ended
        return True

    def common(self, chain: Chain, got: Provenance, latency_ms: int) -> dict[str, Any]:
        """The fields every stage document of ``chain`` carries."""
        assert chain.signal is not None
        return {
            "id": chain.signal.id,
            "symbol": chain.symbol,
            "cycle_id": self.run.owner.cycle_id,
            "instance_id": self.run.owner.instance_id,
            "fencing_token": self.lock(chain).token,
            "generated_at": iso_ms(self.clock.now()),
            "analyzer": got.analyzer,
            "model": got.model,
            "latency_ms": latency_ms,
            "tokens_in": got.tokens_in,
            "tokens_out": got.tokens_out,
            "cost_usd": got.cost_usd,
            "requested_model": got.requested_model,
            "prompt_hash": got.prompt_hash,
        }

    def lock(self, chain: Chain) -> LockResult:
        return self.holding.locks[chain.symbol]

    async def publish(
        self, chain: Chain, stage: str, record: StageRecord, doc_id: str, doc: str, target: Target
    ) -> bool:
        """Hand the stage's document to the publisher, after the chain's earlier one; True when the
        chain goes on (its lock is released with its last document).

        Before a stage that costs a call the chain waits until this document is published, so no
        money goes to a stage whose signal was a duplicate or lost its lock. A built-in next stage
        goes on at once: its document follows this one, published only if this one is.
        """
        lock = self.lock(chain)
        following = chain.next_stages(stage)
        record.publishing = self.holding.publisher.submit(
            Pending(
                doc_id,
                chain.symbol,
                doc,
                lock.key,
                lock.value,
                target,
                release=not following,
                after=self.latest_publish(chain),
            )
        )
        chain.record(stage, record)  # a cancellation while waiting leaves the publish to settle later
        if not following or not self.costs_a_call(following[0]):
            return True
        fate = await asyncio.shield(record.publishing.written)
        return fate is PublishResult.PUBLISHED

    def costs_a_call(self, stage: str) -> bool:
        stages = self.run.deps.stages
        return (stages.scorer if stage == "score" else stages.advisor).remote

    @staticmethod
    def latest_publish(chain: Chain) -> Publication | None:
        """The publish of the chain's latest document so far (what its next one follows)."""
        found = [r.publishing for r in chain.records.values() if r.publishing is not None]
        return found[-1] if found else None

    # Attempts -----------------------------------------------------------------------------------

    async def attempt(
        self,
        chain: Chain,
        stage: str,
        limit: float,
        remote: bool,
        call: Callable[[float, int], Awaitable[T]],
        *,
        before: Callable[[float], Awaitable[None]] | None = None,
        latencies: bool = False,
    ) -> tuple[StageRecord, T | None]:
        """Run one stage with retries, each attempt within ``limit`` seconds and the cycle deadline,
        behind the shared rate limit when remote. Returns its record and its answer (None when it
        failed); never raises. The breaker learns from the result."""
        run, clock = self.run, self.clock
        began = clock.monotonic()
        attempts = 0
        retrying = retries.policy(
            max_attempts=run.settings.retry.max_attempts,
            delay_seconds=run.settings.retry.delay_seconds,
            deadline=run.deadline,
            min_attempt=min(limit, 1.0),
            sleep=self.sleep_within,
        )
        answer: T | None = None
        try:
            if before is not None:
                await before(min(limit, run.deadline.remaining()))
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    if min(limit, run.deadline.remaining()) <= 0:
                        raise AttemptTimeout("no time left before the cycle deadline")
                    if remote:
                        await self.take_slot(chain.symbol, limit)
                    budget = min(limit, run.deadline.remaining())
                    call_began = clock.monotonic()
                    if remote:
                        self.tally.remote_calls += 1
                    try:
                        async with asyncio.timeout(budget):
                            answer = await call(budget, attempts)
                    except RateLimited as exc:
                        if self.limiter is not None and exc.retry_after:
                            await self.limiter.pause(clock.now().timestamp(), exc.retry_after)
                        raise
                    except TimeoutError as exc:
                        self.latency(budget * 1000, latencies, remote)
                        raise AttemptTimeout(f"{_what(stage)} took longer than {budget:.1f}s") from exc
                    self.latency((clock.monotonic() - call_began) * 1000, latencies, remote)
        except Exception as exc:  # every failure costs this symbol only, never the cycle
            record = self.failure(chain.symbol, exc, attempts, int((clock.monotonic() - began) * 1000))
            if stage == "signal" or remote:
                self.learn(record)
            return record, None
        assert answer is not None
        cost = getattr(answer, "cost_usd", None)
        if cost:
            self.tally.spent_usd += cost
        record = StageRecord(
            SymbolStatus.OK, Code.OK, None, attempts, int((clock.monotonic() - began) * 1000)
        )
        if stage == "signal" or remote:  # the breaker guards the analyzer and the remote stages
            self.learn(record)
        return record, answer

    def latency(self, ms: float, adaptive: bool, remote: bool) -> None:
        if adaptive:
            self.tally.latencies.append((self.clock.now().timestamp(), ms))
        elif remote:
            self.tally.stage_latencies.append(ms)

    def learn(self, record: StageRecord) -> None:
        """Feed the breaker: a success, or a failure that looks like an outage."""
        now = self.clock.now().timestamp()
        event = None
        if record.ok:
            event = Event.SUCCESS
        elif record.outage and record.status in (SymbolStatus.FAILED, SymbolStatus.TIMEOUT):
            event = Event.FAILURE
        if event is None:
            return
        self.tally.events.append((event, now))
        before = self.tally.breaker.state
        self.tally.breaker = breaker.transition(self.tally.breaker, event, now, self.cfg)
        if self.tally.breaker.state is State.OPEN and before is not State.OPEN:
            log.warning("circuit breaker opened: starting no more symbols this cycle")

    def failure(self, symbol: str, exc: Exception, attempts: int, duration_ms: int) -> StageRecord:
        """The record of a stage that failed with ``exc``."""
        if isinstance(exc, ValidationError):  # the backend built an invalid answer
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "answer"
            exc = InvalidOutput(f"{where}: {first['msg']}")
        status, code = SymbolStatus.FAILED, Code.ERROR
        reason, outage, fault = f"error: {type(exc).__name__}: {exc}", True, False
        if isinstance(exc, AttemptTimeout):
            status, code, reason = SymbolStatus.TIMEOUT, Code.TIMEOUT, str(exc)
        elif isinstance(exc, RateLimited):
            status, code, reason, outage = SymbolStatus.RATE_LIMITED, Code.RATE_LIMITED, str(exc), False
        elif isinstance(exc, AnalyzerError):
            code, reason, outage, fault = exc.code, f"{exc.code}: {exc}", exc.outage, exc.symbol_fault
            if isinstance(exc, AuthError):
                self.tally.auth_failure = f"analyzer refused our credentials: {exc}"
        elif isinstance(exc, RedisUnavailable):
            code, reason, outage = Code.REDIS, f"redis: {exc}", False
            if ends_cycle(exc):
                self.admission.control.abort(exc)
        else:  # a backend bug: log it whole, once
            log.error("unexpected error analyzing %s", symbol, exc_info=exc)
        return StageRecord(status, code, reason, attempts, duration_ms, outage=outage, symbol_fault=fault)

    async def take_slot(self, symbol: str, limit: float) -> None:
        """Wait for a shared rate-limit slot, or raise ``RateLimited`` if none comes before an
        attempt of ``limit`` seconds would still fit."""
        if self.limiter is None:
            return
        self.admission.paid(symbol)
        min_attempt = min(limit, 1.0)
        granted, wait = await self.limiter.reserve(
            self.clock.now().timestamp(), self.run.deadline.remaining() - min_attempt
        )
        if not granted:
            raise RateLimited(f"no rate-limit slot within the cycle deadline (next in {wait:.1f}s)", wait)
        if wait > 0:
            await asyncio.sleep(wait)

    async def sleep_within(self, seconds: float) -> None:
        await asyncio.sleep(min(seconds, self.run.deadline.remaining()))

    # After the window -------------------------------------------------------------------------------

    async def publish_advice(self, chains: list[Chain]) -> None:
        """Size the cycle's advice within the risk limits (best score first) and publish it in one batch."""
        ready = [c for c in chains if c.pending_advice is not None and c.signal is not None]
        if not ready:
            return
        aborted = self.admission.control.aborted
        if aborted is not None:  # Redis ended the cycle: nothing more is published
            for chain in ready:
                rec = chain.records["advise"]
                chain.records["advise"] = StageRecord(
                    SymbolStatus.FAILED, Code.REDIS, f"redis: {aborted}", rec.attempts, rec.duration_ms
                )
            return
        sized = risk.allocate(
            ((c.symbol, _rank(c), c.pending_advice) for c in ready if c.pending_advice is not None),
            self.run.settings.risk,
        )
        for chain in ready:
            got = sized[chain.symbol]
            record = chain.records["advise"]
            chain.advice = Advice(
                **self.common(chain, got, record.duration_ms),
                action=got.action,
                entry=got.entry,
                stop_loss=got.stop_loss,
                take_profit=got.take_profit,
                position_size_pct=got.position_size_pct,
                horizon_minutes=got.horizon_minutes,
                reasoning=got.reasoning,
                limited_by=got.limited_by,
            )
            lock = self.lock(chain)
            record.publishing = self.holding.publisher.submit(
                Pending(
                    f"advice:{chain.advice.id}",
                    chain.symbol,
                    chain.advice.to_json(),
                    lock.key,
                    lock.value,
                    self.targets.advice,
                    after=self.latest_publish(chain),
                )
            )

    async def publishes_done(self, chains: list[Chain]) -> None:
        """Wait (within the wind-down) until every document handed over is published or refused."""
        pending = [
            r.publishing.written for c in chains for r in c.records.values() if r.publishing is not None
        ]
        waiting = [f for f in pending if not f.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=self.run.budget())


def minute_closes(candles: list[Any]) -> tuple[float, list[float | None]]:
    """(epoch of the first candle's minute, a close per minute from there, None for a gap)."""
    if not candles:
        return 0.0, []
    first = candles[0].start.timestamp()
    closes: list[float | None] = [None] * (int((candles[-1].start.timestamp() - first) // 60) + 1)
    for c in candles:
        closes[int((c.start.timestamp() - first) // 60)] = c.close
    return first, closes


def _rank(chain: Chain) -> float:
    """What orders a chain's advice in the risk allocation: its score (the signal's confidence, in
    points, when the pipeline has no score stage)."""
    if chain.score is not None:
        return float(chain.score.score)
    return chain.signal.confidence * 100 if chain.signal is not None else 0.0


def _what(stage: str) -> str:
    return "analysis" if stage == "signal" else f"the {stage} stage"


async def report_step(
    run: Run,
    results: list[SymbolResult],
    *,
    decision: Decision,
    tally: Tally,
    holding: Holding,
    lease: LockResult | None,
    control: Control,
) -> tuple[Report | None, StageRecord]:
    """The cycle's report, after every chain has ended: written by the reporter, published fenced by
    the cycle lease (idempotent by its id). Returns the report (None unless published) and its record."""
    settings, clock = run.settings, run.deps.clock
    reporter = run.deps.stages.reporter
    if not settings.pipeline.report.enabled:
        return None, StageRecord(SymbolStatus.SKIPPED, Code.OK, "off")
    limiter = run.store.rate_limiter(reporter.remote)
    admission = Admission(run, decision, tally, None, 0.0, control, limiter)
    refusal = admission.later("report", reporter.remote)
    if refusal is not None:
        return None, not_started(refusal)
    chain = Chain("report", ("report",))
    steps = Steps(run, tally, limiter, holding, admission)
    signals = [r.signal for r in results if r.signal is not None]
    scores = [r.score for r in results if r.score is not None]
    advice = [r.advice for r in results if r.advice is not None]

    async def answer(budget: float, attempt: int) -> Any:
        del attempt
        request = ReportRequest(
            cycle_id=run.owner.cycle_id,
            shard=run.shard.label,
            scheduled_minute=run.minute,
            timeout=budget,
            results=results,
            signals=signals,
            scores=scores,
            advice=advice,
        )
        return await reporter.answer(request)

    began = clock.monotonic()
    record, got = await steps.attempt(chain, "report", admission.timeout("report"), reporter.remote, answer)
    if got is None:
        return None, record
    counts, top = report_facts(results, signals, scores, advice)
    report = Report(
        id=f"report:{run.minute:%Y-%m-%dT%H:%M}:{run.shard.key}",
        cycle_id=run.owner.cycle_id,
        instance_id=run.owner.instance_id,
        shard=run.shard.label,
        minute=f"{run.minute:%Y-%m-%dT%H:%M}",
        fencing_token=lease.token if lease else 0,
        generated_at=iso_ms(clock.now()),
        summary=got.summary,
        counts=counts,
        top=top,
        analyzer=got.analyzer,
        model=got.model,
        latency_ms=int((clock.monotonic() - began) * 1000),
        tokens_in=got.tokens_in,
        tokens_out=got.tokens_out,
        cost_usd=got.cost_usd,
    )
    if lease is None and not run.dry_run:
        return None, StageRecord(
            SymbolStatus.FAILED, Code.FENCED, "not published (this run holds no cycle lease)"
        )
    record.publishing = holding.publisher.submit(
        Pending(
            report.id,
            run.shard.label,
            report.to_json(),
            lease.key if lease else "",
            lease.value if lease else "",
            steps.targets.report,
            release=False,
        )
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(record.publishing.written), run.budget())
    settled = record.settled()
    return (report if settled.ok and settled.code is Code.OK else None), settled


def report_facts(
    results: list[SymbolResult], signals: list[Signal], scores: list[Score], advice: list[Advice]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The counts and the best-scored advice a report carries, computed by code (pure)."""
    counts: dict[str, int] = {
        "symbols": len(results),
        "signals": len(signals),
        "scores": len(scores),
        "advice": len(advice),
    }
    for r in results:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    for s in signals:
        counts[s.action] = counts.get(s.action, 0) + 1
    by_score = {s.symbol: s for s in scores}
    ranked = sorted(
        advice, key=lambda a: (-(by_score[a.symbol].score if a.symbol in by_score else -1), a.symbol)
    )
    top = [
        {
            "symbol": a.symbol,
            "action": a.action,
            "score": by_score[a.symbol].score if a.symbol in by_score else None,
            "grade": by_score[a.symbol].grade if a.symbol in by_score else None,
            "position_size_pct": a.position_size_pct,
        }
        for a in ranked[:5]
    ]
    return counts, top
