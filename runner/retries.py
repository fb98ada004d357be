"""Retry policy for one symbol's analysis (tenacity), bounded by the cycle deadline.

Transient errors retry with exponential backoff and jitter; a ``Retry-After`` from the analyzer
is honoured; a retry whose wait plus a minimal attempt would pass the deadline is not made.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from runner.clock import Deadline
from runner.errors import TransientError


class stop_at_deadline(stop_base):
    """Stop when the next wait plus ``min_attempt`` seconds would pass the deadline."""

    def __init__(self, deadline: Deadline, min_attempt: float) -> None:
        self.deadline = deadline
        self.min_attempt = min_attempt

    def __call__(self, retry_state: RetryCallState) -> bool:
        upcoming = retry_state.upcoming_sleep or 0.0
        return self.deadline.remaining() < upcoming + self.min_attempt


class wait_retry_after(wait_base):
    """The analyzer's ``Retry-After`` when it gave one, else ``fallback``."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return max(exc.retry_after, 0.0)
        return float(self.fallback(retry_state))


def policy(
    *,
    max_attempts: int,
    delay_seconds: float,
    deadline: Deadline,
    min_attempt: float,
    sleep: Callable[[float], Awaitable[None]],
) -> AsyncRetrying:
    """The retrying loop for one symbol."""
    base = max(delay_seconds, 0.001)
    return AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(max_attempts) | stop_at_deadline(deadline, min_attempt),
        wait=wait_retry_after(wait_random_exponential(multiplier=base, max=base * 4)),
        reraise=True,
        sleep=sleep,
    )
