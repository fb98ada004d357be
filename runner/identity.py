"""Who a run is and which minute it belongs to: cycle id, instance id, scheduled minute, signal id."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from datetime import UTC, datetime

from runner.clock import minute_floor
from runner.config import Settings

log = logging.getLogger(__name__)

#: A scheduled time further than this from now cannot be this run's, and is ignored.
SCHEDULE_TOLERANCE_SECONDS = 3600


def new_cycle_id(now: datetime) -> str:
    """Sortable: UTC time to the millisecond plus randomness."""
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def resolve_instance_id(settings: Settings) -> str:
    """``INSTANCE_ID`` (or the config), else ``HOSTNAME``, else random."""
    if settings.instance_id:
        return settings.instance_id
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    if host:
        return host
    return f"runner-{secrets.token_hex(4)}"


def scheduled_minute(settings: Settings, now: datetime) -> datetime:
    """The minute this run was scheduled for.

    The CronJob's scheduled timestamp if given, else the minute encoded at the end of the Job's
    name (``<cronjob>-<minutes since the epoch>``), else now's minute. A value more than an
    hour away from now is ignored (it cannot be this run's).
    """
    candidates: list[datetime] = []
    if settings.scheduled_at:
        try:
            parsed = datetime.fromisoformat(settings.scheduled_at.replace("Z", "+00:00"))
            if parsed.tzinfo is not None:
                candidates.append(parsed)
        except ValueError:
            log.warning("ignoring RUNNER_SCHEDULED_AT=%r: not an ISO 8601 timestamp", settings.scheduled_at)
    if settings.job_name:
        tail = settings.job_name.rsplit("-", 1)[-1]
        if tail.isdigit():
            candidates.append(datetime.fromtimestamp(int(tail) * 60, UTC))
    for candidate in candidates:
        if abs((now - candidate).total_seconds()) < SCHEDULE_TOLERANCE_SECONDS:
            return minute_floor(candidate.astimezone(UTC))
    return minute_floor(now)


def signal_id(symbol: str, minute: datetime) -> str:
    """The signal's idempotency key: one per symbol and scheduled minute."""
    return f"{symbol}:{minute:%Y-%m-%dT%H:%M}"
