"""What the HTTP API and the dashboard read: the latest documents per symbol, the latest report,
the last cycles, and all of it at once as a snapshot that knows where each stream stood.

A key holding garbage or the wrong type reads as empty here (the cycle repairs its own keys);
only a lost connection is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from runner.store import replies
from runner.store.connection import Client, redis_errors
from runner.store.keys import Keys
from runner.store.streams import StreamId, stream_info

#: The documents kept per symbol, by the name the API gives them.
STAGES = ("signal", "score", "advice")


@dataclass(frozen=True)
class Snapshot:
    """The dashboard's state at one instant, and where each stream stood at that instant."""

    #: Each stream's last entry id when the snapshot was read (the streams asked for, in order).
    positions: list[StreamId]
    #: symbol -> {"signal": doc, "score": doc, "advice": doc} (None where there is none yet).
    symbols: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    #: Cycle summaries, newest first.
    cycles: list[dict[str, Any]] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return {"symbols": self.symbols, "report": self.report, "cycles": self.cycles}


def _latest_hashes(keys: Keys) -> tuple[str, str, str]:
    return keys.latest, keys.scored_latest, keys.advised_latest


def by_symbol(hashes: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Three latest-document hash replies (signal, score, advice) -> symbol -> {stage: doc}."""
    out: dict[str, dict[str, Any]] = {}
    for stage, raw in zip(STAGES, hashes, strict=True):
        for symbol, text in replies.pairs(raw if isinstance(raw, dict | list) else None).items():
            doc = replies.json_object(text)
            if doc is not None:
                out.setdefault(symbol, dict.fromkeys(STAGES))[stage] = doc
    return dict(sorted(out.items()))


def _docs(entries: Any) -> list[dict[str, Any]]:
    rows = entries if isinstance(entries, list) else []
    docs = (replies.json_object(fields.get("doc")) for _, fields in rows if isinstance(fields, dict))
    return [d for d in docs if d is not None]


def merge_cycles(
    streamed: Iterable[dict[str, Any]], listed: Iterable[dict[str, Any]], limit: int
) -> list[dict[str, Any]]:
    """The cycle stream's summaries and the history list's, each cycle once, newest first.

    Both hold the same recent cycles; the list alone holds those recorded before the stream
    existed, and the stream alone those the shorter list dropped.
    """
    seen: set[Any] = set()
    merged: list[dict[str, Any]] = []
    for doc in [*streamed, *listed]:
        key = doc.get("cycle_id") or id(doc)
        if key not in seen:
            seen.add(key)
            merged.append(doc)
    merged.sort(key=lambda d: str(d.get("started_at") or ""), reverse=True)
    return merged[:limit]


def _listed(raw: Any) -> list[dict[str, Any]]:
    items = raw if isinstance(raw, list) else []
    return [d for d in (replies.json_object(x) for x in items) if d is not None]


async def read_snapshot(client: Client, keys: Keys, streams: Sequence[str], cycles: int) -> Snapshot:
    """Everything the dashboard shows, and each stream's position, in one MULTI: the documents
    are exactly those up to the positions, so following the streams from there misses nothing."""
    async with redis_errors("reading the dashboard's snapshot"), client.pipeline(transaction=True) as pipe:
        for stream in streams:
            pipe.xinfo_stream(stream)
        for name in _latest_hashes(keys):
            pipe.hgetall(name)
        pipe.get(keys.reports_latest)
        pipe.xrevrange(keys.cycles, count=cycles)
        pipe.lrange(keys.history, 0, cycles - 1)
        answers = await pipe.execute(raise_on_error=False)
        _check(answers)
    n = len(streams)
    positions = [stream_info(a).last for a in answers[:n]]
    hashes, report_raw, streamed, listed = answers[n : n + 3], answers[n + 3], answers[n + 4], answers[n + 5]
    report = replies.json_object(report_raw) if isinstance(report_raw, str) else None
    return Snapshot(
        positions=positions,
        symbols=by_symbol(hashes),
        report=report,
        cycles=merge_cycles(_docs(streamed), _listed(listed), cycles),
    )


async def read_latest(client: Client, keys: Keys) -> dict[str, dict[str, Any]]:
    """symbol -> {"signal", "score", "advice"}: the latest document of each (None where none)."""
    async with redis_errors("reading the latest documents"), client.pipeline(transaction=False) as pipe:
        for name in _latest_hashes(keys):
            pipe.hgetall(name)
        answers = await pipe.execute(raise_on_error=False)
        _check(answers)
    return by_symbol(answers)


async def read_history(client: Client, keys: Keys, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` cycle summaries, newest first."""
    async with redis_errors("reading the cycle history"), client.pipeline(transaction=False) as pipe:
        pipe.xrevrange(keys.cycles, count=limit)
        pipe.lrange(keys.history, 0, limit - 1)
        streamed, listed = await pipe.execute(raise_on_error=False)
        _check([streamed, listed])
    return merge_cycles(_docs(streamed), _listed(listed), limit)


def _check(answers: list[Any]) -> None:
    """A wrong-type key answers an error that reads as empty; anything else is an outage."""
    for answer in answers:
        if isinstance(answer, Exception) and not isinstance(answer, ResponseError):
            raise answer
