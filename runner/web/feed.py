"""The event feed's vocabulary, pure: which streams it serves as which events, the cursor over
all of them, and the bytes of a Server-Sent Events frame.

A cursor is one position per stream. Each event carries, as its SSE ``id``, the cursor just
after it, so a client that reconnects with its ``Last-Event-ID`` resumes every stream exactly
where it stopped. Clients treat it as opaque; it names the set of streams it belongs to (a
checksum of their names), so a cursor of another deployment or version reads as unknown.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from runner.store.keys import Keys
from runner.store.streams import StreamId

#: One position per served stream, in the order of ``sources``.
Cursor = tuple[StreamId, ...]

#: The version of the cursor's format; part of its checksum.
CURSOR_VERSION = "1"
#: Longest cursor text considered at all.
MAX_CURSOR_CHARS = 512


@dataclass(frozen=True)
class Source:
    """One stream served as one kind of event."""

    #: The SSE event name.
    kind: str
    stream: str
    #: The entry field that holds the JSON document.
    field: str


def sources(keys: Keys) -> tuple[Source, ...]:
    """The streams the feed serves, in cursor order: signals, scores, advice, reports, cycles."""
    return (
        Source("signal", keys.stream, "signal"),
        Source("score", keys.scored_stream, "doc"),
        Source("advice", keys.advised_stream, "doc"),
        Source("report", keys.reports_stream, "doc"),
        Source("cycle", keys.cycles, "doc"),
    )


class CursorCodec:
    """Cursor <-> its opaque text, e.g. ``c1a2b3c4.18f3a2b4c5d-0.0.0.0.18f3a2b4c00-2``."""

    def __init__(self, streams: Sequence[str]) -> None:
        self.size = len(streams)
        names = "\n".join([CURSOR_VERSION, *streams])
        self.tag = f"{zlib.crc32(names.encode()):08x}"

    def encode(self, cursor: Cursor) -> str:
        return ".".join([self.tag, *(f"{ms:x}-{seq:x}" if ms or seq else "0" for ms, seq in cursor)])

    def decode(self, text: str | None) -> Cursor | None:
        """The cursor, or None for text that is not one of this feed's cursors."""
        if not text or len(text) > MAX_CURSOR_CHARS:
            return None
        tag, *parts = text.strip().split(".")
        if tag != self.tag or len(parts) != self.size:
            return None
        out: list[StreamId] = []
        for part in parts:
            if part == "0":
                out.append((0, 0))
                continue
            ms, sep, seq = part.partition("-")
            try:
                out.append((int(ms, 16), int(seq, 16)))
            except ValueError:
                return None
            if not sep or out[-1][0] < 0 or out[-1][1] < 0:
                return None
        return tuple(out)


def advance(cursor: Cursor, index: int, entry: StreamId) -> Cursor:
    """``cursor`` with stream ``index`` moved to ``entry``."""
    return (*cursor[:index], entry, *cursor[index + 1 :])


def frame(event: str, data: str, event_id: str | None = None) -> bytes:
    """One SSE event. ``data`` may span lines: each becomes a ``data:`` line, as the format wants."""
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    """An SSE comment line: ignored by clients, it keeps proxies from closing an idle stream."""
    return f": {text}\n\n".encode()


#: The first bytes of every stream: how long a browser waits before it reconnects (ms).
PREAMBLE = b"retry: 3000\n: connected\n\n"
PING = comment("ping")
