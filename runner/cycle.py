"""One cycle, end to end: the only module that knows the order of the steps.

run_cycle(settings, deps) -> Outcome
  1. identity (cycle id, instance id)            4. lock the symbols (one script)
  2. begin: heartbeat, lease, guard state (one   5. analyze in a sliding window, publishing
     script) and the guard decision (pure)          each signal as it is ready (fenced)
  3. select symbols (paused, shard, max)         6. record results and release (one script)

The core returns an ``Outcome``; only the CLI turns it into an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from runner import adaptive, breaker, logs, metrics, retries
from runner.analyzers.base import AnalysisRequest, Analyzer, check_symbol
from runner.breaker import BreakerState, Event
from runner.clock import Clock, Deadline, iso_ms, minute_floor
from runner.config import Settings, redact_url
from runner.errors import (
    AnalyzerError,
    AuthError,
    ExitCode,
    InvalidOutput,
    RateLimited,
    RedisUnavailable,
    TransientError,
    one_line,
)
from runner.guards import Decision, decide
from runner.keys import Keys
from runner.locks import Heartbeat, LockManager, LockResult, Owner
from runner.market.base import CandleSource
from runner.metrics import Increments, series

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
from runner.models import (
    Analysis,
    CycleStatus,
    Outcome,
    Signal,
    SymbolResult,
    SymbolStatus,
    decide_status,
)
from runner.publish import Pending, Publisher
from runner.ratelimit import RateLimiter
from runner.scheduler import SlidingWindow
from runner.shards import Shard, select
from runner.state import RecordResult, StateStore, lease_ttl

log = logging.getLogger(__name__)


class AttemptTimeout(TransientError):
    """One analysis attempt ran out of time."""

    reason = "timeout"


@dataclass
class Deps:
    """What a cycle talks to; tests pass fakes."""

    redis: aioredis.Redis
    analyzer: Analyzer
    market: CandleSource
    clock: Clock


@dataclass
class Control:
    """Lets a signal handler stop a running cycle gracefully."""

    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    grace_seconds: float = 30.0
    _timeouts: list[asyncio.Timeout] = field(default_factory=list)
    _deadline: Deadline | None = None

    def stop(self) -> None:
        """Start no new symbol; give in-flight ones the grace period, then cancel them."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self._deadline is not None:
            self._deadline.shorten(self.grace_seconds)
        loop = asyncio.get_running_loop()
        for t in self._timeouts:
            when = t.when()
            target = loop.time() + self.grace_seconds
            if when is None or when > target:
                t.reschedule(target)


def new_cycle_id(now: datetime) -> str:
    """Sortable: UTC time to the millisecond plus randomness."""
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def resolve_instance_id(settings: Settings) -> str:
    """``INSTANCE_ID`` (or the config), else ``HOSTNAME``, else random."""
    if settings.instance_id:
        return settings.instance_id
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    if host:
        return host
    return f"runner-{secrets.token_hex(4)}"


def scheduled_minute(settings: Settings, now: datetime) -> datetime:
    """The minute this run was scheduled for.

    The CronJob's scheduled timestamp if given, else the minute encoded at the end of the Job's
    name (``<cronjob>-<minutes since the epoch>``), else now's minute. A value more than an
    hour away from now is ignored (it cannot be this run's).
    """
    candidates: list[datetime] = []
    if settings.scheduled_at:
        try:
            parsed = datetime.fromisoformat(settings.scheduled_at.replace("Z", "+00:00"))
            if parsed.tzinfo is not None:
                candidates.append(parsed)
        except ValueError:
            log.warning("ignoring RUNNER_SCHEDULED_AT=%r: not an ISO 8601 timestamp", settings.scheduled_at)
    if settings.job_name:
        tail = settings.job_name.rsplit("-", 1)[-1]
        if tail.isdigit():
            candidates.append(datetime.fromtimestamp(int(tail) * 60, UTC))
    for candidate in candidates:
        if abs((now - candidate).total_seconds()) < 3600:
            return minute_floor(candidate.astimezone(UTC))
    return minute_floor(now)


def signal_id(symbol: str, minute: datetime) -> str:
    return f"{symbol}:{minute:%Y-%m-%dT%H:%M}"


@dataclass
class _Run:
    """Mutable state of one running cycle (kept out of the step functions' signatures)."""

    settings: Settings
    deps: Deps
    owner: Owner
    shard: Shard
    minute: datetime
    started: datetime
    deadline: Deadline
    decision: Decision
    dry_run: bool
    breaker_base: BreakerState
    breaker_live: BreakerState
    probes_left: int | None
    locks: dict[str, LockResult] = field(default_factory=dict)
    events: list[tuple[Event, float]] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    auth_failure: str | None = None
    rejected: int = 0
    limiter: RateLimiter | None = None
    samples: list[adaptive.Sample] = field(default_factory=list)
    spent_before: float = 0.0
    spent_usd: float = 0.0
    remote_calls: int = 0
    warnings: list[str] = field(default_factory=list)


async def run_cycle(
    settings: Settings,
    deps: Deps,
    *,
    symbols: list[str] | None = None,
    shard: Shard | None = None,
    dry_run: bool = False,
    control: Control | None = None,
    progress: Callable[[str, str, SymbolResult | None], None] | None = None,
    metrics_file: str | None = None,
    on_metrics: Callable[[CollectorRegistry], None] | None = None,
) -> Outcome:
    """Run one cycle and describe what happened. Raises only ``RedisUnavailable``."""
    clock = deps.clock
    control = control or Control(grace_seconds=settings.graceful_shutdown.timeout_seconds)
    shard = shard or Shard(0, 1)
    started = clock.now()
    t0 = clock.monotonic()
    deadline = Deadline(clock, settings.timeouts.total_timeout_seconds)
    control._deadline = deadline
    owner = Owner(resolve_instance_id(settings), new_cycle_id(started))
    logs.bind(cycle_id=owner.cycle_id, instance_id=owner.instance_id)
    minute = scheduled_minute(settings, started)
    keys = keys_for(settings)
    store = StateStore(deps.redis, keys, shard.key)
    exporting = bool(settings.metrics.pushgateway_url or metrics_file or on_metrics)

    def finish(status: CycleStatus, code: ExitCode, **kw: Any) -> Outcome:
        return Outcome(
            cycle_id=owner.cycle_id,
            instance_id=owner.instance_id,
            shard=shard.label,
            status=status,
            exit_code=int(code),
            started_at=iso_ms(started),
            scheduled_minute=f"{minute:%Y-%m-%dT%H:%M}",
            duration_ms=int((clock.monotonic() - t0) * 1000),
            published=not dry_run,
            **kw,
        )

    snap = await store.begin(
        owner,
        started,
        lease_ttl=lease_ttl(
            settings.timeouts.total_timeout_seconds, settings.graceful_shutdown.timeout_seconds
        ),
        stale_seconds=settings.locks.stale_threshold_seconds,
        heartbeat_ttl=settings.heartbeat.ttl_seconds,
        latency_n=settings.adaptive.latency_window_size,
        readonly=dry_run,
    )
    for w in snap.warnings:
        log.warning("%s", w)
    decision = decide(snap, settings, started)
    lease = snap.lease if (snap.lease is not None and snap.lease.owned) else None

    candidates = symbols or settings.selected_symbols()
    selected, paused = select(candidates, snap.paused, shard, settings.max_symbols if symbols else None)

    if decision.skip_reason and dry_run:
        log.warning("dry run: a scheduled cycle would skip now (%s); analyzing anyway", decision.detail)
        decision = Decision(plan=decision.plan, gate=breaker.Gate(allow=True))
    if decision.skip_reason:
        log.info("skipped: %s", decision.detail)
        outcome = finish(
            CycleStatus.SKIPPED,
            ExitCode.OK,
            skip_reason=decision.skip_reason,
            skip_detail=decision.detail,
            warnings=list(snap.warnings),
            results=[_result(s, SymbolStatus.PAUSED, "paused") for s in paused],
        )
        record = await _record(store, settings, keys, owner, outcome, None, lease, snap, decision, exporting)
        await _push_metrics(
            settings, shard, outcome, None, decision, record, minute, metrics_file, on_metrics
        )
        return outcome

    probes_left: int | None = None
    breaker_state = snap.breaker
    if decision.gate.probes is not None and not dry_run:
        breaker_state, probes_left = await _claim_probes(
            store, settings, snap.breaker, len(selected), started.timestamp()
        )
        if probes_left == 0:
            detail = "circuit breaker half-open: every probe call is taken by another run"
            outcome = finish(CycleStatus.SKIPPED, ExitCode.OK, skip_reason="breaker_open", skip_detail=detail)
            record = await _record(
                store, settings, keys, owner, outcome, None, lease, snap, decision, exporting
            )
            await _push_metrics(
                settings, shard, outcome, None, decision, record, minute, metrics_file, on_metrics
            )
            return outcome
        log.info("circuit breaker half-open: probing with %d call(s)", probes_left)

    run = _Run(
        settings=settings,
        deps=deps,
        owner=owner,
        shard=shard,
        minute=minute,
        started=started,
        deadline=deadline,
        decision=decision,
        dry_run=dry_run,
        breaker_base=breaker_state,
        breaker_live=breaker_state,
        probes_left=probes_left,
        warnings=list(snap.warnings),
        limiter=RateLimiter(deps.redis, keys, settings.rate_limit.requests_per_minute)
        if deps.analyzer.remote and not dry_run
        else None,
        spent_before=snap.spend_usd,
        samples=snap.samples,
    )
    heartbeat = Heartbeat(
        deps.redis, keys, owner, clock, settings.heartbeat.ttl_seconds, settings.heartbeat.interval_seconds
    )
    lock_manager = LockManager(
        deps.redis, keys, owner, clock, settings.locks.ttl_seconds, settings.locks.stale_threshold_seconds
    )
    # Publishing, recording and releasing may run a little past the deadline, never past this.
    wind_down = min(settings.graceful_shutdown.timeout_seconds / 2, 5.0)

    def budget() -> float:
        return max(0.05, deadline.at + wind_down - clock.monotonic())

    publisher = Publisher(deps.redis, keys, settings.publish.stream_maxlen, budget)
    results: dict[str, SymbolResult] = {}
    try:
        if not dry_run:
            heartbeat.start()
            run.locks = await lock_manager.acquire(selected)
            for sym, lr in run.locks.items():
                if lr.status == "taken_over":
                    was = lr.previous_owner()
                    log.warning(
                        "took over the stale lock of %s (%s; held by %s, cycle %s)",
                        sym,
                        lr.reason,
                        was.get("instance_id", "?"),
                        was.get("cycle_id", "?"),
                    )
            publisher.start()
        runnable = [s for s in selected if dry_run or run.locks[s].owned]
        for s in selected:
            if not dry_run and not run.locks[s].owned:
                holder = run.locks[s].owner()
                results[s] = _result(
                    s,
                    SymbolStatus.LOCKED,
                    f"held by {holder.get('instance_id', '?')} (cycle {holder.get('cycle_id', '?')})",
                )
        if progress:
            progress("plan", str(len(runnable)), None)
        results.update(await _analyze_all(run, runnable, publisher, control, progress))
    finally:
        await heartbeat.stop(within=min(settings.redis.socket_timeout_seconds + 1, budget()))
        if not dry_run:
            await publisher.close()
    if publisher.errors:
        run.warnings.append(f"publishing failed: {publisher.errors[0]}")

    ordered = [results[s] for s in selected] + [_result(s, SymbolStatus.PAUSED, "paused") for s in paused]
    signals: list[Signal] = []
    for r in ordered:
        if r.signal is None:
            continue
        fate = "published" if dry_run else publisher.outcomes.get(r.signal.id, "error")
        if fate == "published":
            signals.append(r.signal)
        elif fate == "duplicate":
            r.reason = "already published this minute"
        elif fate != "published":
            r.status, r.reason, r.signal = SymbolStatus.FAILED, f"not published ({fate})", None
    status, code, skip_reason = decide_status(ordered)
    if publisher.errors and not signals:
        status, code = CycleStatus.FAILED, ExitCode.FAILED
    if run.auth_failure and not any(r.status is SymbolStatus.OK for r in ordered):
        run.warnings.insert(0, run.auth_failure)
    outcome = finish(
        status,
        code,
        skip_reason=skip_reason,
        skip_detail="every selected symbol is held by a live owner" if skip_reason == "all_locked" else None,
        signals=signals,
        results=ordered,
        warnings=run.warnings,
        stats={
            "concurrency": decision.plan.concurrency,
            "symbol_timeout_seconds": decision.plan.symbol_timeout,
            "p95_ms": decision.plan.p95_ms,
            "p99_ms": decision.plan.p99_ms,
            "probes": probes_left,
        },
    )
    _log_outcome(outcome)
    if not dry_run:
        record = await _record(
            store, settings, keys, owner, outcome, run, lease, snap, decision, exporting, budget()
        )
        await _push_metrics(settings, shard, outcome, run, decision, record, minute, metrics_file, on_metrics)
    return outcome


def _log_outcome(outcome: Outcome) -> None:
    """One line for the logs: how the cycle ended and, if not well, which symbols and why."""
    ok = sum(r.status is SymbolStatus.OK for r in outcome.results)
    line = (
        f"cycle {outcome.status.value}: {ok}/{len(outcome.results)} ok, "
        f"{len(outcome.signals)} signal(s) published in {outcome.duration_ms} ms"
    )
    trouble = [r for r in outcome.results if r.status not in (SymbolStatus.OK, SymbolStatus.PAUSED)]
    if trouble:
        line += "; " + "; ".join(f"{r.symbol} {r.status.value} ({r.reason})" for r in trouble[:10])
        if len(trouble) > 10:
            line += f"; and {len(trouble) - 10} more"
    level = (
        logging.INFO
        if outcome.status is CycleStatus.COMPLETED or outcome.status is CycleStatus.SKIPPED
        else logging.WARNING
    )
    log.log(level, "%s", line)


def keys_for(settings: Settings) -> Keys:
    return Keys(
        prefix=settings.redis.key_prefix,
        stream_name=settings.publish.stream,
        channel_name=settings.publish.channel,
        latest_name=settings.publish.latest_hash,
        lock_prefix=settings.locks.redis_key_prefix,
    )


def _result(symbol: str, status: SymbolStatus, reason: str | None = None, **kw: Any) -> SymbolResult:
    return SymbolResult(symbol=symbol, status=status, reason=reason, **kw)


async def _claim_probes(
    store: StateStore, settings: Settings, state: BreakerState, wanted: int, now: float
) -> tuple[BreakerState, int]:
    cfg = settings.circuit_breaker.llm_service
    for _ in range(5):
        new, granted = breaker.claim_probes(state, wanted, now, cfg)
        if granted == 0:
            return state, 0
        saved, fresh = await store.save_breaker(state.version, new)
        if saved:
            return fresh, granted
        state = fresh
    return state, 0


async def _analyze_all(
    run: _Run,
    symbols: list[str],
    publisher: Publisher,
    control: Control,
    progress: Callable[[str, str, SymbolResult | None], None] | None,
) -> dict[str, SymbolResult]:
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
        return _result(symbol, SymbolStatus.NOT_STARTED, reason)

    def interrupted(symbol: str) -> SymbolResult:
        began = starts.get(symbol, clock.monotonic())
        reason = "shutdown" if control.stopping.is_set() else "deadline"
        return _result(
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


def _estimate_seconds(run: _Run) -> float:
    """How long a symbol is expected to take, for admission: recent p95, capped by the timeout."""
    p95 = run.decision.plan.p95_ms / 1000.0
    timeout = run.decision.plan.symbol_timeout
    return min(timeout, p95) if p95 > 0 else min(timeout, 1.0)


async def _analyze_one(run: _Run, symbol: str, symbol_timeout: float) -> SymbolResult:
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
    return _result(symbol, SymbolStatus.OK, None, attempts=attempts, duration_ms=elapsed_ms(), signal=signal)


def _failure(run: _Run, symbol: str, exc: Exception, attempts: int, duration_ms: int) -> SymbolResult:
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
    return _result(
        symbol, status, reason, attempts=attempts, duration_ms=duration_ms, outage=outage, symbol_fault=fault
    )


async def _take_slot(run: _Run, symbol_timeout: float) -> None:
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


def _sleep_within(run: _Run) -> Callable[[float], Any]:
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(min(seconds, run.deadline.remaining()))

    return sleep


async def _record(
    store: StateStore,
    settings: Settings,
    keys: Keys,
    owner: Owner,
    outcome: Outcome,
    run: _Run | None,
    lease: LockResult | None,
    snap: Any,
    decision: Decision,
    want_counters: bool = False,
    budget: float | None = None,
) -> RecordResult | None:
    """Write the outcome and release what the run holds; a failure here is a warning."""
    now = datetime.fromisoformat(outcome.started_at.replace("Z", "+00:00")).timestamp()
    inc = Increments()
    updates: list[dict[str, Any]] = []
    latency: list[str] = []
    backpressure_fields: dict[str, str] | None = None
    breaker_payload: dict[str, Any] | None = None
    if outcome.status is CycleStatus.SKIPPED and outcome.skip_reason:
        inc.inc("cycles_skipped_total", {"reason": outcome.skip_reason})
        if outcome.skip_reason == "breaker_open":
            inc.inc("cycles_skipped_circuit_open_total")
            inc.inc("circuit_breaker_rejected_total", {"breaker": "llm_service"})
        elif outcome.skip_reason == "high_latency":
            inc.inc("cycles_skipped_high_latency_total")
        if outcome.skip_reason == "cooldown" and lease is not None:
            backpressure_fields = adaptive.after_skip_for_cooldown(snap.backpressure).to_fields()
    published = {s.id for s in outcome.signals}
    analyzed = [r for r in outcome.results if r.attempts]
    # Every symbol answered garbage: the model is broken (an outage for the breaker), and no
    # symbol is to blame, so none is paused for it.
    model_broken = len(analyzed) >= 2 and all((r.reason or "").startswith("invalid_output") for r in analyzed)
    for r in outcome.results:
        if r.status is SymbolStatus.OK and r.signal is not None and r.signal.id in published:
            inc.inc("signal_generation_total", {"symbol": r.symbol, "action": r.signal.action})
        elif r.status not in (SymbolStatus.OK,):
            inc.inc("signal_generation_skipped_total", {"symbol": r.symbol, "reason": _reason_label(r)})
        if r.status in (SymbolStatus.OK, SymbolStatus.FAILED, SymbolStatus.TIMEOUT) and r.attempts:
            inc.observe("symbol_processing_duration_seconds", r.duration_ms / 1000, {"symbol": r.symbol})
            updates.append(
                {
                    "symbol": r.symbol,
                    "ok": r.status is SymbolStatus.OK,
                    "status": r.status.value,
                    "reason": r.reason or "",
                    "duration_ms": r.duration_ms,
                    "fault": r.symbol_fault and not model_broken,
                    "at": now,
                    "action": r.signal.action if r.signal else None,
                }
            )
    if outcome.status is CycleStatus.FAILED:
        inc.inc("cycle_failures_total")
    if outcome.status is not CycleStatus.SKIPPED:
        inc.inc("cycles_total", {"status": outcome.status.value})
        inc.observe("cycle_duration_seconds", outcome.duration_ms / 1000)
    lock_keys: list[str] = []
    lock_values: list[str] = []
    if run is not None:
        for sym, lr in run.locks.items():
            if lr.owned:
                lock_keys.append(lr.key)
                lock_values.append(lr.value)
                if lr.status == "taken_over":
                    inc.inc("stale_locks_recovered_total", {"symbol": sym, "reason": lr.reason})
        for at, ms in run.latencies:
            latency.append(f"{at:.3f}:{ms:.0f}")
            inc.observe("llm_latency_ms", ms)
        overran = any(r.reason == "deadline" for r in outcome.results) or (
            outcome.duration_ms / 1000 > settings.timeouts.total_timeout_seconds
        )
        bp, cooling = adaptive.after_cycle(snap.backpressure, overran, settings.adaptive)
        if cooling:
            inc.inc("backpressure_cooldowns_total")
            log.warning(
                "backpressure: %d overrun cycles in a row; skipping the next %d",
                settings.adaptive.backpressure_max_overruns,
                settings.adaptive.cooldown_cycles,
            )
        if lease is not None:
            backpressure_fields = bp.to_fields()
        events = list(run.events)
        if model_broken:
            events.append((Event.FAILURE, now))
        if events:
            new = breaker.replay(run.breaker_base, events, settings.circuit_breaker.llm_service)
            breaker_payload = {"expected": run.breaker_base.version, "fields": _fields(new)}
            run.events = events
        if run.rejected:
            inc.inc("circuit_breaker_rejected_total", {"breaker": "llm_service"}, run.rejected)
    payload = {
        "summary": _summary_json(outcome),
        "last": outcome.model_dump_json(exclude={"stats"}),
        "symbols": updates,
        "pause_after": settings.adaptive.pause_after_failures,
        "latency": latency,
        "latency_keep": max(settings.adaptive.latency_window_size * 5, 50),
        "backpressure": backpressure_fields,
        "counters": inc.values,
        "last_success": now if any(r.status is SymbolStatus.OK for r in outcome.results) else None,
        "lease_value": lease.value if lease else "",
        "release_heartbeat": True,
        "cycle_id": owner.cycle_id,
        "lock_values": lock_values,
        "breaker": breaker_payload,
        "spend": {"usd": run.spent_usd if run else 0.0, "calls": run.remote_calls if run else 0},
        "want_counters": want_counters,
    }
    try:
        async with asyncio.timeout(budget):
            result = await store.record(
                payload,
                lock_keys=lock_keys,
                heartbeat_key=keys.heartbeat(owner.instance_id),
                spend_key=store.spend_key(datetime.fromtimestamp(now, UTC)),
            )
            for w in result.warnings:
                log.warning("%s", w)
            for sym in result.paused_now:
                msg = (
                    f"paused {sym} after {settings.adaptive.pause_after_failures} failures of its own; "
                    f"`runner resume {sym}` to resume"
                )
                log.warning("%s", msg)
                outcome.warnings.append(msg)
            if run is not None and breaker_payload is not None and not result.breaker_saved:
                result.breaker = await _save_breaker_retry(store, settings, run, result.breaker)
    except (RedisUnavailable, TimeoutError) as exc:
        reason = str(exc) or "Redis did not answer before the cycle ran out of time"
        msg = f"could not record the cycle: {reason}"
        log.warning("%s", msg)
        outcome.warnings.append(msg)
        return None
    return result


def cycle_gauges(
    outcome: Outcome, run: _Run | None, decision: Decision, record: RecordResult, minute: datetime
) -> dict[str, float]:
    """The gauges describing the cycle that just ended (pure)."""
    started = datetime.fromisoformat(outcome.started_at.replace("Z", "+00:00")).timestamp()
    state = record.breaker.state if record.breaker else "closed"
    p95 = decision.plan.p95_ms
    if run is not None and run.latencies:
        fresh = [adaptive.Sample(at, ms) for at, ms in sorted(run.latencies, reverse=True)]
        window = adaptive.recent(fresh + run.samples, started, run.settings.adaptive)
        p95 = adaptive.percentile(window, 0.95)
    gauges = {
        "signals_generated_last_cycle": float(len(outcome.signals)),
        "active_locks": float(sum(1 for lr in run.locks.values() if lr.owned) if run else 0),
        "symbols_processing": float(sum(1 for r in outcome.results if r.attempts)),
        series("circuit_breaker_state", {"breaker": "llm_service", "state": state}): breaker.STATE_VALUE[
            state
        ],
        "adaptive_batch_size": float(decision.plan.concurrency),
        "current_p95_latency_ms": float(p95),
        "autonomous_runner_last_cycle_timestamp": started,
        "autonomous_runner_start_lag_seconds": max(0.0, started - minute.timestamp()),
        "autonomous_runner_last_cycle_exit_code": float(outcome.exit_code),
    }
    if record.last_success is not None:
        gauges["autonomous_runner_last_success_timestamp"] = record.last_success
    return gauges


async def _push_metrics(
    settings: Settings,
    shard: Shard,
    outcome: Outcome,
    run: _Run | None,
    decision: Decision,
    record: RecordResult | None,
    minute: datetime,
    metrics_file: str | None,
    on_metrics: Callable[[CollectorRegistry], None] | None,
) -> None:
    """Push the totals and gauges (about 2 s at most); a failure is a warning, never the cycle's."""
    url = settings.metrics.pushgateway_url
    if record is None or not (url or metrics_file or on_metrics):
        return
    reg = metrics.registry(record.counters, cycle_gauges(outcome, run, decision, record, minute))
    if on_metrics is not None:
        on_metrics(reg)
    from runner import exposition

    if metrics_file:
        try:
            exposition.write_textfile(metrics_file, reg)
        except OSError as exc:
            _warn(outcome, f"could not write the metrics file {metrics_file}: {exc.strerror or exc}")
    if url:
        timeout = settings.metrics.push_timeout_seconds
        try:
            await asyncio.wait_for(
                asyncio.to_thread(exposition.push, url, settings.metrics.job, shard.key, reg, timeout),
                timeout + 0.5,
            )
        except Exception as exc:  # the gateway is optional: never fail a cycle over it
            _warn(outcome, f"metrics push to {redact_url(url)} failed: {one_line(exc)}")


def _warn(outcome: Outcome, message: str) -> None:
    log.warning("%s", message)
    outcome.warnings.append(message)


def _fields(state: BreakerState) -> dict[str, str]:
    f = state.to_fields()
    f.pop("version")
    return f


async def _save_breaker_retry(
    store: StateStore, settings: Settings, run: _Run, fresh: BreakerState | None
) -> BreakerState:
    cfg = settings.circuit_breaker.llm_service
    state = fresh or BreakerState()
    for _ in range(5):
        new = breaker.replay(state, run.events, cfg)
        saved, state = await store.save_breaker(state.version, new)
        if saved:
            return state
    log.warning("circuit breaker busy: this cycle's %d outcome(s) were not counted", len(run.events))
    return state


def _reason_label(r: SymbolResult) -> str:
    if r.status in (SymbolStatus.FAILED,) and r.reason:
        return r.reason.split(":", 1)[0]
    if r.status is SymbolStatus.NOT_STARTED and r.reason:
        return r.reason
    return r.status.value


def _summary_json(outcome: Outcome) -> str:
    return json.dumps(outcome.summary(), separators=(",", ":"))
