"""runner serve's own logic: the in-process Redis breaker and the schedule."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from runner import serve
from runner.config import load_settings
from runner.errors import ConfigError, RedisUnavailable
from runner.shards import Shard


def test_next_fire_follows_the_cron_schedule() -> None:
    at = datetime(2026, 11, 23, 14, 5, 30, tzinfo=UTC)
    assert serve.next_fire("*/1 * * * *", at) == datetime(2026, 11, 23, 14, 6, tzinfo=UTC)
    assert serve.next_fire("*/15 * * * *", at) == datetime(2026, 11, 23, 14, 15, tzinfo=UTC)


def test_an_invalid_schedule_is_a_configuration_error() -> None:
    settings = load_settings(None, {"schedule": "99 * * * *"}, environ={})
    with pytest.raises(ConfigError, match="schedule"):
        serve.Service(settings, Shard(0, 1))


async def test_redis_breaker_skips_cycles_after_repeated_outages_and_probes_later(monkeypatch: Any) -> None:
    settings = load_settings(
        None,
        {"circuit_breaker": {"redis": {"failure_threshold": 3, "recovery_timeout_seconds": 30}}},
        environ={},
    )
    service = serve.Service(settings, Shard(0, 1))
    calls: list[str] = []
    clock = {"now": 1000.0}
    outcome: dict[str, Any] = {"raise": True}

    async def fake_run_cycle(*args: Any, **kwargs: Any) -> Any:
        calls.append("cycle")
        if outcome["raise"]:
            raise RedisUnavailable("Redis unavailable during the cycle's first step: refused")
        return None

    monkeypatch.setattr(serve, "run_cycle", fake_run_cycle)
    monkeypatch.setattr(serve.time, "time", lambda: clock["now"])
    fire = datetime(2026, 11, 23, 14, 6, tzinfo=UTC)
    for _ in range(3):
        await service._one_cycle(None, fire)  # type: ignore[arg-type]
    assert service.state.redis_breaker.state == "open"
    await service._one_cycle(None, fire)  # type: ignore[arg-type]
    assert len(calls) == 3  # the fourth was skipped: Redis is not hammered while it is down
    assert (await service.ready_checks())["redis_connected"] is False

    clock["now"] += 31
    outcome["raise"] = False
    await service._one_cycle(None, fire)  # type: ignore[arg-type]
    assert len(calls) == 4  # the probe went out
    assert service.state.redis_breaker.state == "closed"
