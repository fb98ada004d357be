"""Reading the outcome totals for ``runner scorecard``: one pipelined round trip over the days asked."""

from __future__ import annotations

from datetime import datetime, timedelta

from runner.store import replies
from runner.store.connection import Client, redis_errors
from runner.store.keys import Keys


async def read_days(client: Client, keys: Keys, today: datetime, days: int) -> list[dict[str, str]]:
    """The daily outcome totals of ``today`` and the ``days - 1`` days before it (a key of the
    wrong type reads as empty)."""
    names = [keys.outcome_day(today - timedelta(days=n)) for n in range(days)]
    async with redis_errors("reading the outcome totals"):
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.type(name)
            kinds = await pipe.execute()
        readable = [n for n, kind in zip(names, kinds, strict=True) if kind == "hash"]
        async with client.pipeline(transaction=False) as pipe:
            for name in readable:
                pipe.hgetall(name)
            found = await pipe.execute()
    return [replies.pairs(day) for day in found]
