"""`runner serve`: the long-running mode runs cycles on its schedule and answers its endpoints."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import cli_env, free_port, start_cli, wait_for_port
from tests.integration.helpers import stream_signals, wait_until


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def test_serve_runs_cycles_on_its_schedule_and_answers_health_and_metrics(
    real_redis, redis_server, tmp_path: Path
) -> None:
    port = free_port()
    env = cli_env(
        redis_server.url, tmp_path, RUNNER_SCHEDULE="* * * * * */2", RUNNER_SYMBOLS='["ETH/USD","BTC/USD"]'
    )
    proc = start_cli(["serve", "--host", "127.0.0.1", "--port", str(port)], env)
    try:
        wait_for_port(port, timeout=15)
        base = f"http://127.0.0.1:{port}"
        assert get(f"{base}/health/live") == (200, {"status": "alive"})
        status, health = get(f"{base}/health")
        assert status == 200
        assert health["status"] == "healthy"
        status, ready = get(f"{base}/health/ready")
        assert status == 200
        assert ready["checks"] == {
            "redis_connected": True,
            "circuit_breaker_closed": True,
            "not_in_cooldown": True,
        }

        wait_until(lambda: real_redis.xlen("signals:raw") >= 2, timeout=30)
        # One cycle of two symbols; later cycles of the same minute publish nothing twice (one in
        # the next minute, if a boundary falls in between, publishes that minute's pair).
        ids = [s["id"] for s in stream_signals(real_redis)]
        assert len(ids) == len(set(ids)), ids
        assert sorted(i.split(":")[0] for i in ids[:2]) == ["BTC/USD", "ETH/USD"]
        assert ids[0].split(":", 1)[1] == ids[1].split(":", 1)[1], ids
        status, detailed = get(f"{base}/health/detailed")
        assert status == 200
        assert detailed["last_cycle"]["status"] == "completed"
        assert detailed["redis_connected"] is True
        status, metrics = get(f"{base}/metrics")
        assert status == 200
        assert "signal_generation_total{action=" in metrics
        assert get(f"{base}/nothing-here")[0] == 404

        # An open breaker makes the service not ready.
        real_redis.hset(
            "runner:breaker:llm_service", mapping={"state": "open", "opened_at": time.time(), "version": 99}
        )
        status, ready = get(f"{base}/health/ready")
        assert status == 503
        assert ready["checks"]["circuit_breaker_closed"] is False
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _not_within_the_test() -> str:
    """A cron schedule whose next fire is a year away: the minute that has just passed."""
    last = datetime.now(UTC) - timedelta(minutes=1)
    return f"{last.minute} {last.hour} {last.day} {last.month} *"


def test_serve_not_ready_when_redis_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(f"redis://127.0.0.1:{free_port()}/0", tmp_path, RUNNER_SCHEDULE=_not_within_the_test())
    proc = start_cli(["serve", "--host", "127.0.0.1", "--port", str(port)], env)
    try:
        wait_for_port(port, timeout=15)
        status, ready = get(f"http://127.0.0.1:{port}/health/ready")
        assert status == 503
        assert ready["checks"]["redis_connected"] is False
        assert get(f"http://127.0.0.1:{port}/health/live")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
