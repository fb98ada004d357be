"""One cycle, end to end: the only module that knows the order of the steps.

run_cycle(settings, deps) -> Outcome
  1. identity (cycle id, instance id)            4. lock the symbols (one script)
  2. begin: heartbeat, lease, guard state (one   5. analyze in a sliding window, publishing
     script) and the guard decision (pure)          each signal as it is ready (fenced)
  3. select symbols (paused, shard, max)         6. record results and release (one script)

Step 5 lives in ``analysis.py`` and step 6 (with the metrics) in ``record.py``; what a run
carries between the steps is in ``run.py``. The core returns an ``Outcome``; only the CLI turns
it into an exit code.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from runner import breaker, logs
from runner.analysis import analyze_all, symbol_result
from runner.breaker import BreakerState
from runner.clock import Deadline, iso_ms, minute_floor
from runner.config import Settings
from runner.errors import ExitCode
from runner.guards import Decision, decide
from runner.keys import Keys
from runner.locks import Heartbeat, LockManager, Owner
from runner.models import CycleStatus, Outcome, Signal, SymbolResult, SymbolStatus, decide_status
from runner.publish import Publisher
from runner.ratelimit import RateLimiter
from runner.record import push_metrics, record_outcome
from runner.run import Control, Deps, RunState
from runner.shards import Shard, select
from runner.state import StateStore, lease_ttl

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Control", "Deps", "keys_for", "resolve_instance_id", "run_cycle", "scheduled_minute"]

log = logging.getLogger(__name__)


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
            results=[symbol_result(s, SymbolStatus.PAUSED, "paused") for s in paused],
        )
        record = await record_outcome(store, settings, keys, owner, outcome, None, lease, snap, exporting)
        await push_metrics(settings, shard, outcome, None, decision, record, minute, metrics_file, on_metrics)
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
            record = await record_outcome(store, settings, keys, owner, outcome, None, lease, snap, exporting)
            await push_metrics(
                settings, shard, outcome, None, decision, record, minute, metrics_file, on_metrics
            )
            return outcome
        log.info("circuit breaker half-open: probing with %d call(s)", probes_left)

    run = RunState(
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
                results[s] = symbol_result(
                    s,
                    SymbolStatus.LOCKED,
                    f"held by {holder.get('instance_id', '?')} (cycle {holder.get('cycle_id', '?')})",
                )
        if progress:
            progress("plan", str(len(runnable)), None)
        results.update(await analyze_all(run, runnable, publisher, control, progress))
    finally:
        await heartbeat.stop(within=min(settings.redis.socket_timeout_seconds + 1, budget()))
        if not dry_run:
            await publisher.close()
    if publisher.errors:
        run.warnings.append(f"publishing failed: {publisher.errors[0]}")

    ordered = [results[s] for s in selected] + [
        symbol_result(s, SymbolStatus.PAUSED, "paused") for s in paused
    ]
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
        record = await record_outcome(
            store, settings, keys, owner, outcome, run, lease, snap, exporting, budget()
        )
        await push_metrics(settings, shard, outcome, run, decision, record, minute, metrics_file, on_metrics)
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
