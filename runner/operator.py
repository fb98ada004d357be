"""The operator's changes, each with its notification: the kill switch, resume, breaker reset.

The command line (``runner kill-switch on|off``, ``runner resume``, ``runner breaker reset``) and
the HTTP API call these, so a change made by hand is announced at once, under the id a cycle
that sees the same change gives it (``notify.py``): whichever comes first sends it, once. The
change itself never depends on the notification: a send that fails is a warning, retried by
the next runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from runner import notify
from runner.breaker import State
from runner.config import Settings
from runner.shards import Shard
from runner.store.connection import Client
from runner.store.keys import Keys
from runner.store.state import StateStore


@dataclass
class Change:
    """What an operator command changed, and what its notification had to say."""

    #: Whether the state changed (False: it already was as asked).
    changed: bool
    #: The kill switch's fields after the change (for the kill switch).
    state: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _seen(settings: Settings, by: str, now: datetime, command: str) -> notify.Seen:
    return notify.Seen(
        now=now.timestamp(),
        instance_id=by,
        pause_after=settings.adaptive.pause_after_failures,
        recovery_seconds=settings.circuit_breaker.llm_service.recovery_timeout_seconds,
        command=command,
    )


async def _announce(
    client: Client, settings: Settings, notices: list[notify.Notice], now: datetime
) -> list[str]:
    if not notices or not settings.notify.urls:
        return []
    from runner.delivery import announce  # loads Apprise: only with URLs to send to

    # Counted with shard 0's totals: every deployment has a shard 0, and its group is pushed.
    report = await announce(
        client, settings, notices, shard_key=Shard(0, settings.shards).key, now=now.timestamp()
    )
    return report.warnings


async def set_kill_switch(
    client: Client,
    settings: Settings,
    *,
    on: bool,
    reason: str = "",
    by: str,
    now: datetime,
    command: str | None = None,
) -> Change:
    """Turn the kill switch on (``reason`` says why) or off, and announce the change.

    Turning on a switch that is already on updates its reason and keeps since when it is on.
    """
    store = StateStore(client, Keys.for_settings(settings))
    before, after = await store.switch_kill(on, reason, by, now)
    was_on = before.get("on") == "1"
    seen = _seen(settings, by, now, command or ("runner kill-switch on" if on else "runner kill-switch off"))
    notices = []
    if on and not was_on:
        notices.append(notify.kill_switch_on(after, seen))
    elif not on and was_on:
        notices.append(notify.kill_switch_off(before, seen))
    warnings = await _announce(client, settings, notices, now)
    return Change(changed=was_on != on, state=after, warnings=warnings)


async def resume(client: Client, settings: Settings, symbol: str, *, by: str, now: datetime) -> Change:
    """Un-pause ``symbol`` and announce it; ``changed`` is False when it was not paused."""
    store = StateStore(client, Keys.for_settings(settings))
    record = await store.resume_symbol(symbol)
    if record is None:
        return Change(changed=False)
    notice = notify.symbol_resumed(symbol, record, _seen(settings, by, now, f"runner resume {symbol}"))
    return Change(changed=True, warnings=await _announce(client, settings, [notice], now))


async def reset_breaker(client: Client, settings: Settings, *, by: str, now: datetime) -> Change:
    """Close the breaker by hand and announce it; ``changed`` is False when it was closed."""
    store = StateStore(client, Keys.for_settings(settings))
    before, _ = await store.reset_breaker_from()
    if before.state is State.CLOSED:
        return Change(changed=False)
    notice = notify.breaker_closed(before, _seen(settings, by, now, "runner breaker reset"))
    return Change(changed=True, warnings=await _announce(client, settings, [notice], now))
