"""The event feed's pure parts: the cursor, frames, the fan-out's queues and what each client is
sent."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from runner.store.keys import Keys
from runner.web.events import render
from runner.web.feed import PING, CursorCodec, advance, frame, sources
from runner.web.hub import Backoff, Event, Hub, Subscriber, to_events

SOURCES = sources(Keys())
CODEC = CursorCodec([s.stream for s in SOURCES])
START = ((0, 0),) * len(SOURCES)


def doc(n: int) -> str:
    return json.dumps({"n": n, "symbol": "ETH/USD"})


def read(kind: str, entry: tuple[int, int], n: int) -> tuple[int, tuple[int, int], dict[str, str]]:
    index = [s.kind for s in SOURCES].index(kind)
    return index, entry, {"symbol": "ETH/USD", SOURCES[index].field: doc(n)}


def hub(limit: int = 100) -> Hub:
    return Hub(
        None, Keys(), SOURCES, queue_limit=limit, ping_seconds=10, block_ms=100, reads=asyncio.Semaphore(1)
    )  # type: ignore[arg-type]


# The cursor -------------------------------------------------------------------------------------


def test_a_cursor_reads_back_as_itself() -> None:
    cursor = ((1732370741203, 0), (0, 0), (1732370741203, 17), (5, 1), (0, 0))

    text = CODEC.encode(cursor)

    assert CODEC.decode(text) == cursor
    assert " " not in text
    assert "/" not in text
    assert CODEC.encode(START).endswith(".0.0.0.0.0")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "00000000.0.0.0.0.0",
        "x" * 600,
        "{tag}.0.0.0.0",
        "{tag}.0.0.0.0.0.0",
        "{tag}.zz-1.0.0.0.0",
        "{tag}.12.0.0.0.0",
        "{tag}.-1-0.0.0.0.0",
    ],
)
def test_text_that_is_not_one_of_this_feeds_cursors_reads_as_none(text: str) -> None:
    assert CODEC.decode(text.replace("{tag}", CODEC.tag)) is None


def test_a_cursor_of_other_streams_reads_as_none() -> None:
    other = CursorCodec(["{runner}:signals:raw", "b", "c", "d", "e"])

    assert other.decode(CODEC.encode(START)) is None


def test_advance_moves_one_stream_only() -> None:
    assert advance(START, 2, (7, 1)) == ((0, 0), (0, 0), (7, 1), (0, 0), (0, 0))


def test_a_frame_gives_each_line_of_the_data_its_own_data_field() -> None:
    assert frame("signal", '{"a": 1}', "c.1") == b'id: c.1\nevent: signal\ndata: {"a": 1}\n\n'
    assert frame("reset", "one\ntwo\r\nthree") == b"event: reset\ndata: one\ndata: two\ndata: three\n\n"


# Entries to events --------------------------------------------------------------------------------


def test_entries_become_events_in_entry_order_each_with_the_cursor_after_it() -> None:
    reads = [read("score", (20, 0), 2), read("signal", (10, 0), 1), read("signal", (20, 0), 3)]

    events, cursor, unreadable = to_events(SOURCES, CODEC, START, reads)

    assert [(e.kind, json.loads(e.data)["n"]) for e in events] == [("signal", 1), ("signal", 3), ("score", 2)]
    assert events[0].before == START
    assert [e.before for e in events[1:]] == [e.after for e in events[:-1]]
    assert cursor == events[-1].after == ((20, 0), (20, 0), (0, 0), (0, 0), (0, 0))
    assert events[-1].frame.startswith(f"id: {CODEC.encode(cursor)}\nevent: score\n".encode())
    assert unreadable == 0


def test_entries_at_or_before_the_cursor_and_entries_without_a_document_are_left_out() -> None:
    at = advance(START, 0, (10, 0))
    reads = [
        read("signal", (10, 0), 1),
        (0, (11, 0), {"symbol": "ETH/USD", "signal": "not json"}),
        (0, (12, 0), {"symbol": "ETH/USD"}),
        read("signal", (13, 0), 4),
    ]

    events, cursor, unreadable = to_events(SOURCES, CODEC, at, reads)

    assert [json.loads(e.data)["n"] for e in events] == [4]
    assert unreadable == 2
    assert cursor[0] == (13, 0)


# Queues and fan-out ---------------------------------------------------------------------------------


def events_of(n: int, cursor: Any = START) -> list[Event]:
    events, _, _ = to_events(SOURCES, CODEC, cursor, [read("signal", (i + 1, 0), i) for i in range(n)])
    return events


async def test_a_subscriber_past_its_limit_is_dropped_and_its_queue_let_go() -> None:
    sub = Subscriber(limit=4, start=START, task=None)

    assert sub.offer(events_of(3)) is True
    assert sub.offer(events_of(2)) is False

    assert sub.dropped
    assert sub.pending == []
    assert sub.offer(events_of(1)) is False


async def test_dropping_a_subscriber_stuck_in_a_write_interrupts_that_write() -> None:
    blocked = asyncio.Event()

    async def writing() -> None:
        await blocked.wait()

    task = asyncio.create_task(writing())
    await asyncio.sleep(0)
    sub = Subscriber(limit=1, start=START, task=task)
    sub.sending = True

    sub.offer(events_of(2))

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_hub_offers_each_batch_to_every_subscriber_and_drops_only_the_one_behind() -> None:
    h = hub(limit=5)
    h.head = START
    keeping, falling = h.subscribe(), h.subscribe()

    h.publish([read("signal", (1, 0), 1), read("signal", (2, 0), 2)])
    keeping.take()  # this one writes out what it got
    h.publish([read("signal", (3, 0), 3), read("signal", (4, 0), 4)])
    keeping.take()
    h.publish([read("signal", (5, 0), 5), read("signal", (6, 0), 6)])

    assert not keeping.dropped
    assert falling.dropped
    assert [json.loads(e.data)["n"] for e in keeping.take() if isinstance(e, Event)] == [5, 6]
    assert h.head[0] == (6, 0)
    assert h.stats.events == 6


def test_a_batch_fills_at_most_half_a_queue() -> None:
    assert hub(limit=64).read_count * len(SOURCES) <= 32
    assert hub(limit=16).read_count == 1
    assert hub(limit=1_000_000).read_count == 256


def test_a_client_in_step_with_the_hub_is_sent_the_frames_rendered_once_for_all() -> None:
    events = events_of(3)

    chunks, position = render(events, START, hub())

    assert all(c is e.frame for c, e in zip(chunks, events, strict=True))
    assert position is events[-1].after


def test_a_client_ahead_of_the_hub_gets_nothing_twice_and_its_own_cursor() -> None:
    events = events_of(3)
    # Past the second signal, and further on the score stream than this hub (another server's id).
    ahead = ((2, 0), (9, 9), (0, 0), (0, 0), (0, 0))

    chunks, position = render(events, ahead, hub())

    assert len(chunks) == 1
    assert json.loads(chunks[0].split(b"data: ")[1]) == {"n": 2, "symbol": "ETH/USD"}
    assert chunks[0].startswith(f"id: {CODEC.encode(position)}\n".encode())
    assert position == ((3, 0), (9, 9), (0, 0), (0, 0), (0, 0))


def test_a_ping_is_sent_only_when_nothing_else_is() -> None:
    events = events_of(1)

    assert render([PING, PING], START, hub()) == ([PING], START)
    assert render([PING, *events, PING], START, hub())[0] == [events[0].frame]


def test_backoff_doubles_up_to_its_cap_with_jitter_and_starts_over_when_reset() -> None:
    backoff = Backoff(first=0.1, most=1.0)

    delays = [backoff.delay() for _ in range(6)]
    backoff.reset()

    assert 0.075 <= delays[0] <= 0.125
    assert 0.75 <= delays[-1] <= 1.25
    assert delays[2] > delays[0]
    assert backoff.delay() <= 0.125
