"""The cycle's archive step with PostgreSQL out of reach, on fakeredis and a real redis-server:
the cycle ends as it would have, with one warning, a counter and its cursors left where they
were; a dry run archives nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from runner.analyzers.builtin import BuiltinAnalyzer
from runner.clock import FrozenClock
from runner.cycle import Deps, run_cycle
from runner.market.synthetic import SyntheticSource
from runner.models import CycleStatus
from runner.store.keys import Keys
from tests.conftest import free_port
from tests.unit.test_cycle import make_settings

KEYS = Keys()
START = datetime(2026, 3, 2, 12, 0, 5, tzinfo=UTC)
SYMBOLS = ["ETH/USD", "BTC/USD"]


def settings(**overrides: Any) -> Any:
    down = f"postgresql://runner:pw@127.0.0.1:{free_port()}/archive"
    return make_settings(archive={"postgres_url": down, "timeout_seconds": 10}, **overrides)


async def test_an_unreachable_database_costs_one_warning_and_never_the_cycle(any_redis: Any) -> None:
    clock = FrozenClock(START)
    plain = await run_cycle(
        make_settings(), Deps(any_redis, BuiltinAnalyzer(), SyntheticSource(), clock), symbols=SYMBOLS
    )
    clock.advance(60)

    archived = await run_cycle(
        settings(), Deps(any_redis, BuiltinAnalyzer(), SyntheticSource(), clock), symbols=SYMBOLS
    )

    assert (
        (archived.status, archived.exit_code) == (plain.status, plain.exit_code) == (CycleStatus.COMPLETED, 0)
    )
    assert len(archived.signals) == 2
    (warning,) = [w for w in archived.warnings if "archive" in w]
    assert "PostgreSQL" in warning
    assert "pw@" not in warning
    counters = await any_redis.hgetall(KEYS.counters("0-1"))
    assert float(counters['archive_writes_total{result="error"}']) == 1
    progress = await any_redis.hgetall(KEYS.archive)
    assert progress["result"] == "error"
    assert not [k for k in progress if k.startswith("cursor:")], "nothing was archived: no cursor moved"


async def test_a_dry_run_archives_nothing(any_redis: Any) -> None:
    outcome = await run_cycle(
        settings(),
        Deps(any_redis, BuiltinAnalyzer(), SyntheticSource(), FrozenClock(START)),
        symbols=SYMBOLS,
        dry_run=True,
    )

    assert outcome.signals
    assert not [w for w in outcome.warnings if "archive" in w]
    assert await any_redis.keys("*") == []
