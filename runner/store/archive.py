"""The archive's side of Redis: what to copy next (the streams after each cursor, the history's
new summaries, the gaps the stream cap opened) and, once the write is done, the cursors moved
forward with what the step did. Two scripts, one round trip each (``scripts.ARCHIVE_READ``,
``scripts.ARCHIVE_FINISH``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.store import replies, scripts
from runner.store.connection import Client, Script, redis_errors
from runner.store.keys import HISTORY_LENGTH, Keys

Entry = tuple[str, dict[str, str]]


@dataclass(frozen=True)
class Gap:
    """Entries of a stage deleted (by the stream cap) after ``start`` and before ``end`` (the first
    entry kept), before the archive copied them; ``cycle``: summaries pushed out of the history."""

    stage: str
    start: str
    end: str | None
    #: How many entries were lost, where the stream counts what was ever added (Redis 7).
    lost: int | None = None


@dataclass
class ArchiveRead:
    """What the next archive write holds."""

    #: Stage -> its stream's entries after the cursor, oldest first.
    entries: dict[str, list[Entry]] = field(default_factory=dict)
    #: Cycle summaries newer than the history's floor (JSON, as the history holds them).
    summaries: list[str] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    #: Stage -> the ordinal of its newest entry read (how many entries the stream had ever taken
    #: up to it), where Redis counts them and the read reached the stream's end.
    ordinals: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ArchiveFinish:
    """What recording the archive step returned."""

    counters: dict[str, float] = field(default_factory=dict)
    ok_at: float | None = None
    #: Stages whose gap was found for the first time by this run.
    new_gaps: list[str] = field(default_factory=list)


def _entries(raw: Any) -> list[Entry]:
    out: list[Entry] = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, list) and len(item) == 2:
            out.append((str(item[0]), replies.pairs(item[1])))
    return out


def _gap(stage: str, raw: Any) -> Gap | None:
    if not isinstance(raw, dict) or not raw.get("from"):
        return None
    end, lost = raw.get("to"), raw.get("lost")
    return Gap(
        stage,
        str(raw["from"]),
        str(end) if isinstance(end, str) else None,
        int(lost) if isinstance(lost, int | float) and not isinstance(lost, bool) else None,
    )


class ArchiveStore:
    """The archive cursor and progress of one deployment (shared by every shard)."""

    def __init__(self, client: Client, keys: Keys, shard: str = "0-1") -> None:
        self.keys = keys
        self.shard = shard
        self._read = Script(client, scripts.ARCHIVE_READ)
        self._finish = Script(client, scripts.ARCHIVE_FINISH)

    async def read(self, count: int) -> ArchiveRead:
        """At most ``count`` entries of each stream after its cursor, and the new summaries."""
        streams = self.keys.stage_streams()
        keys, args = scripts.pack(
            {"archive": self.keys.archive, "history": self.keys.history},
            {"streams": list(streams.values())},
            {"stages": list(streams), "count": count, "history_len": HISTORY_LENGTH},
        )
        async with redis_errors("reading what to archive"):
            raw = await self._read(keys=keys, args=args)
        data = json.loads(raw)
        read = ArchiveRead(warnings=[str(w) for w in data.get("warnings") or []])
        for item in data.get("streams") or []:
            stage = str(item.get("stage"))
            read.entries[stage] = _entries(item.get("entries"))
            added = item.get("added")
            if isinstance(added, int | float) and not isinstance(added, bool):
                read.ordinals[stage] = int(added)
            gap = _gap(stage, item.get("gap"))
            if gap is not None:
                read.gaps.append(gap)
        history = data.get("history")
        read.summaries = [str(s) for s in history] if isinstance(history, list) else []
        gap = _gap("cycle", data.get("history_gap"))
        if gap is not None:
            read.gaps.append(gap)
        return read

    async def finish(
        self,
        *,
        cursors: Mapping[str, str],
        ordinals: Mapping[str, int],
        history_from: str | None,
        history_max: str | None,
        gaps: list[Gap],
        result: str,
        error: str,
        now: float,
        counters: Mapping[str, float],
        want_counters: bool,
    ) -> ArchiveFinish:
        """Move the cursors forward, note the gaps and the result, add the metric increments."""
        keys, args = scripts.pack(
            {"archive": self.keys.archive, "counters": self.keys.counters(self.shard)},
            args={
                "cursors": dict(cursors),
                "ordinals": dict(ordinals),
                "history_from": history_from,
                "history_max": history_max,
                "gaps": [{"stage": g.stage, "from": g.start, "to": g.end, "lost": g.lost} for g in gaps],
                "result": result,
                "error": error,
                "now": now,
                "counters": dict(counters),
                "want_counters": want_counters,
            },
        )
        async with redis_errors("recording the archive step"):
            raw = await self._finish(keys=keys, args=args)
        data = json.loads(raw)
        new_gaps = data.get("new_gaps")
        return ArchiveFinish(
            counters=replies.numbers(data.get("counters")),
            ok_at=replies.as_float(data.get("ok_at")),
            new_gaps=[str(s) for s in new_gaps] if isinstance(new_gaps, list) else [],
        )
