"""Whether a cycle may run now: kill switch, maintenance, cooldown, breaker, latency, lease.

Pure: ``decide(snapshot, settings, now)`` reads a snapshot of the state (loaded in one round
trip by ``store/state.py``) and returns a ``Decision``. A guarded skip is a normal outcome (exit 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any

from runner import adaptive, breaker
from runner.adaptive import Backpressure, Plan
from runner.breaker import BreakerState, Gate
from runner.config import Settings
from runner.notify import Streak
from runner.store.locks import LockResult


@dataclass(frozen=True)
class Snapshot:
    """Cross-run state as read at the start of a cycle."""

    kill_switch: dict[str, str]
    breaker: BreakerState
    backpressure: Backpressure
    samples: list[adaptive.Sample]
    paused: dict[str, str]
    lease: LockResult | None
    spend_usd: float = 0.0
    #: This shard's failed cycles in a row.
    failing: Streak = field(default_factory=Streak)
    warnings: list[str] = field(default_factory=list)

    @property
    def owned_lease(self) -> LockResult | None:
        """The cycle lease when this run holds it."""
        return self.lease if self.lease is not None and self.lease.owned else None


@dataclass(frozen=True)
class Decision:
    """Run (with a plan and a breaker gate), or skip with a reason and a human detail."""

    plan: Plan
    gate: Gate
    skip_reason: str | None = None
    detail: str = ""


def parse_window(text: str) -> tuple[time, time]:
    start, end = text.split("-")
    h1, m1 = map(int, start.split(":"))
    h2, m2 = map(int, end.split(":"))
    return time(h1, m1), time(h2, m2)


def in_maintenance(windows: list[str], now: datetime) -> str | None:
    """The window ``now`` (UTC) falls in, if any; windows may cross midnight."""
    t = now.astimezone(UTC).time().replace(tzinfo=None)
    for text in windows:
        start, end = parse_window(text)
        inside = start <= t < end if start <= end else (t >= start or t < end)
        if inside:
            return text
    return None


def _fmt_ts(epoch: Any) -> str:
    try:
        return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError):
        return "?"


def decide(snap: Snapshot, settings: Settings, now: datetime) -> Decision:
    """The first guard that says skip wins, in the contract's order."""
    ts = now.timestamp()
    latencies = adaptive.recent(snap.samples, ts, settings.adaptive)
    plan = adaptive.plan(latencies, settings.adaptive, settings.parallel, settings.timeouts)
    g = breaker.gate(snap.breaker, ts, settings.circuit_breaker.llm_service)

    def skip(reason: str, detail: str) -> Decision:
        return Decision(plan=plan, gate=g, skip_reason=reason, detail=detail)

    if snap.kill_switch.get("on") == "1":
        who = snap.kill_switch.get("by") or "?"
        why = snap.kill_switch.get("reason") or "no reason given"
        return skip(
            "kill_switch", f"kill switch on since {_fmt_ts(snap.kill_switch.get('at'))} by {who}: {why}"
        )
    window = in_maintenance(settings.maintenance_windows, now)
    if window:
        return skip("maintenance", f"inside maintenance window {window} UTC")
    if snap.backpressure.cooldown_remaining > 0:
        return skip(
            "cooldown",
            f"backpressure cooldown, {snap.backpressure.cooldown_remaining} cycle(s) left",
        )
    budget = settings.analyzer.daily_budget_usd
    if budget is not None and snap.spend_usd >= budget:
        return skip("budget", f"daily budget spent: ${snap.spend_usd:.4f} of ${budget:.2f}")
    if not g.allow:
        return skip(
            "breaker_open",
            f"circuit breaker {snap.breaker.state} after {snap.breaker.failure_count} failures; "
            f"next probe at {_fmt_ts(g.retry_at)}",
        )
    if plan.skip:
        return skip(
            "high_latency",
            f"p99 latency {plan.p99_ms:.0f} ms > {settings.adaptive.p99_threshold_ms:.0f} ms "
            f"over {plan.samples} recent samples",
        )
    if snap.lease is not None and not snap.lease.owned:
        owner = snap.lease.owner()
        return skip(
            "cycle_running",
            f"cycle {owner.get('cycle_id', '?')} of {owner.get('instance_id', '?')} "
            f"running since {_fmt_ts(owner.get('acquired_at'))}",
        )
    return Decision(plan=plan, gate=g)
