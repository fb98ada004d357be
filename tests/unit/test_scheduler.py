"""The sliding window: bounded concurrency, freed slots, admission, and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from runner.scheduler import SlidingWindow


def window(
    work: Callable[[Any], Awaitable[Any]],
    limit: int = 2,
    admit: Callable[[Any], str | None] | None = None,
    **kw: Any,
) -> SlidingWindow[Any, Any]:
    """A window whose refusals read ``refused:<reason>`` and interruptions ``interrupted``."""
    return SlidingWindow(
        work,
        limit=limit,
        admit=admit or (lambda item: None),
        refused=lambda item, reason: f"refused:{reason}",
        interrupted=lambda item: "interrupted",
        **kw,
    )


async def done(item: str) -> str:
    return f"done:{item}"


def test_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^limit must be at least 1$"):
        window(done, limit=0)


async def test_no_items_is_no_results() -> None:
    w = window(done)

    assert await w.run([]) == {}
    assert w.max_in_flight == 0


async def test_every_item_gets_its_result() -> None:
    results = await window(done, limit=3).run(["a", "b", "c", "d"])

    assert results == {"a": "done:a", "b": "done:b", "c": "done:c", "d": "done:d"}


async def test_never_more_than_limit_in_flight() -> None:
    running = 0
    peak = 0

    async def work(item: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005 * (item % 3))
        running -= 1
        return item

    w = window(work, limit=3)
    results = await w.run(list(range(12)))

    assert peak == 3  # full while work remains, never more
    assert w.max_in_flight == 3
    assert sorted(results) == list(range(12))
    assert w.in_flight == set()


async def test_fewer_items_than_the_limit_run_together() -> None:
    running = 0
    peak = 0

    async def work(item: str) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return item

    await window(work, limit=10).run(["a", "b"])

    assert peak == 2


async def test_a_finished_item_frees_its_slot_at_once() -> None:
    shorts_done = asyncio.Event()
    finished: list[str] = []

    async def work(item: str) -> str:
        if item == "long":
            await shorts_done.wait()  # lock-step batches would never get past this
        return item

    def on_done(item: str, result: str) -> None:
        finished.append(item)
        if finished == ["s1", "s2", "s3"]:
            shorts_done.set()

    w = window(work, limit=2, on_done=on_done)
    async with asyncio.timeout(10):
        await w.run(["long", "s1", "s2", "s3"])

    # No lock-step batches: the three short items go through the second slot while the long one runs.
    assert finished == ["s1", "s2", "s3", "long"]


async def test_items_start_in_order() -> None:
    started: list[str] = []

    await window(done, limit=2, on_start=started.append).run(["a", "b", "c"])

    assert started == ["a", "b", "c"]


async def test_refusal_by_admit_becomes_the_result() -> None:
    worked: list[str] = []
    started: list[str] = []

    async def work(item: str) -> str:
        worked.append(item)
        return "ok"

    w = window(work, admit=lambda item: "deadline" if item == "b" else None, on_start=started.append)
    results = await w.run(["a", "b", "c"])

    assert results == {"a": "ok", "b": "refused:deadline", "c": "ok"}
    assert worked == ["a", "c"]
    assert started == ["a", "c"]


async def test_refused_items_are_reported_through_on_done() -> None:
    reported: dict[str, str] = {}

    w = window(done, admit=lambda item: "breaker_open", on_done=reported.__setitem__)
    await w.run(["a", "b"])

    assert reported == {"a": "refused:breaker_open", "b": "refused:breaker_open"}


async def test_admit_is_asked_just_before_each_start() -> None:
    stopping = False

    async def work(item: str) -> str:
        nonlocal stopping
        if item == "a":
            stopping = True  # e.g. SIGTERM arrives while "a" runs
        return "ok"

    results = await window(work, limit=1, admit=lambda item: "shutdown" if stopping else None).run(
        ["a", "b", "c"]
    )

    assert results == {"a": "ok", "b": "refused:shutdown", "c": "refused:shutdown"}


async def test_cancellation_marks_unstarted_items_refused_with_the_reason() -> None:
    never = asyncio.Event()

    async def work(item: str) -> str:
        if item == "slow":
            await never.wait()
        return "ok"

    w = window(work, limit=1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await w.run(["slow", "x", "y"], cancelled_reason="shutdown")

    assert w.results["x"] == "refused:shutdown"
    assert w.results["y"] == "refused:shutdown"
    assert w.in_flight == set()


async def test_cancellation_marks_in_flight_items_interrupted() -> None:
    never = asyncio.Event()

    async def work(item: str) -> str:
        if item in ("slow1", "slow2"):
            await never.wait()
        return "ok"

    w = window(work, limit=2)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await w.run(["slow1", "slow2", "later"], cancelled_reason="deadline")

    assert w.results.get("slow1") == "interrupted"
    assert w.results.get("slow2") == "interrupted"
    assert w.results.get("later") == "refused:deadline"


async def test_cancellation_keeps_results_of_items_already_done() -> None:
    never = asyncio.Event()

    async def work(item: str) -> str:
        if item == "slow":
            await never.wait()
        return "ok"

    w = window(work, limit=2)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await w.run(["quick", "slow", "quick2", "rest"], cancelled_reason="deadline")

    assert w.results["quick"] == "ok"
    assert w.results["quick2"] == "ok"
    assert w.results["rest"] == "ok"


def naming_window(work: Callable[[str], Awaitable[str]], limit: int) -> SlidingWindow[str, str]:
    """A window whose refusals and interruptions name their item."""
    return SlidingWindow(
        work,
        limit=limit,
        admit=lambda item: None,
        refused=lambda item, reason: f"refused:{item}:{reason}",
        interrupted=lambda item: f"interrupted:{item}",
    )


async def hang(item: str, started: asyncio.Event, cleaned: list[str]) -> str:
    """Work that says it started, never finishes, and notes its clean-up when cancelled."""
    started.set()
    try:
        await asyncio.Event().wait()
    finally:
        cleaned.append(item)
    return "never"


async def test_cancelled_by_its_caller_every_item_is_accounted_for_after_in_flight_work_cleaned_up() -> None:
    """Cancelled from outside (no reason given: the deadline), the window waits for the running
    work to unwind, then reports each item by name: running ones interrupted, the rest refused."""
    started = asyncio.Event()
    cleaned: list[str] = []

    async def work(item: str) -> str:
        if item == "quick":
            return "ok"
        return await hang(item, started, cleaned)

    w = naming_window(work, limit=1)
    task = asyncio.create_task(w.run(["quick", "slow", "later1", "later2"]))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert cleaned == ["slow"]
    assert w.results == {
        "quick": "ok",
        "slow": "interrupted:slow",
        "later1": "refused:later1:deadline",
        "later2": "refused:later2:deadline",
    }
    assert w.max_in_flight == 1


async def test_a_work_that_raises_stops_the_window_after_the_others_unwound() -> None:
    """One item's work raising ends the window: the other running work is cancelled and has
    cleaned up before the error reaches the caller, and every item is accounted for."""
    started = asyncio.Event()
    cleaned: list[str] = []

    async def work(item: str) -> str:
        if item == "boom":
            await started.wait()
            raise RuntimeError("analyzer bug")
        return await hang(item, started, cleaned)

    w = naming_window(work, limit=2)
    with pytest.raises(RuntimeError, match="analyzer bug"):
        await w.run(["boom", "slow", "later"], cancelled_reason="crash")

    assert cleaned == ["slow"]
    assert w.results == {
        "boom": "interrupted:boom",
        "slow": "interrupted:slow",
        "later": "refused:later:crash",
    }
    assert w.in_flight == set()
