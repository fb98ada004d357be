"""A small Server-Sent Events client on asyncio streams, as a browser's EventSource reads a stream:
HTTP/1.1, chunked transfer encoding, events split on blank lines, comments kept (pings).

Light enough to hold hundreds of streams in one test process (and a thousand in the bench).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Message:
    """One SSE message: an event (``event``, ``id``, ``data``) or a comment line."""

    event: str | None = None
    id: str | None = None
    data: str | None = None
    comment: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        assert self.data is not None, self
        return json.loads(self.data)


def parse_block(block: str) -> Message:
    """One blank-line-separated block of the stream."""
    fields: dict[str, list[str]] = {}
    comment = None
    for line in block.split("\n"):
        if line.startswith(":"):
            comment = line[1:].strip()
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
    retry = fields.get("retry")
    return Message(
        event=(fields.get("event") or [None])[-1],
        id=(fields.get("id") or [None])[-1],
        data="\n".join(fields["data"]) if "data" in fields else None,
        comment=comment if not fields else None,
        retry=int(retry[-1]) if retry else None,
    )


class Closed(Exception):
    """The server ended the stream (or closed the connection)."""


class SseClient:
    """One open event stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self._text = ""
        self._chunked = True
        self.ended = False

    @classmethod
    async def open(
        cls,
        port: int,
        path: str = "/api/events",
        headers: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> SseClient:
        reader, writer = await asyncio.open_connection(host, port, limit=2**22)
        client = cls(reader, writer)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        status_line = (await reader.readline()).decode()
        if not status_line:
            raise Closed("no response")
        client.status = int(status_line.split()[1])
        while True:
            line = (await reader.readline()).decode().strip()
            if not line:
                break
            name, _, value = line.partition(":")
            client.headers[name.strip().lower()] = value.strip()
        client._chunked = client.headers.get("transfer-encoding", "").lower() == "chunked"
        return client

    async def _more(self) -> None:
        if self.ended:
            raise Closed("the stream ended")
        if not self._chunked:
            data = await self.reader.read(65536)
            if not data:
                self.ended = True
                raise Closed("connection closed")
            self._text += data.decode()
            return
        size_line = await self.reader.readline()
        if not size_line:
            self.ended = True
            raise Closed("connection closed")
        size = int(size_line.strip() or b"0", 16)
        if size == 0:
            await self.reader.readline()
            self.ended = True
            raise Closed("the stream ended")
        chunk = await self.reader.readexactly(size + 2)
        self._text += chunk[:-2].decode()

    async def next(self, within: float = 30.0) -> Message:
        """The next message, waiting at most ``within`` seconds."""
        async with asyncio.timeout(within):
            while "\n\n" not in self._text:
                await self._more()
        block, self._text = self._text.split("\n\n", 1)
        return parse_block(block)

    async def next_event(self, within: float = 30.0) -> Message:
        """The next event, skipping comments and the retry hint."""
        while True:
            message = await self.next(within)
            if message.event is not None or message.data is not None:
                return message

    async def events(self, n: int, within: float = 30.0) -> list[Message]:
        return [await self.next_event(within) for _ in range(n)]

    async def read_to_end(self, within: float = 30.0) -> list[Message]:
        """Every message until the server ends the stream."""
        out: list[Message] = []
        try:
            while True:
                out.append(await self.next(within))
        except Closed:
            return out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def stalled_socket(port: int, path: str = "/api/events") -> socket.socket:
    """A client that asks for the stream and then reads nothing (a tiny receive buffer, so the
    server's writes back up soon)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock
