"""The notification outbox: each transition claimed once across every run, kept until delivered.

``claim`` (one script) sets each new notice's marker with ``SET NX`` (the first run to see a
transition wins; every later one, in any process, finds the marker) and puts what it won in the
outbox, then takes every entry that is due, leasing it to this run: a new one, or one an earlier
run failed to deliver. ``settle`` (one script) removes what was delivered or given up, keeps the
rest for the next run with the URLs that already took it, and adds the outcome to the shard's
metric totals (``notifications_total``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.store import scripts
from runner.store.connection import Client, Script, redis_errors
from runner.store.keys import NOTIFY_MARKER_TTL_SECONDS, NOTIFY_MAX_AGE_SECONDS, Keys


@dataclass(frozen=True)
class Entry:
    """A notification in the outbox."""

    id: str
    event: str
    title: str
    body: str
    kind: str
    created_at: float
    #: Sends so far, this one included once taken.
    attempts: int = 0
    #: Keys of the URLs that already took it (``delivery.Target.key``: no secret).
    done: tuple[str, ...] = ()

    def to_doc(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "event": self.event,
                "title": self.title,
                "body": self.body,
                "kind": self.kind,
                "created_at": self.created_at,
                "attempts": self.attempts,
                "lease_until": 0,
                "done": list(self.done),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_doc(cls, raw: str) -> Entry | None:
        try:
            doc = json.loads(raw)
            done = doc.get("done") or []
            return cls(
                id=str(doc["id"]),
                event=str(doc.get("event") or "unknown"),
                title=str(doc.get("title") or ""),
                body=str(doc.get("body") or ""),
                kind=str(doc.get("kind") or "info"),
                created_at=float(doc.get("created_at") or 0),
                attempts=int(doc.get("attempts") or 0),
                # An empty list comes back from Lua's cjson as an empty object.
                done=tuple(str(d) for d in done) if isinstance(done, list) else (),
            )
        except (TypeError, ValueError, KeyError, AttributeError):
            return None


@dataclass
class Claim:
    """What ``claim`` found: the ids this run won, what it is to send, what was too old."""

    claimed: list[str] = field(default_factory=list)
    taken: list[Entry] = field(default_factory=list)
    dropped: list[Entry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Settled:
    """The end of one send of an entry: ``remove`` it (delivered or given up), or keep it with
    the URLs that took it and the error for the next run."""

    id: str
    remove: bool
    done: tuple[str, ...] = ()
    error: str = ""


class Outbox:
    """The outbox's two scripts; each call is one round trip."""

    def __init__(self, client: Client, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._claim = Script(client, scripts.NOTIFY_CLAIM)
        self._settle = Script(client, scripts.NOTIFY_SETTLE)

    async def claim(
        self,
        entries: Sequence[Entry],
        *,
        now: float,
        holder: str,
        lease_seconds: float,
        limit: int = 20,
        max_age: float = NOTIFY_MAX_AGE_SECONDS,
    ) -> Claim:
        """Claim ``entries`` (those no run claimed before) and take what is due, leased to ``holder``."""
        keys, args = scripts.pack(
            {"outbox": self.keys.notify_outbox},
            {"markers": [self.keys.notify_marker(e.id) for e in entries]},
            {
                "notices": [{"id": e.id, "doc": e.to_doc()} for e in entries],
                "now": now,
                "marker_ttl": NOTIFY_MARKER_TTL_SECONDS,
                "holder": holder,
                "lease": lease_seconds,
                "limit": limit,
                "max_age": max_age,
            },
        )
        async with redis_errors("claiming notifications"):
            raw = await self._claim(keys=keys, args=args)
        data = json.loads(raw)
        taken = [e for e in (Entry.from_doc(x) for x in _list(data.get("taken"))) if e is not None]
        dropped = [e for e in (Entry.from_doc(x) for x in _list(data.get("dropped"))) if e is not None]
        return Claim(
            claimed=[str(x) for x in _list(data.get("claimed"))],
            taken=sorted(taken, key=lambda e: (e.created_at, e.id)),
            dropped=dropped,
            warnings=[str(w) for w in _list(data.get("warnings"))],
        )

    async def settle(
        self, items: Sequence[Settled], counters: Mapping[str, float], *, holder: str, shard: str
    ) -> None:
        """Remove or keep each sent entry (only while ``holder`` still leases it) and count."""
        keys, args = scripts.pack(
            {"outbox": self.keys.notify_outbox, "counters": self.keys.counters(shard)},
            args={
                "holder": holder,
                "items": [
                    {"id": i.id, "remove": i.remove, "done": list(i.done), "error": i.error} for i in items
                ],
                "counters": dict(counters),
            },
        )
        async with redis_errors("settling notifications"):
            await self._settle(keys=keys, args=args)

    async def pending(self) -> list[Entry]:
        """Every entry in the outbox (for status and tests)."""
        async with redis_errors("reading the notification outbox"):
            if await self.client.type(self.keys.notify_outbox) != "hash":
                return []
            raw = await self.client.hgetall(self.keys.notify_outbox)
        return [e for e in (Entry.from_doc(str(v)) for v in raw.values()) if e is not None]


def _list(value: Any) -> list[Any]:
    """A Lua array from cjson: an empty one arrives as an empty object."""
    return value if isinstance(value, list) else []
