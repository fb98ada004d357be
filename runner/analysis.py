"""Step 5 of a cycle: each symbol's chain in a sliding window of bounded concurrency.

A chain gets its symbol's market data, then the analyzer with retries, within its own timeout
and the cycle's deadline, behind the shared rate limit and the circuit breaker; its signal is
published as soon as it is ready, and the chain ends when the publish is confirmed. A failure
costs its symbol only. ``analyze_all`` returns each symbol's result and a ``Tally`` of what the
step learned (breaker events, latencies, spend), for the record step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from runner import breaker, retries
from runner.analyzers.base import AnalysisRequest, check_symbol
from runner.breaker import BreakerState, Event, State
from runner.clock import iso_ms
from runner.errors import (
    AnalyzerError,
    AuthError,
    Code,
    InvalidOutput,
    RateLimited,
    RedisUnavailable,
    TransientError,
)
from runner.guards import Decision
from runner.identity import signal_id
from runner.models import Analysis, Signal, SymbolResult, SymbolStatus
from runner.run import Control, Run
from runner.scheduler import SlidingWindow
from runner.store.cycle_store import Holding
from runner.store.publish import Pending, PublishResult, signal_target
from runner.store.ratelimit import RateLimiter

log = logging.getLogger(__name__)

#: (event, symbol or "plan", result when done): ``plan`` carries the number of runnable symbols.
Progress = Callable[[str, str, SymbolResult | None], None]


class AttemptTimeout(TransientError):
    """One analysis attempt ran out of time."""

    code = Code.TIMEOUT


@dataclass
class Tally:
    """What the analysis step learned, for the record step."""

    #: The breaker as this run found it (after claiming probes); ``events`` apply to it.
    breaker_base: BreakerState
    #: The breaker after this run's events, as admission saw it.
    breaker: BreakerState
    events: list[tuple[Event, float]] = field(default_factory=list)
    #: (epoch seconds, milliseconds) per analyzer call.
    latencies: list[tuple[float, float]] = field(default_factory=list)
    spent_usd: float = 0.0
    remote_calls: int = 0
    #: Symbols refused because the breaker was open.
    rejected: int = 0
    #: Set when the analyzer refused our credentials: no further symbol is started.
    auth_failure: str | None = None


@dataclass
class Chain:
    """One symbol's way through the step; its result is settled once publishing is done."""

    symbol: str
    began: float | None = None
    result: SymbolResult | None = None
    publishing: asyncio.Future[PublishResult] | None = None

    def settle(self) -> SymbolResult:
        """The symbol's final result, from what its chain did and what its publish became."""
        result = self.result
        assert result is not None
        if result.signal is None or self.publishing is None:
            return result
        fate = PublishResult.ERROR
        if self.publishing.done() and not self.publishing.cancelled():
            fate = self.publishing.result()
        if fate is PublishResult.PUBLISHED:
            return result
        if fate is PublishResult.DUPLICATE:
            return result.model_copy(
                update={"code": Code.DUPLICATE, "reason": "already published this minute"}
            )
        code = Code.FENCED if fate is PublishResult.FENCED else Code.PUBLISH_FAILED
        return result.model_copy(
            update={
                "status": SymbolStatus.FAILED,
                "code": code,
                "reason": f"not published ({fate})",
                "signal": None,
            }
        )


def symbol_result(
    symbol: str, status: SymbolStatus, code: Code, reason: str | None = None, **kw: Any
) -> SymbolResult:
    """A symbol's result, for the steps that decide it without analyzing (paused, locked)."""
    return SymbolResult(symbol=symbol, status=status, code=code, reason=reason, **kw)


class Admission:
    """Whether the run may start one more symbol: not stopping, credentials good, budget left,
    breaker closed or a probe left, and time enough before the deadline."""

    def __init__(
        self,
        run: Run,
        decision: Decision,
        tally: Tally,
        probes: int | None,
        spent_today: float,
        control: Control,
    ) -> None:
        self.run = run
        self.tally = tally
        self.spent_today = spent_today
        self.probes = probes
        self.control = control
        plan = decision.plan
        p95 = plan.p95_ms / 1000.0
        #: How long a symbol is expected to take: recent p95, capped by the timeout.
        self.estimate = min(plan.symbol_timeout, p95) if p95 > 0 else min(plan.symbol_timeout, 1.0)

    def refusal(self) -> Code | None:
        """Why the next symbol may not start, or None."""
        budget = self.run.settings.analyzer.daily_budget_usd
        if self.control.stopping.is_set():
            return Code.SHUTDOWN
        if self.tally.auth_failure:
            return Code.AUTH_FAILED
        if budget is not None and self.spent_today + self.tally.spent_usd >= budget:
            return Code.BUDGET
        if self.tally.breaker.state is State.OPEN:
            return Code.BREAKER_OPEN
        if self.probes is not None:
            if self.probes <= 0:
                return Code.BREAKER_HALF_OPEN
            self.probes -= 1
        if self.run.deadline.remaining() < self.estimate:
            return Code.DEADLINE
        return None


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
    """Run each symbol's chain in a sliding window of the planned concurrency; a chain for each,
    to be settled (``Chain.settle``) once the publisher is closed.

    A symbol starts only while ``Admission`` allows; one refused gets a ``not_started`` result.
    ``tally`` collects what the chains learn.
    """
    clock = run.deps.clock
    plan = decision.plan
    cfg = run.settings.circuit_breaker.llm_service
    admission = Admission(run, decision, tally, probes, spent_today, control)
    limiter = run.store.rate_limiter(run.deps.analyzer.remote)
    chains = {s: Chain(s) for s in symbols}

    def admit(symbol: str) -> str | None:
        return admission.refusal()

    def refused(symbol: str, why: str) -> Chain:
        code = Code(why)
        if code is Code.DEADLINE and control.stopping.is_set():
            code = Code.SHUTDOWN  # the grace period ran out, not the cycle's own deadline
        if code is Code.BREAKER_OPEN:
            tally.rejected += 1
        chain = chains[symbol]
        chain.result = symbol_result(symbol, SymbolStatus.NOT_STARTED, code, code.value)
        return chain

    def interrupted(symbol: str) -> Chain:
        chain = chains[symbol]
        if chain.result is None:  # cut off while analyzing (a publish in flight settles later)
            code = Code.SHUTDOWN if control.stopping.is_set() else Code.DEADLINE
            began = chain.began if chain.began is not None else clock.monotonic()
            chain.result = symbol_result(
                symbol,
                SymbolStatus.TIMEOUT,
                code,
                code.value,
                attempts=1,
                duration_ms=int((clock.monotonic() - began) * 1000),
            )
        return chain

    def on_start(symbol: str) -> None:
        chains[symbol].began = clock.monotonic()
        if progress:
            progress("start", symbol, None)

    def on_done(symbol: str, chain: Chain) -> None:
        if progress:
            progress("done", symbol, chain.settle())

    def learn(result: SymbolResult) -> None:
        now = clock.now().timestamp()
        event = None
        if result.status is SymbolStatus.OK:
            event = Event.SUCCESS
        elif result.outage and result.status in (SymbolStatus.FAILED, SymbolStatus.TIMEOUT):
            event = Event.FAILURE
        if event is not None:
            tally.events.append((event, now))
            before = tally.breaker.state
            tally.breaker = breaker.transition(tally.breaker, event, now, cfg)
            if tally.breaker.state is State.OPEN and before is not State.OPEN:
                log.warning("circuit breaker opened: starting no more symbols this cycle")

    async def work(symbol: str) -> Chain:
        chain = chains[symbol]
        chain.result = result = await _analyze_one(run, symbol, plan.symbol_timeout, tally, limiter, holding)
        learn(result)
        if result.signal is not None:
            lock = holding.locks[symbol]
            target = signal_target(run.keys, run.settings.publish.stream_maxlen)
            chain.publishing = holding.publisher.submit(
                Pending(result.signal.id, symbol, result.signal.to_json(), lock.key, lock.value, target)
            )
            await asyncio.shield(chain.publishing)
        return chain

    window = SlidingWindow(
        work,
        limit=plan.concurrency,
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
        log.warning("cycle deadline reached with %d symbol(s) unfinished", len(window.in_flight))
    return chains


async def _analyze_one(
    run: Run,
    symbol: str,
    symbol_timeout: float,
    tally: Tally,
    limiter: RateLimiter | None,
    holding: Holding,
) -> SymbolResult:
    """Market data, then the analyzer with retries; always returns a result, never raises."""
    settings, deps, clock = run.settings, run.deps, run.deps.clock
    began = clock.monotonic()
    attempts = 0

    def elapsed_ms() -> int:
        return int((clock.monotonic() - began) * 1000)

    retrying = retries.policy(
        max_attempts=settings.retry.max_attempts,
        delay_seconds=settings.retry.delay_seconds,
        deadline=run.deadline,
        min_attempt=min(symbol_timeout, 1.0),
        sleep=_sleep_within(run),
    )
    try:
        budget = min(symbol_timeout, run.deadline.remaining())
        try:
            async with asyncio.timeout(budget):
                candles = await deps.market.candles(symbol, run.minute, settings.market.candles)
        except TimeoutError as exc:
            raise AttemptTimeout(f"market data for {symbol} took longer than {budget:.1f}s") from exc
        analysis: Analysis | None = None
        async for attempt in retrying:
            with attempt:
                attempts += 1
                if min(symbol_timeout, run.deadline.remaining()) <= 0:
                    raise AttemptTimeout("no time left before the cycle deadline")
                await _take_slot(run, limiter, symbol_timeout)
                budget = min(symbol_timeout, run.deadline.remaining())
                request = AnalysisRequest(
                    symbol=symbol,
                    candles=candles,
                    scheduled_minute=run.minute,
                    timeout=budget,
                    cycle_id=run.owner.cycle_id,
                    attempt=attempts,
                )
                call_began = clock.monotonic()
                if deps.analyzer.remote:
                    tally.remote_calls += 1
                try:
                    async with asyncio.timeout(budget):
                        analysis = check_symbol(request, await deps.analyzer.analyze(request))
                except RateLimited as exc:
                    if limiter is not None and exc.retry_after:
                        await limiter.pause(clock.now().timestamp(), exc.retry_after)
                    raise
                except TimeoutError as exc:
                    tally.latencies.append((clock.now().timestamp(), budget * 1000))
                    raise AttemptTimeout(f"analysis took longer than {budget:.1f}s") from exc
                tally.latencies.append((clock.now().timestamp(), (clock.monotonic() - call_began) * 1000))
        assert analysis is not None
    except Exception as exc:  # every failure costs this symbol only, never the cycle
        return _failure(tally, symbol, exc, attempts, elapsed_ms())

    if analysis.cost_usd:
        tally.spent_usd += analysis.cost_usd
    signal = Signal(
        id=signal_id(symbol, run.minute),
        symbol=symbol,
        action=analysis.action,
        confidence=analysis.confidence,
        reasoning=analysis.reasoning,
        price=analysis.price,
        generated_at=iso_ms(clock.now()),
        cycle_id=run.owner.cycle_id,
        instance_id=run.owner.instance_id,
        analyzer=analysis.analyzer,
        model=analysis.model,
        latency_ms=elapsed_ms(),
        fencing_token=holding.locks[symbol].token,
        requested_model=analysis.requested_model,
        prompt_hash=analysis.prompt_hash,
        tokens_in=analysis.tokens_in,
        tokens_out=analysis.tokens_out,
        cost_usd=analysis.cost_usd,
    )
    return symbol_result(
        symbol, SymbolStatus.OK, Code.OK, None, attempts=attempts, duration_ms=elapsed_ms(), signal=signal
    )


def _failure(tally: Tally, symbol: str, exc: Exception, attempts: int, duration_ms: int) -> SymbolResult:
    """The result of a symbol whose analysis failed with ``exc``."""
    if isinstance(exc, ValidationError):  # the analyzer built an invalid Analysis
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
            tally.auth_failure = f"analyzer refused our credentials: {exc}"
    elif isinstance(exc, RedisUnavailable):
        code, reason, outage = Code.REDIS, f"redis: {exc}", False
    else:  # an analyzer bug: log it whole, once
        log.error("unexpected error analyzing %s", symbol, exc_info=exc)
    return symbol_result(
        symbol,
        status,
        code,
        reason,
        attempts=attempts,
        duration_ms=duration_ms,
        outage=outage,
        symbol_fault=fault,
    )


async def _take_slot(run: Run, limiter: RateLimiter | None, symbol_timeout: float) -> None:
    """Wait for a shared rate-limit slot, or raise ``RateLimited`` if none comes in time."""
    if limiter is None:
        return
    min_attempt = min(symbol_timeout, 1.0)
    granted, wait = await limiter.reserve(
        run.deps.clock.now().timestamp(), run.deadline.remaining() - min_attempt
    )
    if not granted:
        raise RateLimited(f"no rate-limit slot within the cycle deadline (next in {wait:.1f}s)", wait)
    if wait > 0:
        await asyncio.sleep(wait)


def _sleep_within(run: Run) -> Callable[[float], Any]:
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(min(seconds, run.deadline.remaining()))

    return sleep
