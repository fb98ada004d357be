"""Step 6 of a cycle: write its outcome and release what it holds (one script), then export the
metrics. A failure to record or to export is a warning on the outcome, never the cycle's failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from runner import adaptive, breaker, metrics
from runner.breaker import BreakerState, Event
from runner.config import Settings, redact_url
from runner.errors import RedisUnavailable, one_line
from runner.guards import Decision, Snapshot
from runner.keys import Keys
from runner.locks import LockResult, Owner
from runner.metrics import Increments, series
from runner.models import CycleStatus, Outcome, SymbolResult, SymbolStatus
from runner.run import RunState
from runner.shards import Shard
from runner.state import RecordResult, StateStore

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)


@dataclass
class RecordPlan:
    """What recording a cycle writes (the record script's payload) and what it concluded."""

    payload: dict[str, Any]
    #: The locks the run still owns, released by the script.
    lock_keys: list[str]
    #: The cycle's start, in seconds since the epoch: the time stamped on what is written.
    now: float
    #: This run's breaker events, with a failure added when the model answered garbage throughout.
    breaker_events: list[tuple[Event, float]] = field(default_factory=list)
    #: The overruns just started a backpressure cooldown.
    cooling: bool = False


def plan_record(
    settings: Settings,
    owner: Owner,
    outcome: Outcome,
    run: RunState | None,
    lease: LockResult | None,
    snap: Snapshot,
    want_counters: bool = False,
) -> RecordPlan:
    """Everything the record script writes for this outcome (pure)."""
    now = datetime.fromisoformat(outcome.started_at.replace("Z", "+00:00")).timestamp()
    inc = Increments()
    updates: list[dict[str, Any]] = []
    latency: list[str] = []
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
    lock_values: list[str] = []
    if run is not None:
        for sym, lr in run.locks.items():
            if lr.owned:
                plan.lock_keys.append(lr.key)
                lock_values.append(lr.value)
                if lr.status == "taken_over":
                    inc.inc("stale_locks_recovered_total", {"symbol": sym, "reason": lr.reason})
        for at, ms in run.latencies:
            latency.append(f"{at:.3f}:{ms:.0f}")
            inc.observe("llm_latency_ms", ms)
        overran = any(r.reason == "deadline" for r in outcome.results) or (
            outcome.duration_ms / 1000 > settings.timeouts.total_timeout_seconds
        )
        bp, plan.cooling = adaptive.after_cycle(snap.backpressure, overran, settings.adaptive)
        if plan.cooling:
            inc.inc("backpressure_cooldowns_total")
        if lease is not None:
            backpressure_fields = bp.to_fields()
        plan.breaker_events = list(run.events)
        if model_broken:
            plan.breaker_events.append((Event.FAILURE, now))
        if plan.breaker_events:
            new = breaker.replay(run.breaker_base, plan.breaker_events, settings.circuit_breaker.llm_service)
            breaker_payload = {"expected": run.breaker_base.version, "fields": _fields(new)}
        if run.rejected:
            inc.inc("circuit_breaker_rejected_total", {"breaker": "llm_service"}, run.rejected)
    plan.payload = {
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
    return plan


async def record_outcome(
    store: StateStore,
    settings: Settings,
    keys: Keys,
    owner: Owner,
    outcome: Outcome,
    run: RunState | None,
    lease: LockResult | None,
    snap: Snapshot,
    want_counters: bool = False,
    budget: float | None = None,
) -> RecordResult | None:
    """Write the outcome and release what the run holds; a failure here is a warning."""
    plan = plan_record(settings, owner, outcome, run, lease, snap, want_counters)
    if plan.cooling:
        log.warning(
            "backpressure: %d overrun cycles in a row; skipping the next %d",
            settings.adaptive.backpressure_max_overruns,
            settings.adaptive.cooldown_cycles,
        )
    try:
        async with asyncio.timeout(budget):
            result = await store.record(
                plan.payload,
                lock_keys=plan.lock_keys,
                heartbeat_key=keys.heartbeat(owner.instance_id),
                spend_key=store.spend_key(datetime.fromtimestamp(plan.now, UTC)),
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
            if plan.payload["breaker"] is not None and not result.breaker_saved:
                result.breaker = await _save_breaker_retry(
                    store, settings, plan.breaker_events, result.breaker
                )
    except (RedisUnavailable, TimeoutError) as exc:
        reason = str(exc) or "Redis did not answer before the cycle ran out of time"
        msg = f"could not record the cycle: {reason}"
        log.warning("%s", msg)
        outcome.warnings.append(msg)
        return None
    return result


def cycle_gauges(
    outcome: Outcome, run: RunState | None, decision: Decision, record: RecordResult, minute: datetime
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


async def push_metrics(
    settings: Settings,
    shard: Shard,
    outcome: Outcome,
    run: RunState | None,
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
    store: StateStore, settings: Settings, events: list[tuple[Event, float]], fresh: BreakerState | None
) -> BreakerState:
    """Replay this cycle's events on the breaker another run just changed, and save again."""
    cfg = settings.circuit_breaker.llm_service
    state = fresh or BreakerState()
    for _ in range(5):
        new = breaker.replay(state, events, cfg)
        saved, state = await store.save_breaker(state.version, new)
        if saved:
            return state
    log.warning("circuit breaker busy: this cycle's %d outcome(s) were not counted", len(events))
    return state


def _reason_label(r: SymbolResult) -> str:
    if r.status in (SymbolStatus.FAILED,) and r.reason:
        return r.reason.split(":", 1)[0]
    if r.status is SymbolStatus.NOT_STARTED and r.reason:
        return r.reason
    return r.status.value


def _summary_json(outcome: Outcome) -> str:
    return json.dumps(outcome.summary(), separators=(",", ":"))
