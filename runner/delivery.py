"""Delivering notifications through Apprise, so that each arrives once.

``announce`` is what follows a change: claim the notices in the outbox (its marker lets one run
or command win each transition, ``store/outbox.py``), send what this run took to every URL at
once within ``notify.timeout_seconds``, then settle: delivered, or kept with the URLs that took
it for the next run to retry (``notify.max_attempts`` sends in all), each outcome counted in
``notifications_total{event,result}`` (``sent``, ``failed``: retried later, ``dropped``: given
up). A failure is one warning per notification, masked; never the caller's failure.

Apprise is imported only here, and this module only when notifications are configured.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import apprise

from runner.errors import RedisUnavailable, one_line
from runner.metrics import Increments
from runner.notify import Notice
from runner.redact import mask, masked_url, secret_values
from runner.store.keys import Keys
from runner.store.outbox import Entry, Outbox, Settled

if TYPE_CHECKING:
    from runner.config import Settings
    from runner.store.connection import Client

log = logging.getLogger(__name__)

#: Waiting this much longer than Apprise's own timeout before giving up on it.
GRACE_SECONDS = 0.5
#: A run that took a notification holds it this much longer than its send may take (then a
#: later run may retry it: the first one died).
LEASE_SLACK_SECONDS = 10.0


@functools.cache
def _ready() -> None:
    """Load Apprise's services once, and keep its own log lines to itself: what a send did is
    read from its result, so a failure is one warning of ours, with the secrets masked."""
    with warnings.catch_warnings():
        # Its e-mail service imports the standard library's imghdr, deprecated since 3.11.
        warnings.simplefilter("ignore", DeprecationWarning)
        # Apprise's plugin manager is not annotated.
        apprise.NotificationManager().load_modules()  # type: ignore[no-untyped-call]
    logging.getLogger(apprise.LOGGER_NAME).propagate = False


def check_url(url: str) -> str | None:
    """Why Apprise cannot use ``url`` (naming the service, never the secret parts), or None."""
    _ready()
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        return "must be an Apprise URL such as json://host/path, slack://..., ntfy://topic (got ***)"
    if apprise.Apprise.instantiate(url) is not None:
        return None
    if scheme.lower() not in apprise.NotificationManager():  # type: ignore[no-untyped-call]
        return f"Apprise has no service {scheme}:// ({masked_url(url)})"
    return f"Apprise cannot parse this {scheme}:// URL ({masked_url(url)}); see its page in Apprise's wiki"


@dataclass(frozen=True)
class Target:
    """One configured URL: shown by its label, remembered in Redis by its key (no secret)."""

    index: int
    url: str = field(repr=False)

    @property
    def label(self) -> str:
        return f"notify.urls[{self.index}] ({masked_url(self.url)})"

    @property
    def key(self) -> str:
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]


def targets(settings: Settings) -> list[Target]:
    return [Target(i, u.get_secret_value()) for i, u in enumerate(settings.notify.urls)]


@dataclass(frozen=True)
class Sent:
    """One URL's answer to one message: accepted, or why not (masked)."""

    target: Target
    ok: bool
    error: str = ""


async def send(
    to: Sequence[Target], title: str, body: str, kind: str, within: float, hidden: Sequence[str] = ()
) -> list[Sent]:
    """Send one message to every target at once; each has ``within`` seconds to accept it."""
    if not to:
        return []
    _ready()
    return list(await asyncio.gather(*(_send_one(t, title, body, kind, within, hidden) for t in to)))


async def _send_one(
    target: Target, title: str, body: str, kind: str, within: float, hidden: Sequence[str]
) -> Sent:
    asset = apprise.AppriseAsset(storage_mode=apprise.PersistentStoreMode.MEMORY)
    try:
        service = apprise.Apprise.instantiate(target.url, asset=asset)
        if service is None:
            return Sent(target, False, "Apprise cannot use this URL")
        # No connect or read may outlast the send: the worker thread ends with it.
        service.socket_connect_timeout = min(float(service.socket_connect_timeout), within)
        service.socket_read_timeout = min(float(service.socket_read_timeout), within)
        one = apprise.Apprise(asset=asset)
        one.add(service)
        result = await asyncio.wait_for(
            one.async_notify(
                body=body,
                title=title,
                notify_type=apprise.NotifyType(kind),
                body_format=apprise.NotifyFormat.TEXT,
                timeout=within,
            ),
            within + GRACE_SECONDS,
        )
    except TimeoutError:
        return Sent(target, False, f"no answer within {within:g} s")
    except Exception as exc:  # a service's bug must not become the caller's failure
        return Sent(target, False, mask(one_line(exc), [target.url, *hidden]))
    if result:
        return Sent(target, True)
    if result.status is apprise.AppriseResultStatus.TIMEOUT:
        return Sent(target, False, f"no answer within {within:g} s")
    said = [e.message for r in result for e in r.logs() if e.level in ("WARNING", "ERROR", "CRITICAL")]
    reason = said[-1] if said else f"refused ({result.status.name.lower()})"
    return Sent(target, False, mask(reason.strip(), [target.url, *hidden])[:200])


@dataclass
class Report:
    """What ``announce`` did: ids delivered to every URL, ids not (yet), warnings to log."""

    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def settle_plan(
    sends: Sequence[tuple[Entry, Sequence[Sent]]], dropped: Sequence[Entry], max_attempts: int
) -> tuple[list[Settled], dict[str, float], Report]:
    """What to write back after sending (pure): per entry remove or keep, the counter increments
    and the report with one warning per notification that was not delivered."""
    items: list[Settled] = []
    inc = Increments()
    report = Report()
    for entry, sent in sends:
        failures = [s for s in sent if not s.ok]
        if not failures:
            inc.inc("notifications_total", {"event": entry.event, "result": "sent"})
            items.append(Settled(entry.id, remove=True))
            report.sent.append(entry.id)
            continue
        last = entry.attempts >= max_attempts
        inc.inc("notifications_total", {"event": entry.event, "result": "dropped" if last else "failed"})
        done = tuple(dict.fromkeys([*entry.done, *(s.target.key for s in sent if s.ok)]))
        items.append(Settled(entry.id, remove=last, done=done, error=failures[0].error))
        report.failed.append(entry.id)
        where = "; ".join(f"{s.target.label}: {s.error}" for s in failures)
        then = (
            f"given up after {entry.attempts} attempts"
            if last
            else f"the next run retries it (attempt {entry.attempts} of {max_attempts})"
        )
        report.warnings.append(f"notification {entry.event} not delivered to {where}; {then}")
    for entry in dropped:
        inc.inc("notifications_total", {"event": entry.event, "result": "dropped"})
        report.failed.append(entry.id)
        report.warnings.append(f"notification {entry.event} dropped: still not delivered a day later")
    return items, inc.values, report


async def announce(
    client: Client,
    settings: Settings,
    notices: Sequence[Notice],
    *,
    shard_key: str,
    now: float,
    holder: str | None = None,
) -> Report:
    """Claim ``notices``, send them and every pending one that is due, settle and count.
    Never raises: a failure comes back as a warning."""
    to = targets(settings)
    if not to:
        return Report()
    hidden = secret_values(settings)
    try:
        return await _announce(client, settings, notices, to, hidden, shard_key, now, holder)
    except RedisUnavailable as exc:
        return Report(warnings=[mask(f"notifications not sent: {exc}", hidden)])
    except Exception as exc:  # notifications are never the caller's failure
        return Report(warnings=[mask(f"notifications not sent: {one_line(exc)}", hidden)])


async def _announce(
    client: Client,
    settings: Settings,
    notices: Sequence[Notice],
    to: Sequence[Target],
    hidden: Sequence[str],
    shard_key: str,
    now: float,
    holder: str | None,
) -> Report:
    cfg = settings.notify
    holder = holder or secrets.token_hex(8)
    masked = [n.masked(lambda text: mask(text, hidden)) for n in notices]
    entries = [Entry(n.id, n.event.value, n.title, n.body, n.kind, created_at=now) for n in masked]
    outbox = Outbox(client, Keys.for_settings(settings))
    claim = await outbox.claim(
        entries,
        now=now,
        holder=holder,
        lease_seconds=cfg.timeout_seconds + GRACE_SECONDS + LEASE_SLACK_SECONDS,
    )
    jobs = [(e, [t for t in to if t.key not in e.done]) for e in claim.taken]
    answers = await asyncio.gather(
        *(send(ts, e.title, e.body, e.kind, cfg.timeout_seconds, hidden) for e, ts in jobs)
    )
    items, counters, report = settle_plan(
        [(e, a) for (e, _), a in zip(jobs, answers, strict=True)], claim.dropped, cfg.max_attempts
    )
    report.warnings[:0] = claim.warnings
    if items or counters:
        await outbox.settle(items, counters, holder=holder, shard=shard_key)
    return report
