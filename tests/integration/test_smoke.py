from __future__ import annotations

from pathlib import Path

from tests.conftest import cli_env, run_cli
from tests.integration.helpers import scheduled_now


def test_cycle_publishes_twenty_signals_once_per_minute(real_redis, redis_server, tmp_path: Path) -> None:
    # Both runs belong to the minute the CronJob would pass now, wherever a minute boundary falls.
    env = cli_env(redis_server.url, tmp_path, RUNNER_SCHEDULED_AT=scheduled_now())
    first = run_cli(["cycle", "--json"], env)
    assert first.code == 0, first.stderr
    doc = first.json()
    assert doc["status"] == "completed"
    assert len(doc["signals"]) == 20
    assert real_redis.xlen("signals:raw") == 20
    assert real_redis.hlen("signals:latest") == 20
    second = run_cli(["cycle", "--json"], env)
    assert second.code == 0, second.stderr
    assert second.json()["signals"] == []
    assert real_redis.xlen("signals:raw") == 20
