"""The one place the runner reads time.

``Clock.now()`` is wall time (UTC) for ids, records and TTL arithmetic; ``Clock.monotonic()``
drives deadlines, so a wall-clock jump cannot stretch or cut a cycle. Tests pass a
``FrozenClock`` instead of sleeping.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Source of wall and monotonic time."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FrozenClock:
    """A clock that only moves when told to (``advance``)."""

    def __init__(self, start: datetime, monotonic: float = 1000.0) -> None:
        self._now = start
        self._mono = monotonic

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


def epoch(dt: datetime) -> float:
    """Seconds since the epoch for an aware datetime."""
    return dt.timestamp()


def minute_floor(dt: datetime) -> datetime:
    """The scheduled minute a moment belongs to."""
    return dt.replace(second=0, microsecond=0)


def iso_ms(dt: datetime) -> str:
    """``2026-11-23T14:05:41.203Z``."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class Deadline:
    """An absolute monotonic deadline that can only be brought forward."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self._clock = clock
        self.at = clock.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - self._clock.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0

    def shorten(self, seconds: float) -> None:
        """Bring the deadline to at most ``seconds`` from now."""
        self.at = min(self.at, self._clock.monotonic() + seconds)
