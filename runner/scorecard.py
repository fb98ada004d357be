"""The scorecard document that ``runner scorecard`` prints and ``GET /api/scorecard`` answers:
from the PostgreSQL archive when there is one (every outcome it holds), else from the daily
totals Redis keeps (``OUTCOME_DAYS_KEPT`` days). The figures themselves are ``runner.outcomes``'s.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from runner import outcomes
from runner.config import Settings
from runner.record import OUTCOME_DAYS_KEPT
from runner.store.connection import Client, redis_session
from runner.store.keys import Keys
from runner.store.scorecard import read_days

#: Seconds a read of the archive may take.
READ_SECONDS = 30.0


async def build(
    settings: Settings,
    filters: outcomes.Filters,
    days: int | None,
    now: datetime,
    redis: Client | None = None,
) -> dict[str, Any]:
    """The scorecard over the last ``days`` UTC days (today counts as one; None: all that is kept).

    ``redis``: a client already open (``runner serve``'s); without one a session is opened.
    """
    if settings.archive.postgres_url is not None:
        from runner.archive import postgres, rows

        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        found = await postgres.scorecard(
            settings.archive.postgres_url.get_secret_value(),
            since=today - timedelta(days=days - 1) if days else None,
            # An exit minute before the window of candles a cycle fetches can no longer be scored.
            scorable_from=now.replace(second=0, microsecond=0)
            - timedelta(minutes=settings.market.candles - 1),
            horizons=settings.outcomes.horizons_minutes,
            seconds=READ_SECONDS,
        )
        totals, with_data = rows.scorecard_totals(found)
        source = "postgres"
    else:
        days = min(days or OUTCOME_DAYS_KEPT, OUTCOME_DAYS_KEPT)
        keys = Keys.for_settings(settings)
        if redis is not None:
            daily = await read_days(redis, keys, now, days)
        else:
            async with redis_session(settings) as handle:
                daily = await read_days(handle.client, keys, now, days)
        totals, with_data, source = outcomes.merge(daily), outcomes.days_with_data(daily), "redis"
    return {
        "source": source,
        "days": days,
        "horizons_minutes": settings.outcomes.horizons_minutes,
        "fee_bps": settings.outcomes.fee_bps,
        "rows": [r.as_dict() for r in outcomes.rows(totals, filters)],
        "summary": [s.as_dict() for s in outcomes.summaries(totals, with_data, filters)],
        "calibration": [c.as_dict() for c in outcomes.calibration(totals, filters)],
    }
