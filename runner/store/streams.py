"""Reading streams: the latest entries, following several at once (``runner watch``), the newest
entries that match (``runner history`` without the archive), and what the event feed of ``runner
serve`` needs to follow several streams from a cursor.

Stream entry ids are ``<milliseconds>-<sequence>``; the feed handles them as ``StreamId`` pairs of
ints, so that they compare as Redis orders them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from runner.errors import DependencyError
from runner.store.connection import Client, redis_errors

#: Seconds one blocking read waits for new entries before it asks again.
BLOCK_SECONDS = 1.0
#: Seconds to wait before reading again after Redis failed.
RETRY_SECONDS = 1.0

Entry = tuple[str, dict[str, Any]]
#: An entry id as (milliseconds, sequence).
StreamId = tuple[int, int]
#: Before every entry: "nothing of this stream seen yet".
ZERO: StreamId = (0, 0)


def parse_id(text: str) -> StreamId:
    """``"1732370741203-4"`` -> ``(1732370741203, 4)``; raises ValueError for anything else."""
    ms, sep, seq = str(text).partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"not a stream entry id: {text!r}")
    return int(ms), int(seq)


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


async def latest(client: Client, stream: str, count: int) -> list[Entry]:
    """The newest ``count`` entries of ``stream``, oldest first."""
    if count <= 0:
        return []
    async with redis_errors("reading the signal stream"):
        entries: list[Any] = list(await client.xrevrange(stream, count=count) or [])
    return [(str(i), dict(f)) for i, f in reversed(entries)]


async def end_of(client: Client, stream: str) -> str:
    """The id of the newest entry now (``0-0`` for an empty stream): following from there misses
    nothing, where a bare ``$`` on every read would miss what arrives between two reads."""
    newest = await latest(client, stream, 1)
    return newest[-1][0] if newest else "0-0"


async def follow(
    client: Client, cursors: dict[str, str], stop: asyncio.Event | None = None
) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    """Every entry added to each stream after its cursor (an entry id), as ``(stream, id, fields)``,
    as it arrives, until ``stop`` is set (checked within a read's block time); a Redis outage is
    waited out (each read resumes where it stopped)."""
    cursors = dict(cursors)
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            async with redis_errors("following the streams"):
                replies: Any = await client.xread(cursors, block=int(BLOCK_SECONDS * 1000), count=100)  # type: ignore[arg-type]
        except DependencyError:
            await asyncio.sleep(RETRY_SECONDS)
            continue
        for stream, entries in replies or []:
            for entry_id, fields in entries:
                cursors[str(stream)] = str(entry_id)
                yield str(stream), str(entry_id), dict(fields)


async def newest(
    client: Client,
    stream: str,
    *,
    since_ms: int | None,
    count: int,
    keep: Callable[[str, dict[str, Any]], bool],
    page: int = 500,
) -> list[Entry]:
    """The newest ``count`` entries of ``stream`` that ``keep`` accepts and that Redis took at or
    after ``since_ms``, newest first (read a page at a time)."""
    out: list[Entry] = []
    upper = "+"
    floor = str(since_ms) if since_ms is not None else "-"
    async with redis_errors("reading the streams"):
        while len(out) < count:
            entries: list[Any] = list(await client.xrevrange(stream, max=upper, min=floor, count=page) or [])
            for entry_id, fields in entries:
                if keep(str(entry_id), dict(fields)):
                    out.append((str(entry_id), dict(fields)))
                    if len(out) >= count:
                        break
            if len(entries) < page:
                break
            upper = f"({entries[-1][0]}"
    return out


# Several streams from a cursor (the event feed) ------------------------------------------------


@dataclass(frozen=True)
class StreamInfo:
    """Where a stream stands, and what it no longer holds."""

    #: The last id it ever gave (its entries' ids never go below this again).
    last: StreamId = ZERO
    #: Its oldest entry still held (None when it holds none).
    first: StreamId | None = None
    #: The newest id removed by XDEL (Redis 7; trimming does not move it).
    max_deleted: StreamId = ZERO
    #: How many entries were ever removed, by trimming or XDEL (None before Redis 7).
    removed: int | None = None

    def lost_after(self, position: StreamId) -> bool:
        """Whether entries after ``position`` may have been removed before a reader at
        ``position`` read them. Trimming removes the oldest entries, so a position before the
        oldest entry held has lost what lay between (when the reader's own last entry is the
        only one trimmed, this says lost too: the cautious answer)."""
        if self.max_deleted > position:
            return True
        if self.removed == 0:
            return False
        if self.first is None:
            return position < self.last
        return position < self.first


def _id_or(raw: Any, default: StreamId | None) -> StreamId | None:
    try:
        return parse_id(raw) if raw else default
    except ValueError:
        return default


def stream_info(reply: Any) -> StreamInfo:
    """An ``XINFO STREAM`` reply; a missing key (an error reply) or a wrong type is an empty stream."""
    if not isinstance(reply, dict):
        return StreamInfo()
    first_entry = reply.get("first-entry")
    first = _id_or(first_entry[0], None) if isinstance(first_entry, list | tuple) and first_entry else None
    added, length = reply.get("entries-added"), reply.get("length")
    removed = added - length if isinstance(added, int) and isinstance(length, int) else None
    return StreamInfo(
        last=_id_or(reply.get("last-generated-id"), ZERO) or ZERO,
        first=first,
        max_deleted=_id_or(reply.get("max-deleted-entry-id"), ZERO) or ZERO,
        removed=removed,
    )


async def infos(client: Client, streams: Sequence[str]) -> list[StreamInfo]:
    """Where each stream stands, in one round trip."""
    async with redis_errors("reading the event streams"), client.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_stream(stream)
        replies = await pipe.execute(raise_on_error=False)
        _raise_connection_errors(replies)
    return [stream_info(r) for r in replies]


#: One entry read from one of several streams: (index of its stream, id, fields).
Read = tuple[int, StreamId, dict[str, str]]


async def read_after(
    client: Client,
    streams: Sequence[str],
    positions: Sequence[StreamId],
    *,
    block_ms: int,
    count: int,
) -> list[Read]:
    """One ``XREAD BLOCK`` over ``streams``: the entries after each stream's position (at most
    ``count`` per stream), waiting up to ``block_ms`` for the first one. A stream of the wrong
    type is skipped rather than failing the read of the others."""
    index = {s: i for i, s in enumerate(streams)}
    wanted: dict[Any, Any] = {s: format_id(p) for s, p in zip(streams, positions, strict=True)}
    async with redis_errors("following the event streams"):
        try:
            replies: Any = await client.xread(wanted, block=block_ms, count=count)
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            readable = await _streams_only(client, streams)
            if not readable:
                await asyncio.sleep(block_ms / 1000)
                return []
            replies = await client.xread({s: wanted[s] for s in readable}, block=block_ms, count=count)
    out: list[Read] = []
    for name, entries in replies or []:
        i = index[str(name)]
        for entry_id, fields in entries:
            out.append((i, parse_id(entry_id), dict(fields)))
    return out


async def _streams_only(client: Client, streams: Sequence[str]) -> list[str]:
    async with client.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.type(stream)
        kinds = await pipe.execute()
    return [s for s, kind in zip(streams, kinds, strict=True) if kind in ("stream", "none")]


async def ranges_with_infos(
    client: Client,
    streams: Sequence[str],
    after: Sequence[StreamId],
    until: Sequence[StreamId],
    count: int,
) -> tuple[list[StreamInfo], list[list[tuple[StreamId, dict[str, str]]]]]:
    """Atomically (one MULTI): where each stream stands, and its entries after ``after[i]`` up to
    and including ``until[i]`` (at most ``count``; none where ``until[i] <= after[i]``). Read
    together, so that nothing can be trimmed between the check and the read."""
    async with redis_errors("reading the event streams"), client.pipeline(transaction=True) as pipe:
        for stream in streams:
            pipe.xinfo_stream(stream)
        for stream, start, end in zip(streams, after, until, strict=True):
            if end > start:
                pipe.xrange(stream, f"({format_id(start)}", format_id(end), count=count)
            else:
                pipe.echo("")
        replies = await pipe.execute(raise_on_error=False)
        _raise_connection_errors(replies)
    n = len(streams)
    found: list[list[tuple[StreamId, dict[str, str]]]] = []
    for reply in replies[n:]:
        rows = reply if isinstance(reply, list) else []
        found.append([(parse_id(i), dict(f)) for i, f in rows])
    return [stream_info(r) for r in replies[:n]], found


def _raise_connection_errors(replies: list[Any]) -> None:
    """Error replies of single commands (no such key, wrong type) read as empty streams; a lost
    connection is an outage."""
    for reply in replies:
        if isinstance(reply, Exception) and not isinstance(reply, ResponseError):
            raise reply
