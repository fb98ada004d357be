"""The cycle's archive step, after the record step (``record.conclude``).

1. Read from Redis what is not archived yet: each stream's entries after its cursor, the
   history's new cycle summaries, and any gap the stream cap opened behind a cursor (one script).
2. Write them to PostgreSQL in one statement, idempotent by document id, within what is left of
   the cycle's time (``archive.timeout_seconds`` at most).
3. Move the cursors forward (only when the write succeeded), note the result and the gaps, add
   ``archive_writes_total{result}``, ``archive_documents_total{stage}`` and ``archive_gap_total``
   (one script).

PostgreSQL down, slow or on another schema costs one warning, never the cycle: the documents stay
in the streams and a later run copies them. A dry run's store has no archiver, so it archives
nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from runner.archive import postgres, rows
from runner.errors import ArchiveRefused, ArchiveUnavailable, RedisUnavailable
from runner.metrics import series
from runner.run import Run
from runner.store.archive import Gap
from runner.store.state import lease_ttl

log = logging.getLogger(__name__)


@dataclass
class Archived:
    """What the step did: ``ok``, ``error``, ``timeout`` or ``refused``, and what to export."""

    result: str
    #: The metric totals after the step (for the export), when they were asked for.
    counters: dict[str, float] | None = None
    #: When the archive was last written, by any run.
    ok_at: float | None = None


def gap_line(gap: Gap, stream: str) -> str:
    """How a gap is told: what was lost, between when and when."""
    what = f"{gap.lost} entries" if gap.lost else "entries"
    return (
        f"archive gap: {stream} dropped {what} between {rows.id_moment(gap.start)} and "
        f"{rows.id_moment(gap.end)} before they were archived (the stream's cap); the archive lacks them"
    )


async def archive_step(run: Run, warn: Callable[[str], None], *, want_counters: bool) -> Archived | None:
    """Copy to PostgreSQL what is not archived yet (see the module); None when there is no
    archive or nothing could be read from Redis."""
    settings = run.settings
    cfg = settings.archive
    store = run.store.archiver()
    if cfg.postgres_url is None or store is None:
        return None
    redis_seconds = settings.redis.socket_timeout_seconds + 0.5
    try:
        async with asyncio.timeout(min(redis_seconds, run.budget())):
            read = await store.read(cfg.batch_size)
    except (RedisUnavailable, TimeoutError) as exc:
        warn(f"archive skipped: {exc or 'Redis did not answer before the cycle ran out of time'}")
        return None
    for w in read.warnings:
        log.warning("%s", w)
    batch = rows.build_batch(read.entries, read.summaries)
    if batch.unreadable:
        log.warning("archive: %d entries held no readable document and were left out", batch.unreadable)
    cursors = {stage: entries[-1][0] for stage, entries in read.entries.items() if entries}
    cycle_ids = [str(r["cycle_id"]) for r in batch.rows.get("cycle", [])]
    window = lease_ttl(settings.timeouts.total_timeout_seconds, settings.graceful_shutdown.timeout_seconds)

    result, error, inserted = "ok", "", {}
    if batch.count():
        seconds = max(0.1, min(cfg.timeout_seconds, run.budget() - redis_seconds))
        try:
            inserted = await postgres.write(cfg.postgres_url.get_secret_value(), batch.payload(), seconds)
        except ArchiveRefused as exc:
            result, error = "refused", str(exc)
        except ArchiveUnavailable as exc:
            result, error = ("timeout" if exc.timeout else "error"), str(exc)
    if result != "ok":
        warn(
            f"archive not written: {error}; {batch.count()} document(s) stay in Redis "
            "and a later run copies them"
        )
    increments = {series("archive_writes_total", {"result": result}): 1.0} if batch.count() else {}
    for stage, n in inserted.items():
        if n:
            increments[series("archive_documents_total", {"stage": stage})] = float(n)
    ok = result == "ok"
    try:
        async with asyncio.timeout(min(redis_seconds, max(run.budget(), 0.5))):
            done = await store.finish(
                cursors=cursors if ok else {},
                ordinals=read.ordinals if ok else {},
                history_from=rows.history_floor(cycle_ids, window) if ok else None,
                history_max=max(cycle_ids) if ok and cycle_ids else None,
                gaps=read.gaps,
                result=result,
                error=error,
                now=run.deps.clock.now().timestamp(),
                counters=increments,
                want_counters=want_counters,
            )
    except (RedisUnavailable, TimeoutError) as exc:
        log.warning("archive: could not record its progress (%s); a later run copies the same again", exc)
        return Archived(result)
    streams = run.keys.stage_streams()
    for gap in read.gaps:
        if gap.stage in done.new_gaps:
            warn(gap_line(gap, streams.get(gap.stage, run.keys.history)))
    return Archived(result, done.counters if want_counters else None, done.ok_at)
