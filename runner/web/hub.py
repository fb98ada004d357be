"""One reader for every event-stream client of a process, whatever their number.

The hub runs a single ``XREAD BLOCK`` loop over the served streams and turns each entry into an
``Event`` whose SSE frame is rendered once, then offers it to every subscriber's bounded queue.
A subscriber that has more than its limit waiting is dropped (its connection is closed; it
resumes from its last event id), so one slow client never delays the others and nothing is
buffered without bound. A Redis outage makes the reader retry with backoff from where it
stopped; subscribers stay connected and receive pings meanwhile.

Snapshots (the state a client without a cursor starts from) are read once for every client
asking at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.errors import RedisUnavailable, one_line
from runner.store import streams, views
from runner.store.connection import Client
from runner.store.keys import Keys
from runner.store.streams import StreamId
from runner.web.feed import PING, Cursor, CursorCodec, Source, advance, frame

log = logging.getLogger(__name__)

#: Entries read per stream and per read, at most: bounds one batch the hub offers at once.
READ_COUNT = 256
#: Cycle summaries a snapshot carries.
SNAPSHOT_CYCLES = 48


@dataclass(frozen=True, slots=True)
class Event:
    """One stream entry as an SSE event, with the hub's cursor before and after it."""

    source: int
    entry: StreamId
    kind: str
    data: str
    before: Cursor
    after: Cursor
    #: The frame with ``after`` as its id: what every client in step with the hub is sent.
    frame: bytes


@dataclass
class Backoff:
    """Exponential backoff with jitter, for retries against Redis."""

    first: float = 0.1
    most: float = 5.0
    _next: float = 0.0

    def delay(self) -> float:
        self._next = min(self.most, self._next * 2 if self._next else self.first)
        return self._next * random.uniform(0.75, 1.25)

    def reset(self) -> None:
        self._next = 0.0


class Subscriber:
    """One client's place in the hub: a bounded queue of events and pings, and why it ended."""

    __slots__ = ("closed", "dropped", "final", "limit", "pending", "sending", "start", "task", "wake")

    def __init__(self, limit: int, start: Cursor, task: asyncio.Task[Any] | None) -> None:
        self.limit = limit
        #: The hub's cursor when the subscriber joined: its queue holds what came after.
        self.start = start
        self.task = task
        self.pending: list[Event | bytes] = []
        self.wake = asyncio.Event()
        self.dropped = False
        self.closed = False
        #: Set when the server closes the stream: the last frame to send.
        self.final: bytes | None = None
        #: True while the client's task waits for its socket to take a write.
        self.sending = False

    def offer(self, items: Sequence[Event | bytes]) -> bool:
        """Queue ``items``; a subscriber past its limit is dropped instead (False)."""
        if self.dropped or self.closed:
            return False
        if len(self.pending) + len(items) > self.limit:
            self.dropped = True
            self.pending = []
            self.wake.set()
            if self.sending and self.task is not None:
                # Its task is stuck writing to a socket nobody reads: interrupt it.
                self.task.cancel()
            return False
        self.pending.extend(items)
        self.wake.set()
        return True

    def take(self) -> list[Event | bytes]:
        items, self.pending = self.pending, []
        self.wake.clear()
        return items

    def finish(self, final: bytes) -> None:
        self.final = final
        self.wake.set()

    def disconnect(self) -> None:
        self.closed = True
        self.wake.set()

    @property
    def ended(self) -> bool:
        return self.dropped or self.closed or self.final is not None


@dataclass
class HubStats:
    """What ``/health/detailed`` reports about the feed."""

    events: int = 0
    dropped: int = 0
    reader_ok: bool = False
    reader_error: str | None = None
    unreadable: int = 0


@dataclass(frozen=True)
class Flight:
    """A snapshot read once for every client that asked while it was in flight: where it stands
    and its frame."""

    cursor: Cursor
    frame: bytes


class Hub:
    """The shared reader and its subscribers."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        sources: Sequence[Source],
        *,
        queue_limit: int,
        ping_seconds: float,
        block_ms: int,
        reads: asyncio.Semaphore,
    ) -> None:
        self.client = client
        self.keys = keys
        self.sources = tuple(sources)
        self.names = [s.stream for s in self.sources]
        self.codec = CursorCodec(self.names)
        self.queue_limit = queue_limit
        # A batch fills at most half a queue, so that a client that writes out each batch as it
        # comes is never dropped for one burst; only one that keeps not writing is.
        self.read_count = max(1, min(READ_COUNT, queue_limit // (2 * len(self.sources))))
        self.ping_seconds = ping_seconds
        self.block_ms = block_ms
        #: Every Redis read made for a client goes through this: a constant number of
        #: connections however many clients there are.
        self.reads = reads
        self.head: Cursor | None = None
        self.ready = asyncio.Event()
        self.subscribers: set[Subscriber] = set()
        self.stats = HubStats()
        self.closing = False
        self._final: bytes | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._flight: asyncio.Task[Flight] | None = None

    # Life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._read_forever(), name="event-reader"),
            asyncio.create_task(self._ping_forever(), name="event-pings"),
        ]

    def close(self, reason: str) -> None:
        """Give every subscriber a last ``shutdown`` event (and any that still joins)."""
        self.closing = True
        self._final = frame("shutdown", json.dumps({"reason": reason}))
        for sub in list(self.subscribers):
            sub.finish(self._final)

    async def aclose(self) -> None:
        """Stop reading."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._flight is not None and not self._flight.done():
            self._flight.cancel()

    # Subscribers ----------------------------------------------------------------------------

    def subscribe(self) -> Subscriber:
        """Join at the current head (the hub must be ready)."""
        assert self.head is not None, "subscribe only once the hub is ready"
        sub = Subscriber(self.queue_limit, self.head, asyncio.current_task())
        self.subscribers.add(sub)
        if self._final is not None:
            sub.finish(self._final)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if sub.dropped:
            self.stats.dropped += 1
            log.info("dropped an event-stream client that fell %d events behind", self.queue_limit)

    async def snapshot(self) -> Flight:
        """The current snapshot, read once for all who ask while it is being read."""
        if self._flight is None or self._flight.done():
            self._flight = asyncio.create_task(self._read_snapshot())
        return await asyncio.shield(self._flight)

    async def _read_snapshot(self) -> Flight:
        async with self.reads:
            snap = await views.read_snapshot(self.client, self.keys, self.names, SNAPSHOT_CYCLES)
        cursor: Cursor = tuple(snap.positions)
        data = json.dumps(snap.document(), separators=(",", ":"))
        return Flight(cursor, frame("snapshot", data, self.codec.encode(cursor)))

    # The reader -----------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        backoff = Backoff()
        while True:
            try:
                if self.head is None:
                    infos = await streams.infos(self.client, self.names)
                    self.head = tuple(i.last for i in infos)
                    self.ready.set()
                reads = await streams.read_after(
                    self.client, self.names, self.head, block_ms=self.block_ms, count=self.read_count
                )
            except RedisUnavailable as exc:
                if self.stats.reader_ok or self.stats.reader_error is None:
                    log.warning("event feed: %s; retrying", exc)
                self.stats.reader_ok, self.stats.reader_error = False, str(exc)
                await asyncio.sleep(backoff.delay())
                continue
            except Exception as exc:  # a reply it cannot read must not end the feed for good
                log.exception("event feed: reading failed (%s); retrying", one_line(exc))
                self.stats.reader_ok, self.stats.reader_error = False, one_line(exc)
                await asyncio.sleep(backoff.delay())
                continue
            if not self.stats.reader_ok:
                if self.stats.reader_error is not None:
                    log.info("event feed: reading again")
                self.stats.reader_ok, self.stats.reader_error = True, None
            backoff.reset()
            if reads:
                self.publish(reads)

    def publish(self, reads: Sequence[streams.Read]) -> list[Event]:
        """Turn entries into events (each frame rendered once) and offer them to every subscriber."""
        assert self.head is not None
        events, self.head, unreadable = to_events(self.sources, self.codec, self.head, reads)
        self.stats.unreadable += unreadable
        if events:
            self.stats.events += len(events)
            for sub in list(self.subscribers):
                sub.offer(events)
        return events

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ping_seconds)
            for sub in list(self.subscribers):
                sub.offer((PING,))


def to_events(
    sources: Sequence[Source], codec: CursorCodec, cursor: Cursor, reads: Sequence[streams.Read]
) -> tuple[list[Event], Cursor, int]:
    """Entries read after ``cursor`` as events in id order, the cursor after the last of them,
    and how many entries held no JSON document (skipped, with a warning)."""
    events: list[Event] = []
    unreadable = 0
    for index, entry, fields in sorted(reads, key=lambda r: (r[1], r[0])):
        if entry <= cursor[index]:
            continue
        before, cursor = cursor, advance(cursor, index, entry)
        source = sources[index]
        data = _document(fields.get(source.field))
        if data is None:
            unreadable += 1
            log.warning("event feed: %s entry %d-%d holds no JSON document", source.stream, *entry)
            continue
        events.append(
            Event(
                index,
                entry,
                source.kind,
                data,
                before,
                cursor,
                frame(source.kind, data, codec.encode(cursor)),
            )
        )
    return events, cursor, unreadable


def _document(raw: Any) -> str | None:
    """The entry's JSON object text as it was written, or None when it is not one."""
    if not isinstance(raw, str) or not raw.lstrip().startswith("{"):
        return None
    try:
        json.loads(raw)
    except ValueError:
        return None
    return raw
