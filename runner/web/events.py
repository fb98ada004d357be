"""``GET /api/events``: Server-Sent Events of every stream the hub serves.

A client that sends a cursor (``Last-Event-ID``, or ``?last_event_id=`` for a new
``EventSource``) gets every entry after it, then the live events: no gap, no duplicate. A cursor
older than what a stream still holds, or one this feed cannot read, gets ``reset`` and then the
snapshot; a client without a cursor gets the snapshot, then the live events. The stream ends with
a ``shutdown`` event when the server stops.

Each client's task only writes: the hub fills its queue. A client whose socket stops taking
writes falls behind, is dropped by the hub, and its connection is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from runner.errors import RedisUnavailable
from runner.store import streams
from runner.web.feed import PING, PREAMBLE, Cursor, advance, comment, frame
from runner.web.hub import Backoff, Event, Hub, Subscriber, to_events
from runner.web.requests import BadRequest, error_response, only_params

log = logging.getLogger(__name__)

#: Entries per stream a resuming client may have missed; further behind, it starts over from the
#: snapshot (with ``reset``), which costs both sides less than replaying the backlog.
CATCH_UP_MAX = 5000
#: Seconds between the comments a stream gets while Redis cannot be read for it.
WAITING_COMMENT_SECONDS = 5.0

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    # nginx and its kin would otherwise hold events back to fill their buffers.
    (b"x-accel-buffering", b"no"),
    (b"x-content-type-options", b"nosniff"),
]


class Dropped(Exception):
    """The hub dropped this client while its write was stuck."""


class EventsEndpoint:
    """The ASGI app of ``/api/events``."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        try:
            params = only_params(request, {"last_event_id"})
        except BadRequest as exc:
            await error_response(422, str(exc))(scope, receive, send)
            return
        if self.hub.closing:
            await error_response(503, "the server is shutting down")(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        if request.method == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        # The browser's own reconnects send the header; a new EventSource can only pass the query.
        asked = request.headers.get("last-event-id") or params.get("last_event_id")
        stream = _Stream(self.hub, send)
        watcher = asyncio.create_task(stream.watch(receive))
        try:
            await stream.run(asked)
        except Dropped:
            return  # uvicorn closes the connection of a response left unfinished
        finally:
            watcher.cancel()
            if stream.sub is not None:
                self.hub.unsubscribe(stream.sub)


class _Stream:
    """One client's stream: its start (catch-up or snapshot), then the live events."""

    def __init__(self, hub: Hub, send: Send) -> None:
        self.hub = hub
        self.send = send
        self.sub: Subscriber | None = None
        self.gone = asyncio.Event()

    async def watch(self, receive: Receive) -> None:
        """Wait for the client to go away (the only message a GET receives after its request)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        if self.sub is not None:
            self.sub.disconnect()

    async def run(self, asked: str | None) -> None:
        await self.write(PREAMBLE)
        while not self.hub.ready.is_set():
            if not await self._wait(self.hub.ready.wait(), WAITING_COMMENT_SECONDS):
                return
        self.sub = self.hub.subscribe()
        if self.gone.is_set():
            return
        start = await self._start(self.sub, asked)
        if start is None:
            if self.sub.final is not None:  # the server stops while Redis is still away
                await self._end(self.sub.final)
            return
        position, frames = start
        if frames:
            await self.write(b"".join(frames))
        await self._live(self.sub, position)

    async def _wait(self, what: Awaitable[Any], seconds: float) -> bool:
        """Wait for ``what`` (or ``seconds``, then send a comment): False once the client is gone."""
        waiter = asyncio.ensure_future(what)
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait({waiter, gone}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, gone):
                task.cancel()
        if self.gone.is_set() or (self.sub is not None and self.sub.ended):
            return False
        if not waiter.done() or waiter.cancelled():
            await self.write(comment("waiting for Redis"))
        return True

    async def _start(self, sub: Subscriber, asked: str | None) -> tuple[Cursor, list[bytes]] | None:
        """Where the client starts, and what it gets before the live events; Redis outages are
        waited out with the client connected."""
        backoff = Backoff()
        while True:
            try:
                return await self._begin(sub, asked)
            except RedisUnavailable as exc:
                log.debug("event stream waits for Redis: %s", exc)
                if not await self._wait(asyncio.sleep(backoff.delay()), WAITING_COMMENT_SECONDS):
                    return None

    async def _begin(self, sub: Subscriber, asked: str | None) -> tuple[Cursor, list[bytes]]:
        hub = self.hub
        wanted = hub.codec.decode(asked) if asked else None
        reset = asked is not None and wanted is None
        if wanted is not None:
            caught = await self._catch_up(wanted, sub.start)
            if caught is not None:
                return caught
            reset = True
        flight = await hub.snapshot()
        frames = [frame("reset", json.dumps({"reason": _reset_reason(wanted)}))] if reset else []
        frames.append(flight.frame)
        position = flight.cursor
        if any(p < s for p, s in zip(position, sub.start, strict=True)):
            # A snapshot read before this client joined: what came between is in the streams.
            caught = await self._catch_up(position, sub.start)
            if caught is not None:
                position, more = caught
                frames += more
        return position, frames

    async def _catch_up(self, after: Cursor, until: Cursor) -> tuple[Cursor, list[bytes]] | None:
        """The frames of every entry after ``after`` up to ``until``, or None when some were
        trimmed away (or are too many to replay)."""
        hub = self.hub
        async with hub.reads:
            infos, found = await streams.ranges_with_infos(
                hub.client, hub.names, after, until, CATCH_UP_MAX + 1
            )
        if any(i.lost_after(p) for i, p in zip(infos, after, strict=True)):
            return None
        if any(len(rows) > CATCH_UP_MAX for rows in found):
            return None
        reads = [(i, entry, fields) for i, rows in enumerate(found) for entry, fields in rows]
        events, position, _ = to_events(hub.sources, hub.codec, after, reads)
        return position, [e.frame for e in events]

    async def _live(self, sub: Subscriber, position: Cursor) -> None:
        while True:
            await sub.wake.wait()
            if sub.dropped or sub.closed:
                return
            chunks, position = render(sub.take(), position, self.hub)
            if sub.final is not None:
                await self._end(b"".join([*chunks, sub.final]))
                return
            if chunks:
                await self.write(b"".join(chunks))

    async def _end(self, last: bytes) -> None:
        await self.write(last)
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def write(self, data: bytes) -> None:
        sub = self.sub
        if sub is not None:
            sub.sending = True
        try:
            await self.send({"type": "http.response.body", "body": data, "more_body": True})
        except asyncio.CancelledError:
            # Dropped by the hub, or the server's grace for closing streams ran out: either way
            # this client's socket takes no writes, and the connection is closed without more.
            task = asyncio.current_task()
            gone = sub is not None and (sub.dropped or sub.final is not None)
            if gone and task is not None and task.cancelling() == 1:
                task.uncancel()
                raise Dropped from None
            raise
        finally:
            if sub is not None:
                sub.sending = False


def render(items: Sequence[Event | bytes], position: Cursor, hub: Hub) -> tuple[list[bytes], Cursor]:
    """The frames of queued items for a client at ``position`` (pure): events it has already had
    are left out, a client in step with the hub gets the frame rendered once for all, and pings
    are sent only when nothing else is."""
    chunks: list[bytes] = []
    pinged = False
    for item in items:
        if isinstance(item, bytes):
            pinged = True
            continue
        if item.entry <= position[item.source]:
            continue
        if position is item.before or position == item.before:
            chunks.append(item.frame)
            position = item.after
        else:
            position = advance(position, item.source, item.entry)
            chunks.append(frame(item.kind, item.data, hub.codec.encode(position)))
    if pinged and not chunks:
        chunks.append(PING)
    return chunks, position


def _reset_reason(wanted: Cursor | None) -> str:
    if wanted is None:
        return "the cursor is not one of this feed's; starting over from the current state"
    return "entries after the cursor are no longer held; starting over from the current state"
