"""Step 5 of a cycle: analyze the symbols in a sliding window of bounded concurrency.

Each symbol gets its market data, then the analyzer with retries, within its own timeout and the
cycle's deadline, behind the shared rate limit and the circuit breaker. A signal goes to the
publisher as soon as it is ready. A failure costs its symbol only and becomes its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from runner import breaker, retries
from runner.analyzers.base import AnalysisRequest, check_symbol
from runner.breaker import Event
from runner.clock import iso_ms
from runner.errors import (
    AnalyzerError,
    AuthError,
    InvalidOutput,
    RateLimited,
    RedisUnavailable,
    TransientError,
)
from runner.models import Analysis, Signal, SymbolResult, SymbolStatus
from runner.publish import Pending, Publisher
from runner.run import Control, RunState
from runner.scheduler import SlidingWindow

log = logging.getLogger(__name__)


class AttemptTimeout(TransientError):
    """One analysis attempt ran out of time."""

    reason = "timeout"


def signal_id(symbol: str, minute: datetime) -> str:
    """The signal's idempotency key: one per symbol and scheduled minute."""
    return f"{symbol}:{minute:%Y-%m-%dT%H:%M}"


def symbol_result(symbol: str, status: SymbolStatus, reason: str | None = None, **kw: Any) -> SymbolResult:
    """A symbol's result, for the steps that decide it without analyzing (paused, locked)."""
    return SymbolResult(symbol=symbol, status=status, reason=reason, **kw)


async def analyze_all(
    run: RunState,
    symbols: list[str],
    publisher: Publisher,
    control: Control,
    progress: Callable[[str, str, SymbolResult | None], None] | None,
) -> dict[str, SymbolResult]:
    """Analyze ``symbols`` in a sliding window of the planned concurrency; a result for each.

    A symbol starts only while the run admits it (not stopping, breaker closed or a probe left,
    budget and deadline permitting); one refused gets a ``not_started`` result.
    """
    settings, clock = run.settings, run.deps.clock
    plan = run.decision.plan
    cfg = settings.circuit_breaker.llm_service
    estimate = _estimate_seconds(run)
    starts: dict[str, float] = {}

    def admit(symbol: str) -> str | None:
        if control.stopping.is_set():
            return "shutdown"
        if run.auth_failure:
            return "auth_failed"
        budget = settings.analyzer.daily_budget_usd
        if budget is not None and run.spent_before + run.spent_usd >= budget:
            return "budget"
        if run.breaker_live.state == "open":
            return "breaker_open"
        if run.probes_left is not None:
            if run.probes_left <= 0:
                return "breaker_half_open"
            run.probes_left -= 1
        if run.deadline.remaining() < estimate:
            return "deadline"
        return None

    def refused(symbol: str, reason: str) -> SymbolResult:
        if reason == "deadline" and control.stopping.is_set():
            reason = "shutdown"  # the grace period ran out, not the cycle's own deadline
        if reason == "breaker_open":
            run.rejected += 1
        return symbol_result(symbol, SymbolStatus.NOT_STARTED, reason)

    def interrupted(symbol: str) -> SymbolResult:
        began = starts.get(symbol, clock.monotonic())
        reason = "shutdown" if control.stopping.is_set() else "deadline"
        return symbol_result(
            symbol,
            SymbolStatus.TIMEOUT,
            reason,
            attempts=1,
            duration_ms=int((clock.monotonic() - began) * 1000),
        )

    def on_start(symbol: str) -> None:
        starts[symbol] = clock.monotonic()
        if progress:
            progress("start", symbol, None)

    def on_done(symbol: str, result: SymbolResult) -> None:
        now = clock.now().timestamp()
        event = None
        if result.status is SymbolStatus.OK:
            event = Event.SUCCESS
        elif result.outage and result.status in (SymbolStatus.FAILED, SymbolStatus.TIMEOUT):
            event = Event.FAILURE
        if event is not None:
            run.events.append((event, now))
            before = run.breaker_live.state
            run.breaker_live = breaker.transition(run.breaker_live, event, now, cfg)
            if run.breaker_live.state == "open" and before != "open":
                log.warning("circuit breaker opened: starting no more symbols this cycle")
        if result.signal is not None and not run.dry_run:
            lock = run.locks[symbol]
            publisher.submit(Pending(result.signal, lock.key, lock.value))
        if progress:
            progress("done", symbol, result)

    async def work(symbol: str) -> SymbolResult:
        return await _analyze_one(run, symbol, plan.symbol_timeout)

    window = SlidingWindow(
        work,
        limit=plan.concurrency,
        admit=admit,
        refused=refused,
        interrupted=interrupted,
        on_start=on_start,
        on_done=on_done,
    )
    hard_stop = run.deadline.remaining() + 1.0
    try:
        async with asyncio.timeout(hard_stop) as t:
            control._timeouts.append(t)
            await window.run(symbols, cancelled_reason="deadline")
    except TimeoutError:
        log.warning("cycle deadline reached with %d symbol(s) unfinished", len(window.in_flight))
    finally:
        with contextlib.suppress(ValueError):
            control._timeouts.remove(t)
    return dict(window.results)


def _estimate_seconds(run: RunState) -> float:
    """How long a symbol is expected to take, for admission: recent p95, capped by the timeout."""
    p95 = run.decision.plan.p95_ms / 1000.0
    timeout = run.decision.plan.symbol_timeout
    return min(timeout, p95) if p95 > 0 else min(timeout, 1.0)


async def _analyze_one(run: RunState, symbol: str, symbol_timeout: float) -> SymbolResult:
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
        except TimeoutError:
            raise AttemptTimeout(f"market data for {symbol} took longer than {budget:.1f}s") from None
        analysis: Analysis | None = None
        async for attempt in retrying:
            with attempt:
                attempts += 1
                budget = min(symbol_timeout, run.deadline.remaining())
                if budget <= 0:
                    raise AttemptTimeout("no time left before the cycle deadline")
                request = AnalysisRequest(
                    symbol=symbol,
                    candles=candles,
                    scheduled_minute=run.minute,
                    timeout=budget,
                    cycle_id=run.owner.cycle_id,
                    attempt=attempts,
                )
                await _take_slot(run, symbol_timeout)
                budget = min(symbol_timeout, run.deadline.remaining())
                request = replace(request, timeout=budget)
                call_began = clock.monotonic()
                if deps.analyzer.remote:
                    run.remote_calls += 1
                try:
                    async with asyncio.timeout(budget):
                        analysis = check_symbol(request, await deps.analyzer.analyze(request))
                except RateLimited as exc:
                    if run.limiter is not None and exc.retry_after:
                        await run.limiter.pause(clock.now().timestamp(), exc.retry_after)
                    raise
                except TimeoutError:
                    run.latencies.append((clock.now().timestamp(), budget * 1000))
                    raise AttemptTimeout(f"analysis took longer than {budget:.1f}s") from None
                run.latencies.append((clock.now().timestamp(), (clock.monotonic() - call_began) * 1000))
        assert analysis is not None
    except Exception as exc:  # every failure costs this symbol only, never the cycle
        return _failure(run, symbol, exc, attempts, elapsed_ms())

    if analysis.cost_usd:
        run.spent_usd += analysis.cost_usd
    lock = run.locks.get(symbol)
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
        fencing_token=lock.token if lock else 0,
        requested_model=analysis.requested_model,
        prompt_hash=analysis.prompt_hash,
        tokens_in=analysis.tokens_in,
        tokens_out=analysis.tokens_out,
        cost_usd=analysis.cost_usd,
    )
    return symbol_result(
        symbol, SymbolStatus.OK, None, attempts=attempts, duration_ms=elapsed_ms(), signal=signal
    )


def _failure(run: RunState, symbol: str, exc: Exception, attempts: int, duration_ms: int) -> SymbolResult:
    """The result of a symbol whose analysis failed with ``exc``."""
    if isinstance(exc, ValidationError):  # the analyzer built an invalid Analysis
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        exc = InvalidOutput(f"{where}: {first['msg']}")
    status, reason, outage, fault = SymbolStatus.FAILED, f"error: {type(exc).__name__}: {exc}", True, False
    if isinstance(exc, AttemptTimeout):
        status, reason = SymbolStatus.TIMEOUT, str(exc)
    elif isinstance(exc, RateLimited):
        status, reason, outage = SymbolStatus.RATE_LIMITED, str(exc), False
    elif isinstance(exc, AnalyzerError):
        reason, outage, fault = f"{exc.reason}: {exc}", exc.outage, exc.symbol_fault
        if isinstance(exc, AuthError):
            run.auth_failure = f"analyzer refused our credentials: {exc}"
    elif isinstance(exc, RedisUnavailable):
        reason, outage = f"redis: {exc}", False
    else:  # an analyzer bug: log it whole, once
        log.error("unexpected error analyzing %s", symbol, exc_info=exc)
    return symbol_result(
        symbol, status, reason, attempts=attempts, duration_ms=duration_ms, outage=outage, symbol_fault=fault
    )


async def _take_slot(run: RunState, symbol_timeout: float) -> None:
    """Wait for a shared rate-limit slot, or raise ``RateLimited`` if none comes in time."""
    if run.limiter is None:
        return
    min_attempt = min(symbol_timeout, 1.0)
    granted, wait = await run.limiter.reserve(
        run.deps.clock.now().timestamp(), run.deadline.remaining() - min_attempt
    )
    if not granted:
        raise RateLimited(f"no rate-limit slot within the cycle deadline (next in {wait:.1f}s)", wait)
    if wait > 0:
        await asyncio.sleep(wait)


def _sleep_within(run: RunState) -> Callable[[float], Any]:
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(min(seconds, run.deadline.remaining()))

    return sleep
