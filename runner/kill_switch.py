"""The kill switch: one key and the one function that changes it, for the command line and the
HTTP API alike, so that whatever must follow a change (a notification) is added in one place."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runner.store.replies import as_float
from runner.store.state import StateStore


@dataclass(frozen=True)
class KillSwitch:
    """The kill switch as stored."""

    on: bool = False
    reason: str | None = None
    by: str | None = None
    at: float | None = None

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> KillSwitch:
        if fields.get("on") != "1":
            return cls()
        return cls(True, fields.get("reason"), fields.get("by"), as_float(fields.get("at")))

    def to_dict(self) -> dict[str, Any]:
        return {"on": self.on, "reason": self.reason, "by": self.by, "at": self.at}


@dataclass(frozen=True)
class Change:
    """A kill-switch change: what it was and what it is now."""

    before: KillSwitch
    after: KillSwitch

    @property
    def changed(self) -> bool:
        return self.before.on != self.after.on


async def change_kill_switch(
    store: StateStore, *, on: bool, reason: str | None, by: str, now: datetime
) -> Change:
    """Turn the kill switch on (with a reason) or off, and say what changed."""
    before = KillSwitch.from_fields(await store.read_kill_switch())
    if on:
        text = (reason or "").strip()
        await store.set_kill_switch(text, by, now)
        after = KillSwitch(True, text, by, round(now.timestamp(), 3))
    else:
        await store.clear_kill_switch()
        after = KillSwitch()
    return Change(before, after)
