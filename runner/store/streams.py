"""Reading the streams: the latest entries, then every new one as it arrives (``runner watch``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from runner.errors import DependencyError
from runner.store.connection import Client, redis_errors

#: Seconds one blocking read waits for new entries before it asks again.
BLOCK_SECONDS = 1.0
#: Seconds to wait before reading again after Redis failed.
RETRY_SECONDS = 1.0

Entry = tuple[str, dict[str, Any]]


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
