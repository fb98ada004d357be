"""The circuit breaker's state and its pure transitions.

``transition(state, event, now, cfg)`` is a pure function; storage is elsewhere (``state.py``
loads the state and saves it with a version check in one Lua script, so racing processes never
overwrite each other). ``now`` is epoch seconds, passed in so tests never sleep.

closed --failure_threshold consecutive failures--> open --recovery_timeout--> half_open
half_open --success_threshold successes--> closed;  half_open --any failure--> open
At most ``half_open_max_calls`` probe calls are handed out in half-open, across all processes;
if their results never come back (a crashed prober) new probes are allowed after another
recovery timeout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from runner.config import Breaker as BreakerConfig


class State(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


#: Gauge value per state for ``circuit_breaker_state``.
STATE_VALUE = {State.CLOSED: 0.0, State.HALF_OPEN: 0.5, State.OPEN: 1.0}


class Event(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    RESET = "reset"


@dataclass(frozen=True)
class BreakerState:
    """What is persisted for one breaker."""

    state: State = State.CLOSED
    failure_count: int = 0
    success_count: int = 0
    half_open_calls: int = 0
    opened_at: float | None = None
    half_open_at: float | None = None
    last_failure_at: float | None = None
    #: When it left closed: kept while it is open or half-open, so one outage (and its
    #: notification) has one start, however often its probes fail.
    since: float | None = None
    version: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", State(self.state))

    @property
    def outage_since(self) -> float | None:
        """When the breaker left closed (None while closed); a state saved before ``since``
        existed falls back to when it last opened."""
        if self.state is State.CLOSED:
            return None
        return self.since if self.since is not None else self.opened_at

    def to_fields(self) -> dict[str, str]:
        """Hash fields for Redis (None becomes an empty string)."""
        return {k: "" if v is None else str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> BreakerState:
        """Parse the hash; raises ``ValueError`` on garbage (the caller resets with a warning)."""
        if not fields:
            return cls()

        def num(name: str) -> float | None:
            raw = fields.get(name, "")
            return None if raw in ("", None) else float(raw)

        raw = str(fields.get("state", "closed"))
        try:
            state = State(raw)
        except ValueError as exc:
            raise ValueError(f"unknown breaker state {raw!r}") from exc
        return cls(
            state=state,
            failure_count=int(fields.get("failure_count") or 0),
            success_count=int(fields.get("success_count") or 0),
            half_open_calls=int(fields.get("half_open_calls") or 0),
            opened_at=num("opened_at"),
            half_open_at=num("half_open_at"),
            last_failure_at=num("last_failure_at"),
            since=num("since"),
            version=int(fields.get("version") or 0),
        )


@dataclass(frozen=True)
class Gate:
    """What the breaker allows a cycle to do now."""

    allow: bool
    probes: int | None = None  # None: unlimited (closed); n: at most n probe calls
    retry_at: float | None = None  # when an open breaker may be probed


def gate(s: BreakerState, now: float, cfg: BreakerConfig) -> Gate:
    """Whether calls may go out, and how many (pure)."""
    if s.state is State.CLOSED:
        return Gate(allow=True)
    if s.state is State.OPEN:
        ready_at = (s.opened_at or 0.0) + cfg.recovery_timeout_seconds
        if now >= ready_at:
            return Gate(allow=True, probes=cfg.half_open_max_calls)
        return Gate(allow=False, retry_at=ready_at)
    left = cfg.half_open_max_calls - s.half_open_calls
    if left <= 0 and now >= (s.half_open_at or 0.0) + cfg.recovery_timeout_seconds:
        left = cfg.half_open_max_calls  # the previous probers never reported back
    if left <= 0:
        return Gate(allow=False, retry_at=(s.half_open_at or 0.0) + cfg.recovery_timeout_seconds)
    return Gate(allow=True, probes=left)


def claim_probes(s: BreakerState, wanted: int, now: float, cfg: BreakerConfig) -> tuple[BreakerState, int]:
    """Move to half-open if due and hand out up to ``wanted`` probe calls (pure)."""
    g = gate(s, now, cfg)
    if not g.allow or g.probes is None:
        return s, 0
    granted = min(wanted, g.probes)
    if s.state is State.OPEN:
        s = replace(s, state=State.HALF_OPEN, half_open_calls=0, success_count=0, half_open_at=now)
    elif s.half_open_calls >= cfg.half_open_max_calls:
        # The earlier probers never reported back: hand out new probes, keep any successes.
        s = replace(s, half_open_calls=0, half_open_at=now)
    return replace(s, half_open_calls=s.half_open_calls + granted), granted


def transition(s: BreakerState, event: Event, now: float, cfg: BreakerConfig) -> BreakerState:
    """The state after ``event`` at ``now`` (pure; ``version`` is left to storage)."""
    if event is Event.RESET:
        return BreakerState(version=s.version)
    if s.state is State.CLOSED:
        if event is Event.SUCCESS:
            return replace(s, failure_count=0)
        failures = s.failure_count + 1
        if failures >= cfg.failure_threshold:
            return replace(
                s,
                state=State.OPEN,
                failure_count=failures,
                opened_at=now,
                last_failure_at=now,
                success_count=0,
                half_open_calls=0,
                since=now,
            )
        return replace(s, failure_count=failures, last_failure_at=now)
    if s.state is State.HALF_OPEN:
        if event is Event.SUCCESS:
            successes = s.success_count + 1
            if successes >= cfg.success_threshold:
                return BreakerState(version=s.version)
            return replace(s, success_count=successes)
        return replace(
            s,
            state=State.OPEN,
            failure_count=s.failure_count + 1,
            opened_at=now,
            last_failure_at=now,
            success_count=0,
            half_open_calls=0,
            since=s.since if s.since is not None else s.opened_at,
        )
    # open: late results of calls that started before it opened change nothing but the record.
    if event is Event.FAILURE:
        return replace(s, failure_count=s.failure_count + 1, last_failure_at=now)
    return s


def replay(s: BreakerState, events: list[tuple[Event, float]], cfg: BreakerConfig) -> BreakerState:
    """Apply a cycle's events, in order, to a (possibly fresher) state."""
    for event, at in events:
        s = transition(s, event, at, cfg)
    return s
