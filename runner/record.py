"""The end of every cycle: write its outcome and release what it holds (one script), copy what
is new to the PostgreSQL archive when there is one, then export the metrics and announce what
changed, side by side. ``conclude`` is the one way a cycle ends, whatever the exit;
``plan_record``, ``cycle_gauges`` and ``plan_notices`` are its pure parts. A failure to record,
archive, export or notify is a warning on the outcome, never the cycle's failure, and the lease
is free before anything is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from runner import adaptive, breaker, notify
from runner.analysis import Tally
from runner.breaker import BreakerState, Event
from runner.config import Settings, redact_url
from runner.errors import Code, ExitCode, RedisRefused, RedisUnavailable, one_line
from runner.guards import Decision, Snapshot
from runner.metrics import Increments, series
from runner.models import CycleStatus, Outcome, SymbolResult, SymbolStatus
from runner.run import Run
from runner.store.locks import LockResult, LockStatus, Owner
from runner.store.state import RecordResult

if TYPE_CHECKING:
    from runner.archive.step import Archived

log = logging.getLogger(__name__)


@dataclass
class RecordPlan:
    """What recording a cycle writes (the record script's payload) and what it concluded."""

    payload: dict[str, Any]
    #: The locks the run still owns, released by the script (aligned with ``lock_values``).
    lock_keys: list[str]
    #: The cycle's start, in seconds since the epoch: the time stamped on what is written.
    now: float
    #: This run's breaker events, with a failure added when the model answered garbage throughout.
    breaker_events: list[tuple[Event, float]] = field(default_factory=list)
    #: The overruns just started a backpressure cooldown.
    cooling: bool = False
    #: The symbols whose pending outcomes the script scores (aligned with ``outcomes.prices``).
    outcome_symbols: list[str] = field(default_factory=list)
    #: The shard's failed-cycle streak as written (None: left as it was).
    streak: notify.Streak | None = None


#: How long a symbol's pending signals are kept when no cycle runs it: a day past the longest horizon.
PENDING_KEEP_SECONDS = 24 * 3600
#: How long a day's outcome totals are kept (what ``runner scorecard --since`` can reach back to).
OUTCOME_DAYS_KEPT = 92


def plan_outcomes(
    settings: Settings, outcome: Outcome, tally: Tally | None
) -> tuple[list[str], dict[str, Any] | None]:
    """What the record script scores and what it keeps pending (pure): every symbol whose candles
    the cycle fetched is scored against them; every signal published now waits for its horizons."""
    cfg = settings.outcomes
    if not cfg.enabled or tally is None or not tally.closes:
        return [], None
    symbols = sorted(tally.closes)
    index = {s: i + 1 for i, s in enumerate(symbols)}
    minute = datetime.fromisoformat(outcome.scheduled_minute + ":00+00:00").timestamp()
    new = []
    for signal in outcome.signals:
        if signal.symbol not in index:
            continue
        _, closes = tally.closes[signal.symbol]
        entry = closes[-1] if closes else None
        if entry is None:
            continue  # no close at the signal's own minute: nothing to measure from, never guessed
        new.append(
            {
                "i": index[signal.symbol],
                "minute": minute,
                "id": signal.id,
                "model": (signal.model or signal.analyzer).replace("|", "/"),
                "action": signal.action,
                "confidence": signal.confidence,
                "entry": entry,
                "cost": signal.cost_usd or 0.0,
            }
        )
    return symbols, {
        "fee": cfg.fee_bps / 10_000,
        "horizons": cfg.horizons_minutes,
        "keep": PENDING_KEEP_SECONDS + max(cfg.horizons_minutes) * 60,
        "day_ttl": OUTCOME_DAYS_KEPT * 86_400,
        "maxlen": settings.publish.stream_maxlen,
        "prices": [{"symbol": s, "first": tally.closes[s][0], "closes": tally.closes[s][1]} for s in symbols],
        "new": new,
    }


def model_broken(results: list[SymbolResult]) -> bool:
    """Every analyzed symbol answered garbage: the model is broken (an outage for the breaker), and
    no symbol is to blame, so none is paused for it."""
    analyzed = [r for r in results if r.attempts]
    return len(analyzed) >= 2 and all(r.code is Code.INVALID_OUTPUT for r in analyzed)


def skipped_label(result: SymbolResult) -> str:
    """The ``reason`` label of ``signal_generation_skipped_total`` for a symbol without a signal."""
    if result.status in (SymbolStatus.FAILED, SymbolStatus.NOT_STARTED):
        return result.code.value
    return result.status.value


def plan_record(
    settings: Settings,
    owner: Owner,
    outcome: Outcome,
    snap: Snapshot,
    *,
    tally: Tally | None = None,
    locks: Mapping[str, LockResult] | None = None,
    want_counters: bool = False,
) -> RecordPlan:
    """Everything the record script writes for this outcome (pure). ``tally`` and ``locks`` are
    the analysis step's; a cycle skipped before it has neither."""
    now = outcome.started_at.timestamp()
    lease = snap.owned_lease
    inc = Increments()
    updates: list[dict[str, Any]] = []
    backpressure_fields: dict[str, str] | None = None
    breaker_payload: dict[str, Any] | None = None
    plan = RecordPlan(payload={}, lock_keys=[], now=now)
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
    broken = model_broken(outcome.results)
    for r in outcome.results:
        if r.status is SymbolStatus.OK and r.signal is not None and r.signal.id in published:
            inc.inc("signal_generation_total", {"symbol": r.symbol, "action": r.signal.action})
        elif r.status is not SymbolStatus.OK:
            inc.inc("signal_generation_skipped_total", {"symbol": r.symbol, "reason": skipped_label(r)})
        for stage, stage_status in r.stages.items():
            inc.inc("pipeline_stage_total", {"stage": stage, "status": stage_status.value})
        for stage, took in r.timings.items():
            inc.observe("pipeline_stage_duration_seconds", took / 1000, {"stage": stage})
        analyzed = (SymbolStatus.OK, SymbolStatus.FAILED, SymbolStatus.TIMEOUT, SymbolStatus.UNCONFIRMED)
        if r.status in analyzed and r.attempts:
            inc.observe("symbol_processing_duration_seconds", r.duration_ms / 1000, {"symbol": r.symbol})
            updates.append(
                {
                    "symbol": r.symbol,
                    "ok": r.status is SymbolStatus.OK,
                    "status": r.status.value,
                    "code": r.code.value,
                    "reason": r.reason or "",
                    "duration_ms": r.duration_ms,
                    "fault": r.symbol_fault and not broken,
                    "at": now,
                    "action": r.signal.action if r.signal else None,
                    "stages": {stage: st.value for stage, st in r.stages.items()},
                }
            )
    if outcome.report_status is not None and outcome.report_reason != "off":
        inc.inc("pipeline_stage_total", {"stage": "report", "status": outcome.report_status.value})
        if outcome.report_ms:
            inc.observe("pipeline_stage_duration_seconds", outcome.report_ms / 1000, {"stage": "report"})
    if lease is not None:
        plan.streak = notify.next_streak(snap.failing, outcome)
    if outcome.status is CycleStatus.FAILED:
        inc.inc("cycle_failures_total")
    if outcome.status is not CycleStatus.SKIPPED:
        inc.inc("cycles_total", {"status": outcome.status.value})
        inc.observe("cycle_duration_seconds", outcome.duration_ms / 1000)
    lock_values: list[str] = []
    for sym, lr in (locks or {}).items():
        if lr.owned:
            plan.lock_keys.append(lr.key)
            lock_values.append(lr.value)
            if lr.status is LockStatus.TAKEN_OVER:
                inc.inc("stale_locks_recovered_total", {"symbol": sym, "reason": lr.reason})
    latency: list[str] = []
    if tally is not None:
        for at, ms in tally.latencies:
            latency.append(f"{at:.3f}:{ms:.0f}")
            inc.observe("llm_latency_ms", ms)
        inc.observe_many("llm_latency_ms", tally.stage_latencies)
        overran = any(r.code is Code.DEADLINE for r in outcome.results) or (
            outcome.duration_ms / 1000 > settings.timeouts.total_timeout_seconds
        )
        bp, plan.cooling = adaptive.after_cycle(snap.backpressure, overran, settings.adaptive)
        if plan.cooling:
            inc.inc("backpressure_cooldowns_total")
        if lease is not None:
            backpressure_fields = bp.to_fields()
        plan.breaker_events = list(tally.events)
        if broken:
            plan.breaker_events.append((Event.FAILURE, now))
        if plan.breaker_events:
            new = breaker.replay(
                tally.breaker_base, plan.breaker_events, settings.circuit_breaker.llm_service
            )
            breaker_payload = {"expected": tally.breaker_base.version, "fields": _fields(new)}
        if tally.rejected:
            inc.inc("circuit_breaker_rejected_total", {"breaker": "llm_service"}, tally.rejected)
    plan.outcome_symbols, outcomes = plan_outcomes(settings, outcome, tally)
    plan.payload = {
        "outcomes": outcomes,
        "summary": json.dumps(outcome.summary(), separators=(",", ":")),
        "last": outcome.model_dump_json(exclude={"stats"}),
        "symbols": updates,
        "pause_after": settings.adaptive.pause_after_failures,
        "latency": latency,
        "latency_keep": max(settings.adaptive.latency_window_size * 5, 50),
        "backpressure": backpressure_fields,
        "failing": plan.streak.to_fields() if plan.streak is not None else None,
        "counters": inc.values,
        "last_success": now if any(r.status is SymbolStatus.OK for r in outcome.results) else None,
        "lease_value": lease.value if lease else "",
        "release_heartbeat": True,
        "cycle_id": owner.cycle_id,
        "lock_values": lock_values,
        "breaker": breaker_payload,
        "spend": {"usd": tally.spent_usd if tally else 0.0, "calls": tally.remote_calls if tally else 0},
        "want_counters": want_counters,
    }
    return plan


def cycle_gauges(
    settings: Settings,
    outcome: Outcome,
    decision: Decision,
    record: RecordResult,
    minute: datetime,
    snap: Snapshot,
    *,
    tally: Tally | None = None,
    locks: Mapping[str, LockResult] | None = None,
) -> dict[str, float]:
    """The gauges describing the cycle that just ended (pure)."""
    started = outcome.started_at.timestamp()
    state = record.breaker.state if record.breaker else breaker.State.CLOSED
    p95 = decision.plan.p95_ms
    if tally is not None and tally.latencies:
        fresh = [adaptive.Sample(at, ms) for at, ms in sorted(tally.latencies, reverse=True)]
        window = adaptive.recent(fresh + snap.samples, started, settings.adaptive)
        p95 = adaptive.percentile(window, 0.95)
    gauges = {
        "signals_generated_last_cycle": float(len(outcome.signals)),
        "active_locks": float(sum(1 for lr in (locks or {}).values() if lr.owned)),
        "symbols_processing": float(sum(1 for r in outcome.results if r.attempts)),
        series(
            "circuit_breaker_state", {"breaker": "llm_service", "state": state.value}
        ): breaker.STATE_VALUE[state],
        "adaptive_batch_size": float(decision.plan.concurrency),
        "current_p95_latency_ms": float(p95),
        "autonomous_runner_last_cycle_timestamp": started,
        "autonomous_runner_start_lag_seconds": max(0.0, started - minute.timestamp()),
        "autonomous_runner_last_cycle_exit_code": float(outcome.exit_code),
    }
    if record.last_success is not None:
        gauges["autonomous_runner_last_success_timestamp"] = record.last_success
    for symbol, horizon, count, hits in record.hit_ratios:
        if count > 0:
            labels = {"symbol": symbol, "horizon": str(horizon)}
            gauges[series("signal_outcome_hit_ratio", labels)] = hits / count
    return gauges


async def conclude(
    run: Run,
    outcome: Outcome,
    snap: Snapshot,
    decision: Decision,
    *,
    tally: Tally | None = None,
    locks: Mapping[str, LockResult] | None = None,
) -> Outcome:
    """Record the outcome, release what the run holds and export the metrics; returns the outcome
    (with any warning these steps had). A dry run's store records nothing, so nothing is pushed."""
    settings = run.settings
    plan = plan_record(
        settings,
        run.owner,
        outcome,
        snap,
        tally=tally,
        locks=locks,
        want_counters=run.exports.wanted(settings),
    )
    if plan.cooling:
        log.warning(
            "backpressure: %d overrun cycles in a row; skipping the next %d",
            settings.adaptive.backpressure_max_overruns,
            settings.adaptive.cooldown_cycles,
        )
    record = await _record(run, outcome, plan)
    if record is None:
        return outcome
    archived = await _archive(run, outcome)
    steps = []
    if run.exports.wanted(settings):
        gauges = cycle_gauges(settings, outcome, decision, record, run.minute, snap, tally=tally, locks=locks)
        if archived is not None:
            if archived.counters:
                record.counters = archived.counters
            if archived.ok_at is not None:
                gauges["archive_last_success_timestamp"] = archived.ok_at
        steps.append(_export(run, outcome, record, gauges))
    if settings.notify.urls:
        steps.append(_notify(run, outcome, plan_notices(run, outcome, snap, record, plan)))
    await asyncio.gather(*steps)
    return outcome


def plan_notices(
    run: Run, outcome: Outcome, snap: Snapshot, record: RecordResult, plan: RecordPlan
) -> list[notify.Notice]:
    """The transitions between the state the cycle began with and the state it recorded (pure)."""
    settings = run.settings
    before = notify.Facts(
        breaker=snap.breaker,
        paused=snap.paused,
        kill_switch=snap.kill_switch,
        spend_usd=snap.spend_usd,
        streak=snap.failing,
    )
    after = notify.Facts(
        breaker=record.breaker or snap.breaker,
        paused=record.paused,
        kill_switch=record.kill_switch,
        spend_usd=record.spend_usd,
        streak=plan.streak if plan.streak is not None else snap.failing,
    )
    seen = notify.Seen(
        now=plan.now,
        instance_id=run.owner.instance_id,
        shard=run.shard.label,
        cycle_id=run.owner.cycle_id,
        day=f"{outcome.started_at.astimezone(UTC):%Y-%m-%d}",
        budget_usd=settings.analyzer.daily_budget_usd,
        failing_cycles=settings.notify.failing_cycles,
        pause_after=settings.adaptive.pause_after_failures,
        recovery_seconds=settings.circuit_breaker.llm_service.recovery_timeout_seconds,
        failures=notify.failure_summary(outcome),
    )
    return notify.detect(before, after, seen)


async def _notify(run: Run, outcome: Outcome, notices: list[notify.Notice]) -> None:
    """Send what changed, and whatever earlier runs could not deliver (within
    ``notify.timeout_seconds``); a failure is one warning per notification."""
    from runner.delivery import announce  # loads Apprise: only with URLs to send to

    report = await announce(
        run.deps.redis,
        run.settings,
        notices,
        shard_key=run.shard.key,
        now=run.deps.clock.now().timestamp(),
        holder=f"{run.owner.instance_id}/{run.owner.cycle_id}",
    )
    for warning in report.warnings:
        _warn(outcome, warning)


async def _archive(run: Run, outcome: Outcome) -> Archived | None:
    """The archive step, when PostgreSQL is configured (``runner/archive/step.py``)."""
    if run.settings.archive.postgres_url is None:
        return None
    from runner.archive.step import archive_step

    try:
        return await archive_step(
            run, lambda message: _warn(outcome, message), want_counters=run.exports.wanted(run.settings)
        )
    except Exception as exc:  # the archive is the long memory, never a reason to fail a cycle
        _warn(outcome, f"archive step failed: {one_line(exc)}")
        return None


async def _record(run: Run, outcome: Outcome, plan: RecordPlan) -> RecordResult | None:
    settings = run.settings
    try:
        async with asyncio.timeout(run.budget()):
            result = await run.store.record(
                plan.payload, plan.lock_keys, plan.outcome_symbols, outcome.started_at
            )
            if result is None:
                return None
            for w in result.warnings:
                log.warning("%s", w)
            for sym in result.paused_now:
                _warn(
                    outcome,
                    f"paused {sym} after {settings.adaptive.pause_after_failures} failures of its own; "
                    f"`runner resume {sym}` to resume",
                )
            if plan.payload["breaker"] is not None and not result.breaker_saved:
                result.breaker = await _save_breaker_again(run, plan.breaker_events, result.breaker)
    except (RedisUnavailable, TimeoutError) as exc:
        reason = str(exc) or "Redis did not answer before the cycle ran out of time"
        _warn(outcome, f"could not record the cycle: {reason}")
        if isinstance(exc, RedisRefused):  # every later run is refused too: the cycle fails
            await _release(run, outcome, plan)
            if outcome.error is None:
                ended_by_redis(outcome, exc)
        return None
    return result


def ended_by_redis(outcome: Outcome, reason: RedisUnavailable) -> Outcome:
    """The outcome of a cycle Redis ended early: failed (exit 3), with the one line to print."""
    outcome.status, outcome.exit_code = CycleStatus.FAILED, int(ExitCode.FAILED)
    then = "" if isinstance(reason, RedisRefused) else " (the next run looks for the master again)"
    outcome.error = f"the cycle ended early: {reason}{then}"
    return outcome


async def _release(run: Run, outcome: Outcome, plan: RecordPlan) -> None:
    """Free the locks, the lease and the heartbeat entry of a run Redis would not record (full,
    or an ACL refusing a write): deleting needs no memory, so the next run need not wait for
    their TTLs."""
    payload = plan.payload
    try:
        async with asyncio.timeout(max(run.budget(), run.settings.redis.socket_timeout_seconds)):
            await run.store.release(plan.lock_keys, payload["lock_values"], payload["lease_value"])
    except (RedisUnavailable, TimeoutError) as exc:
        reason = str(exc) or "Redis did not answer in time"
        _warn(outcome, f"could not release the locks either (their TTLs free them): {reason}")


async def _save_breaker_again(
    run: Run, events: list[tuple[Event, float]], fresh: BreakerState | None
) -> BreakerState:
    """Replay this cycle's events on the breaker another run just changed, and save again."""
    cfg = run.settings.circuit_breaker.llm_service
    state, saved = await run.store.update_breaker(
        lambda s: breaker.replay(s, events, cfg), fresh or BreakerState()
    )
    if not saved:
        log.warning("circuit breaker busy: this cycle's %d outcome(s) were not counted", len(events))
    return state


async def _export(run: Run, outcome: Outcome, record: RecordResult, gauges: dict[str, float]) -> None:
    """Push the totals and gauges (about 2 s at most); a failure is a warning, never the cycle's."""
    from runner import exposition

    settings, exports = run.settings, run.exports
    reg = exposition.build_registry(record.counters, gauges)
    if exports.on_metrics is not None:
        exports.on_metrics(reg)
    if exports.metrics_file:
        try:
            exposition.write_textfile(exports.metrics_file, reg)
        except OSError as exc:
            _warn(outcome, f"could not write the metrics file {exports.metrics_file}: {exc.strerror or exc}")
    url = settings.metrics.pushgateway_url
    if url:
        timeout = settings.metrics.push_timeout_seconds
        try:
            await asyncio.wait_for(
                asyncio.to_thread(exposition.push, url, settings.metrics.job, run.shard.key, reg, timeout),
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
