"""Notifications: which changes a person hears about, and what each message says (pure).

A cycle compares the state it read at its start (``Facts`` from the begin snapshot) with the
state it wrote at its end (from the record step): ``detect(before, after, seen)`` lists the
transitions between them. The operator commands (``runner/operator.py``) build the same notices
for the changes they make. Each ``Notice`` has an id made of the state alone (the event, what
changed and since when), so every run, shard and command that sees one change names it the
same way; the outbox (``store/outbox.py``) claims an id once, so it is sent once.

    breaker        closed -> open or half-open: breaker_opened;  back to closed: breaker_closed
    paused         a symbol added: symbol_paused;  removed: symbol_resumed
    kill switch    off -> on: kill_switch_on;  on -> off: kill_switch_off
    spend          below the daily budget -> at or above it: budget_exhausted (once a UTC day)
    failed streak  of one shard reaching notify.failing_cycles: cycles_failing;
                   a cycle of that shard that ran and did not fail after it: recovered

The failed-cycle streak is kept per shard (``runner:failing:<shard>``): each shard's cycles
are serialized by its lease, so its streak is exact, and a shard whose symbols all fail is
heard about even while the other shards succeed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from runner.breaker import BreakerState, State
from runner.models import CycleStatus, Outcome, SymbolStatus

PRODUCT = "autonomous-runner"


class Event(StrEnum):
    """The transitions a person is told about (the ``event`` label of ``notifications_total``)."""

    BREAKER_OPENED = "breaker_opened"
    BREAKER_CLOSED = "breaker_closed"
    SYMBOL_PAUSED = "symbol_paused"
    SYMBOL_RESUMED = "symbol_resumed"
    KILL_SWITCH_ON = "kill_switch_on"
    KILL_SWITCH_OFF = "kill_switch_off"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CYCLES_FAILING = "cycles_failing"
    RECOVERED = "recovered"
    #: ``runner notify test``.
    TEST = "test"


#: Apprise's notification type per event (services show it as a colour or an icon).
KIND: dict[Event, str] = {
    Event.BREAKER_OPENED: "failure",
    Event.BREAKER_CLOSED: "success",
    Event.SYMBOL_PAUSED: "warning",
    Event.SYMBOL_RESUMED: "success",
    Event.KILL_SWITCH_ON: "warning",
    Event.KILL_SWITCH_OFF: "success",
    Event.BUDGET_EXHAUSTED: "warning",
    Event.CYCLES_FAILING: "failure",
    Event.RECOVERED: "success",
    Event.TEST: "info",
}


@dataclass(frozen=True)
class Streak:
    """A shard's failed cycles in a row, as kept in Redis."""

    count: int = 0
    #: When the first failed cycle of the streak started (epoch seconds).
    since: float | None = None
    #: The error classes and reason of the streak's last failed cycle.
    why: str = ""

    def to_fields(self) -> dict[str, str]:
        return {
            "count": str(self.count),
            "since": "" if self.since is None else repr(self.since),
            "why": self.why,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Streak:
        """Parse the hash; raises ``ValueError`` on garbage."""
        count = int(fields.get("count") or 0)
        raw = fields.get("since") or ""
        if count < 0:
            raise ValueError("a negative count")
        return cls(count=count, since=float(raw) if raw else None, why=str(fields.get("why") or ""))


def next_streak(streak: Streak, outcome: Outcome) -> Streak | None:
    """The streak after ``outcome``; None when a skipped cycle leaves it as it was."""
    if outcome.status is CycleStatus.SKIPPED:
        return None
    if outcome.status is not CycleStatus.FAILED:
        return Streak()
    since = streak.since if streak.count and streak.since is not None else outcome.started_at.timestamp()
    return Streak(count=streak.count + 1, since=since, why=failure_summary(outcome) or outcome.status.value)


@dataclass(frozen=True)
class Facts:
    """The state transitions are read from (at a cycle's start, or at its end)."""

    breaker: BreakerState = field(default_factory=BreakerState)
    #: Paused symbols: symbol -> the record it was paused with (its JSON, as stored).
    paused: Mapping[str, str] = field(default_factory=dict)
    kill_switch: Mapping[str, str] = field(default_factory=dict)
    spend_usd: float = 0.0
    streak: Streak = field(default_factory=Streak)


@dataclass(frozen=True)
class Seen:
    """Who saw a change, and the settings the messages quote."""

    #: When it was seen (epoch seconds): the cycle's start, or the command's time.
    now: float
    instance_id: str
    #: ``0/1``; None for an operator command.
    shard: str | None = None
    cycle_id: str | None = None
    #: The UTC day of the cycle's spend (``YYYY-MM-DD``).
    day: str = ""
    budget_usd: float | None = None
    failing_cycles: int = 3
    pause_after: int = 3
    recovery_seconds: float = 60.0
    #: What went wrong in the cycle (``failure_summary``), for the messages' "why".
    failures: str = ""
    #: The command that made the change, for the operator commands' messages.
    command: str | None = None

    def where(self) -> str:
        if self.command:
            return f"`{self.command}` on {self.instance_id}"
        parts = [f"shard {self.shard}"] if self.shard else []
        parts.append(f"instance {self.instance_id}")
        if self.cycle_id:
            parts.append(f"cycle {self.cycle_id}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Notice:
    """One message about one transition. ``id`` names the transition, whoever saw it."""

    event: Event
    id: str
    title: str
    body: str

    @property
    def kind(self) -> str:
        return KIND[self.event]

    def masked(self, mask: Callable[[str], str]) -> Notice:
        """The notice with ``mask(text)`` applied to what it says."""
        return replace(self, title=mask(self.title), body=mask(self.body))


def when(epoch: float | None) -> str:
    """``2026-11-23 14:05:07 UTC``."""
    if epoch is None:
        return "an unknown time"
    try:
        return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "an unknown time"


def _stamp(epoch: float | None) -> str:
    """The time part of an id: stable text for one stored value."""
    return "?" if epoch is None else f"{float(epoch):.3f}"


def failure_summary(outcome: Outcome, limit: int = 3) -> str:
    """What went wrong, by error class: ``transient on ETH/USD, BTC/USD (503 service unavailable)``."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for r in outcome.results:
        if r.status in (SymbolStatus.FAILED, SymbolStatus.TIMEOUT, SymbolStatus.RATE_LIMITED):
            groups.setdefault(r.code.value, []).append((r.symbol, r.reason or ""))
    parts = []
    for code, items in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:limit]:
        symbols = ", ".join(s for s, _ in items[:5]) + (
            f" and {len(items) - 5} more" if len(items) > 5 else ""
        )
        reason = _without_code(next((r for _, r in items if r), ""), code)
        parts.append(f"{code} on {symbols}" + (f" ({reason[:160]})" if reason else ""))
    return "; ".join(parts)


def _without_code(reason: str, code: str) -> str:
    """A reason without the error class it starts with (``transient: 503 ...`` -> ``503 ...``)."""
    return reason[len(code) + 1 :].strip() if reason.startswith(f"{code}:") else reason


def _message(
    event: Event, notice_id: str, title: str, what: str, since: str, why: str, undo: str, seen: Seen
) -> Notice:
    body = "\n".join(
        [
            what,
            f"Since: {since}",
            f"Why: {why}",
            f"To undo: {undo}",
            f"Seen by: {seen.where()}",
            f"Event: {event}",
        ]
    )
    return Notice(event=event, id=notice_id, title=f"{PRODUCT}: {title}", body=body)


# One builder per transition: cycles and operator commands both use these, so one change gets
# one id whoever sees it.


def breaker_opened(after: BreakerState, seen: Seen) -> Notice:
    since = after.outage_since
    why = seen.failures or "failures counted by other runs"
    return _message(
        Event.BREAKER_OPENED,
        f"breaker_opened:{_stamp(since)}",
        "circuit breaker opened",
        f"The analyzer's circuit breaker opened after {after.failure_count} failures in a row: cycles "
        f"skip, and probe the analyzer again {seen.recovery_seconds:g} s after it opened.",
        when(since),
        why,
        "`runner breaker reset` closes it by hand; it also closes by itself once probe calls succeed",
        seen,
    )


def breaker_closed(before: BreakerState, seen: Seen) -> Notice:
    since = before.outage_since
    by_hand = seen.command is not None
    return _message(
        Event.BREAKER_CLOSED,
        f"breaker_closed:{_stamp(since)}",
        "circuit breaker closed",
        "The analyzer's circuit breaker closed: cycles run again.",
        f"{when(seen.now)} (it had been open since {when(since)})",
        "closed by hand" if by_hand else "probe calls to the analyzer succeeded",
        "nothing to undo; it opens again if the analyzer keeps failing",
        seen,
    )


def _paused_record(raw: str) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except (TypeError, ValueError):
        return {"reason": str(raw)}
    return record if isinstance(record, dict) else {"reason": str(raw)}


def _paused_at(record: Mapping[str, Any]) -> float | None:
    since = record.get("since")
    return float(since) if isinstance(since, int | float) and not isinstance(since, bool) else None


def _paused_since(raw: str) -> str:
    """The time part of a paused symbol's ids: when it was paused (its cycle, for a record
    without a time)."""
    record = _paused_record(raw)
    at = _paused_at(record)
    return _stamp(at) if at is not None else str(record.get("cycle_id") or "?")


def symbol_paused(symbol: str, raw: str, seen: Seen) -> Notice:
    record = _paused_record(raw)
    failures = record.get("failures") or seen.pause_after
    code, reason = record.get("code"), record.get("reason") or "no reason recorded"
    return _message(
        Event.SYMBOL_PAUSED,
        f"symbol_paused:{symbol}:{_paused_since(raw)}",
        f"{symbol} paused",
        f"{symbol} is paused after {failures} failures of its own in a row: cycles skip it.",
        when(_paused_at(record)),
        f"{code}: {_without_code(str(reason), str(code))}" if code else str(reason),
        f"`runner resume {symbol}`",
        seen,
    )


def symbol_resumed(symbol: str, raw: str, seen: Seen) -> Notice:
    record = _paused_record(raw)
    return _message(
        Event.SYMBOL_RESUMED,
        f"symbol_resumed:{symbol}:{_paused_since(raw)}",
        f"{symbol} resumed",
        f"{symbol} is no longer paused: cycles analyze it again.",
        f"{when(seen.now)} (it had been paused since {when(_paused_at(record))})",
        "resumed by hand" + (f"; it was paused for: {record.get('reason')}" if record.get("reason") else ""),
        f"nothing to undo; it is paused again after {seen.pause_after} failures of its own",
        seen,
    )


def _kill_at(fields: Mapping[str, str]) -> float | None:
    try:
        return float(fields.get("at") or "")
    except ValueError:
        return None


def kill_switch_on(fields: Mapping[str, str], seen: Seen) -> Notice:
    at = _kill_at(fields)
    return _message(
        Event.KILL_SWITCH_ON,
        f"kill_switch_on:{fields.get('at') or '?'}",
        "kill switch ON",
        "The kill switch is on: every cycle skips until it is turned off.",
        when(at),
        f"{fields.get('reason') or 'no reason given'} (by {fields.get('by') or '?'})",
        "`runner kill-switch off`",
        seen,
    )


def kill_switch_off(before: Mapping[str, str], seen: Seen) -> Notice:
    at = _kill_at(before)
    return _message(
        Event.KILL_SWITCH_OFF,
        f"kill_switch_off:{before.get('at') or '?'}",
        "kill switch off",
        "The kill switch is off: cycles run again.",
        f"{when(seen.now)} (it had been on since {when(at)})",
        f"turned off; it was on for: {before.get('reason') or 'no reason given'} "
        f"(by {before.get('by') or '?'})",
        '`runner kill-switch on --reason "..."` halts every cycle again',
        seen,
    )


def budget_exhausted(spend: float, seen: Seen) -> Notice:
    budget = seen.budget_usd or 0.0
    return _message(
        Event.BUDGET_EXHAUSTED,
        f"budget_exhausted:{seen.day}",
        "daily budget spent",
        f"The analyzer's daily budget is spent: ${spend:.4f} of ${budget:.2f} on {seen.day} (UTC). "
        "Cycles skip until 00:00 UTC.",
        when(seen.now),
        "the cost of today's analyzer calls" + (f"; last cycle: {seen.failures}" if seen.failures else ""),
        "raise analyzer.daily_budget_usd (RUNNER_ANALYZER__DAILY_BUDGET_USD), or wait for 00:00 UTC",
        seen,
    )


def cycles_failing(shard: str, streak: Streak, seen: Seen) -> Notice:
    return _message(
        Event.CYCLES_FAILING,
        f"cycles_failing:{shard}:{_stamp(streak.since)}",
        f"cycles failing (shard {shard})",
        f"{streak.count} cycles of shard {shard} failed in a row: no symbol produced a signal.",
        when(streak.since),
        streak.why or seen.failures or "every symbol failed",
        "see `runner status` for each symbol's last error; cycles recover by themselves once the "
        "cause is gone (`runner breaker reset` if the breaker is open)",
        seen,
    )


def recovered(shard: str, streak: Streak, seen: Seen) -> Notice:
    return _message(
        Event.RECOVERED,
        f"recovered:{shard}:{_stamp(streak.since)}",
        f"cycles recovered (shard {shard})",
        f"Cycles of shard {shard} succeed again after {streak.count} failed cycles in a row.",
        f"{when(seen.now)} (failing since {when(streak.since)})",
        f"cycle {seen.cycle_id or '?'} ran and did not fail",
        "nothing to undo",
        seen,
    )


def detect(before: Facts, after: Facts, seen: Seen) -> list[Notice]:
    """The transitions between what a cycle read at its start and what it wrote at its end."""
    notices: list[Notice] = []
    was, now = _outage(before.breaker), _outage(after.breaker)
    if was is not None and was != now:
        notices.append(breaker_closed(before.breaker, seen))
    if now is not None and now != was:
        notices.append(breaker_opened(after.breaker, seen))
    for symbol in sorted(set(before.paused) | set(after.paused)):
        old, new = before.paused.get(symbol), after.paused.get(symbol)
        if old is not None and (new is None or _paused_since(new) != _paused_since(old)):
            notices.append(symbol_resumed(symbol, old, seen))
        if new is not None and (old is None or _paused_since(new) != _paused_since(old)):
            notices.append(symbol_paused(symbol, new, seen))
    on_before, on_after = _on(before.kill_switch), _on(after.kill_switch)
    if on_before and (not on_after or after.kill_switch.get("at") != before.kill_switch.get("at")):
        notices.append(kill_switch_off(before.kill_switch, seen))
    if on_after and (not on_before or after.kill_switch.get("at") != before.kill_switch.get("at")):
        notices.append(kill_switch_on(after.kill_switch, seen))
    budget = seen.budget_usd
    if budget is not None and before.spend_usd < budget <= after.spend_usd:
        notices.append(budget_exhausted(after.spend_usd, seen))
    if seen.shard is not None:
        notices += _streak_notices(seen.shard, before.streak, after.streak, seen)
    return notices


def _streak_notices(shard: str, before: Streak, after: Streak, seen: Seen) -> list[Notice]:
    n = seen.failing_cycles
    out = []
    if before.count >= n and (after.count < n or after.since != before.since):
        out.append(recovered(shard, before, seen))
    if after.count >= n and (before.count < n or after.since != before.since):
        out.append(cycles_failing(shard, after, seen))
    return out


def _outage(state: BreakerState) -> float | None:
    """Which outage the breaker is in (its start), None while it is closed."""
    if state.state is State.CLOSED:
        return None
    return state.outage_since or 0.0


def _on(fields: Mapping[str, str]) -> bool:
    return fields.get("on") == "1"


def test_notice(instance_id: str, now: float) -> Notice:
    """What ``runner notify test`` sends."""
    return Notice(
        event=Event.TEST,
        id=f"test:{_stamp(now)}",
        title=f"{PRODUCT}: test notification",
        body=f"A test message from `runner notify test` on {instance_id} at {when(now)}: "
        "notifications reach this address.",
    )
