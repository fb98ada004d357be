"""Bounded concurrency as a sliding window, with deadline-aware admission.

``limit`` workers pull symbols from one queue: a finished symbol frees its slot at once, so the
window is always full while work remains (no lock-step batches). Before a symbol starts, the
``admit`` callback may refuse it (deadline too close, shutdown, breaker) and the refusal is its
result. If the whole window is cancelled (hard deadline, SIGTERM grace over), every symbol still
running gets ``interrupted`` and every symbol not started gets ``refused`` with that reason.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class SlidingWindow(Generic[T, R]):
    """Runs ``work`` over items with at most ``limit`` in flight; results land in ``results``."""

    def __init__(
        self,
        work: Callable[[T], Awaitable[R]],
        *,
        limit: int,
        admit: Callable[[T], str | None],
        refused: Callable[[T, str], R],
        interrupted: Callable[[T], R],
        on_start: Callable[[T], None] | None = None,
        on_done: Callable[[T, R], None] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.work = work
        self.limit = limit
        self.admit = admit
        self.refused = refused
        self.interrupted = interrupted
        self.on_start = on_start
        self.on_done = on_done
        self.results: dict[T, R] = {}
        self.in_flight: set[T] = set()
        self.max_in_flight = 0

    def _finish(self, item: T, result: R) -> None:
        self.results[item] = result
        if self.on_done is not None:
            self.on_done(item, result)

    async def _worker(self, queue: deque[T]) -> None:
        while queue:
            item = queue.popleft()
            reason = self.admit(item)
            if reason is not None:
                self._finish(item, self.refused(item, reason))
                continue
            self.in_flight.add(item)
            self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
            if self.on_start is not None:
                self.on_start(item)
            # On cancellation the item stays in ``in_flight`` so that ``run`` accounts for it.
            result = await self.work(item)
            self.in_flight.discard(item)
            self._finish(item, result)

    async def run(self, items: list[T], cancelled_reason: str = "deadline") -> dict[T, R]:
        """Process every item; on cancellation, account for all of them before re-raising."""
        queue: deque[T] = deque(items)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(min(self.limit, len(items)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for item in list(self.in_flight):
                self._finish(item, self.interrupted(item))
            self.in_flight.clear()
            while queue:
                item = queue.popleft()
                self._finish(item, self.refused(item, cancelled_reason))
            raise
        return self.results
