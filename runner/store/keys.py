"""Every Redis name the runner uses, in one place.

A configurable prefix goes before every name. On Redis Cluster it is a hash tag (``{runner}:``
when none is set; see ``runner.redis_url.cluster_prefix``), so that every key a script touches,
including the heartbeat keys the lock script derives from a lock's owner, lives in one slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.config import Settings

#: How long a published signal id is remembered, so a re-run cannot publish it twice.
SIGNAL_ID_TTL_SECONDS = 6 * 3600
#: How many cycle summaries the history keeps.
HISTORY_LENGTH = 200
#: How many cycle summaries the cycle stream keeps at least (``MAXLEN ~``): ``/api/history``
#: serves up to this many.
CYCLES_LENGTH = 1000
#: Slack added to the cycle lease beyond the cycle's own deadline and grace period.
LEASE_SLACK_SECONDS = 15
#: How long "this transition was claimed for sending" is remembered. A transition's id carries
#: the time it happened, so only runs and commands that saw it (within minutes) can name it.
NOTIFY_MARKER_TTL_SECONDS = 7 * 86400
#: A pending notification older than this is dropped rather than sent late.
NOTIFY_MAX_AGE_SECONDS = 86400


@dataclass(frozen=True)
class Keys:
    """Redis names for one deployment (prefix and publish names from the settings)."""

    prefix: str = ""
    stream_name: str = "signals:raw"
    channel_name: str = "channel:raw-signals"
    latest_name: str = "signals:latest"
    lock_prefix: str = "signal:lock:"

    @classmethod
    def for_settings(cls, settings: Settings) -> Keys:
        """The names a deployment's settings give (prefix, publish names, lock prefix)."""
        return cls(
            prefix=settings.redis.effective_key_prefix(),
            stream_name=settings.publish.stream,
            channel_name=settings.publish.channel,
            latest_name=settings.publish.latest_hash,
            lock_prefix=settings.locks.redis_key_prefix,
        )

    def _k(self, name: str) -> str:
        return f"{self.prefix}{name}"

    # Published signals -------------------------------------------------------------------
    @property
    def stream(self) -> str:
        return self._k(self.stream_name)

    @property
    def channel(self) -> str:
        return self._k(self.channel_name)

    @property
    def latest(self) -> str:
        return self._k(self.latest_name)

    # Stage outputs ------------------------------------------------------------------------
    @property
    def scored_stream(self) -> str:
        return self._k("signals:scored")

    @property
    def scored_latest(self) -> str:
        return self._k("signals:latest:scored")

    @property
    def scored_channel(self) -> str:
        return self._k("channel:scored-signals")

    @property
    def advised_stream(self) -> str:
        return self._k("signals:advised")

    @property
    def advised_latest(self) -> str:
        return self._k("signals:latest:advised")

    @property
    def advised_channel(self) -> str:
        return self._k("channel:advised-signals")

    @property
    def reports_stream(self) -> str:
        return self._k("reports:cycle")

    @property
    def reports_latest(self) -> str:
        """The latest report (a string: the JSON document)."""
        return self._k("reports:latest")

    @property
    def reports_channel(self) -> str:
        return self._k("channel:cycle-reports")

    # Outcomes ------------------------------------------------------------------------------
    @property
    def outcomes_stream(self) -> str:
        """Every scored outcome (fields ``symbol``, ``doc``)."""
        return self._k("signals:outcomes")

    def outcome_pending(self, symbol: str) -> str:
        """A symbol's published signals whose horizons have not all matured: minute -> JSON."""
        return self._k(f"runner:outcomes:pending:{symbol}")

    @property
    def outcome_totals(self) -> str:
        """Outcome totals since the start: ``symbol|model|action|horizon|stat`` -> number."""
        return self._k("runner:outcomes:totals")

    def outcome_day(self, day: datetime) -> str:
        """The outcome totals of one UTC day (what ``runner scorecard --since`` adds up)."""
        return self._k(f"runner:outcomes:totals:{day:%Y-%m-%d}")

    def stage_streams(self) -> dict[str, str]:
        """Stage -> the stream its documents are published to (what the archive copies)."""
        return {
            "signal": self.stream,
            "score": self.scored_stream,
            "advice": self.advised_stream,
            "report": self.reports_stream,
            "outcome": self.outcomes_stream,
        }

    @property
    def archive(self) -> str:
        """The PostgreSQL archive's progress: ``cursor:<stage>`` (the newest stream entry
        archived), ``history_from``/``history_max`` (cycle ids), ``gap:<stage>`` (the last gap
        found), ``ok_at``, ``error_at``, ``error``, ``result``."""
        return self._k("runner:archive")

    def published(self, signal_id: str) -> str:
        """Marker that a document was published (idempotency): ``<signal id>`` for a signal,
        ``score:<id>``, ``advice:<id>`` and ``report:<minute>:<shard>`` for the others."""
        return self._k(f"runner:published:{signal_id}")

    # Locks, leases and liveness ----------------------------------------------------------
    def lock(self, symbol: str) -> str:
        return self._k(f"{self.lock_prefix}{symbol}")

    @property
    def lock_pattern(self) -> str:
        return self._k(f"{self.lock_prefix}*")

    def symbol_of_lock(self, key: str) -> str:
        return key[len(self._k(self.lock_prefix)) :]

    @property
    def heartbeat_prefix(self) -> str:
        """Lua scripts append the owner's instance id to this to find its heartbeat."""
        return self._k("runner:heartbeat:")

    def heartbeat(self, instance_id: str) -> str:
        return f"{self.heartbeat_prefix}{instance_id}"

    @property
    def heartbeat_pattern(self) -> str:
        return f"{self.heartbeat_prefix}*"

    def lease(self, shard: str) -> str:
        """One cycle per shard at a time."""
        return self._k(f"runner:lease:{shard}")

    @property
    def fencing(self) -> str:
        """Counter every lock acquisition takes its fencing token from."""
        return self._k("runner:fencing")

    # Cross-run state ---------------------------------------------------------------------
    @property
    def kill_switch(self) -> str:
        return self._k("runner:kill_switch")

    def breaker(self, name: str) -> str:
        return self._k(f"runner:breaker:{name}")

    def backpressure(self, shard: str) -> str:
        return self._k(f"runner:backpressure:{shard}")

    @property
    def backpressure_pattern(self) -> str:
        return self._k("runner:backpressure:*")

    def shard_of_backpressure(self, key: str) -> str:
        """``runner:backpressure:0-2`` -> ``0/2``."""
        return key.rsplit(":", 1)[-1].replace("-", "/")

    @property
    def latency(self) -> str:
        """Recent analysis latencies, newest first, as ``<epoch>:<ms>``."""
        return self._k("runner:latency")

    @property
    def paused(self) -> str:
        return self._k("runner:paused")

    @property
    def stats(self) -> str:
        """Per-symbol stats: symbol -> JSON."""
        return self._k("runner:stats")

    @property
    def history(self) -> str:
        """Cycle summaries, newest first."""
        return self._k("runner:history")

    @property
    def cycles(self) -> str:
        """The same summaries as a capped stream (entry field ``doc``), so that they
        can be followed from a cursor like every other stream the dashboard shows."""
        return self._k("runner:cycles")

    @property
    def last_cycle(self) -> str:
        """The full outcome of the last cycle (the ``runner cycle --json`` document)."""
        return self._k("runner:last_cycle")

    def spend(self, day: datetime) -> str:
        """Analyzer spend and calls of one UTC day."""
        return self._k(f"runner:spend:{day:%Y-%m-%d}")

    @property
    def ratelimit_tat(self) -> str:
        """The shared rate limit's theoretical arrival time (GCRA)."""
        return self._k("runner:ratelimit:tat")

    @property
    def ratelimit_pause(self) -> str:
        """Until when a 429's Retry-After pauses every caller."""
        return self._k("runner:ratelimit:pause")

    def failing(self, shard: str) -> str:
        """A shard's streak of failed cycles (count, since, error class)."""
        return self._k(f"runner:failing:{shard}")

    # Notifications -----------------------------------------------------------------------
    @property
    def notify_outbox(self) -> str:
        """Notifications not yet delivered to every URL: id -> JSON (attempts, lease, message)."""
        return self._k("runner:notify:outbox")

    def notify_marker(self, notice_id: str) -> str:
        """Marker that the transition ``notice_id`` was claimed for sending (sent once)."""
        return self._k(f"runner:notify:sent:{notice_id}")

    def counters(self, shard: str) -> str:
        """Cumulative metric totals of one shard (series -> value); each shard pushes its own."""
        return self._k(f"runner:metrics:counters:{shard}")

    def gauges(self, shard: str) -> str:
        """Gauges that must outlive a run (the last success) of one shard."""
        return self._k(f"runner:metrics:gauges:{shard}")
