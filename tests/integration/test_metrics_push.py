"""Metrics through a real Prometheus Pushgateway: counters that keep growing across one-minute
processes, failures that show, and a gateway that is down, black-holed or refusing never
changing a cycle's exit code."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import SCRIPTED, Pushgateway, cli_env, free_port, run_cli
from tests.integration.helpers import scheduled_now


def key(**labels: str) -> tuple[tuple[str, str], ...]:
    """The sorted label set of a series pushed by shard 0/1."""
    return tuple(sorted({"instance": "", "job": "autonomous_runner", "shard": "0-1", **labels}.items()))


def total(samples: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    return sum(v for k, v in samples.items() if all((name, val) in k for name, val in labels.items()))


def test_counters_pushed_after_two_cycles_are_the_sum_of_both(
    real_redis, redis_server, pushgateway: Pushgateway, tmp_path: Path
) -> None:
    env = cli_env(redis_server.url, tmp_path, PUSHGATEWAY_URL=pushgateway.url)
    now = datetime.now(UTC)
    first = run_cli(
        ["cycle", "--json", "--symbols", "ETH/USD,BTC/USD"],
        {**env, "RUNNER_SCHEDULED_AT": scheduled_now(-2, at=now)},
    )
    assert first.code == 0, first.stderr
    after_one = pushgateway.metrics()
    assert total(after_one["signal_generation_total"], job="autonomous_runner", shard="0-1") == 2
    second = run_cli(
        ["cycle", "--json", "--symbols", "ETH/USD,BTC/USD,SOL/USD"],
        {**env, "RUNNER_SCHEDULED_AT": scheduled_now(-1, at=now)},
    )
    assert second.code == 0, second.stderr
    after_two = pushgateway.metrics()
    assert total(after_two["signal_generation_total"], job="autonomous_runner", shard="0-1") == 5
    assert total(after_two["signal_generation_total"], symbol="ETH/USD") == 2
    assert after_two["cycles_total"][key(status="completed")] == 2
    assert after_two["cycle_duration_seconds_count"][key()] == 2
    assert after_two["cycle_failures_total"][key()] == 0
    # Gauges describe the last cycle; the group is keyed by job and shard, never by pod.
    assert after_two["signals_generated_last_cycle"][key()] == 3
    assert after_two["autonomous_runner_last_success_timestamp"][key()] > 0
    assert after_two["circuit_breaker_state"][key(breaker="llm_service", state="closed")] == 0
    assert all(("instance", "") in k for k in after_two["signal_generation_total"])


def test_a_cycle_with_failures_moves_the_failure_counters(
    real_redis, redis_server, pushgateway: Pushgateway, tmp_path: Path
) -> None:
    env = cli_env(
        redis_server.url,
        tmp_path,
        PUSHGATEWAY_URL=pushgateway.url,
        SCRIPTED_FAIL="*",
        RUNNER_RETRY__MAX_ATTEMPTS="1",
        **SCRIPTED,
    )
    result = run_cli(["cycle", "--json", "--symbols", "ETH/USD,BTC/USD"], env)
    assert result.code == 3, result.stderr
    samples = pushgateway.metrics()
    assert samples["cycle_failures_total"][key()] == 1
    assert total(samples["signal_generation_skipped_total"], reason="transient") == 2
    assert samples["autonomous_runner_last_cycle_exit_code"][key()] == 3
    assert "autonomous_runner_last_success_timestamp" not in samples


def test_dry_run_pushes_nothing(real_redis, redis_server, pushgateway: Pushgateway, tmp_path: Path) -> None:
    env = cli_env(redis_server.url, tmp_path, PUSHGATEWAY_URL=pushgateway.url)
    result = run_cli(["cycle", "--json", "--no-publish", "--symbols", "ETH/USD"], env)
    assert result.code == 0, result.stderr
    assert "signal_generation_total" not in pushgateway.metrics()


def test_metrics_file_holds_the_same_exposition(real_redis, redis_server, tmp_path: Path) -> None:
    path = tmp_path / "runner.prom"
    result = run_cli(
        ["cycle", "--json", "--symbols", "ETH/USD", "--metrics-file", str(path)],
        cli_env(redis_server.url, tmp_path),
    )
    assert result.code == 0, result.stderr
    text = path.read_text()
    assert "signal_generation_total{action=" in text
    assert "# TYPE cycle_duration_seconds histogram" in text
    assert "autonomous_runner_last_cycle_timestamp" in text


@pytest.fixture
def black_hole() -> Iterator[str]:
    """Accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def refusing_gateway() -> Iterator[str]:
    """Answers every push with 400."""

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b"pushed metrics are invalid")

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("gateway", ["down", "black_hole", "refusing"])
def test_a_bad_gateway_never_changes_the_exit_code(
    gateway: str, real_redis, redis_server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = {
        "down": lambda: f"http://127.0.0.1:{free_port()}",
        "black_hole": lambda: request.getfixturevalue("black_hole"),
        "refusing": lambda: request.getfixturevalue("refusing_gateway"),
    }[gateway]()
    env = cli_env(redis_server.url, tmp_path, PUSHGATEWAY_URL=url)
    # The push is bounded to about 2 s, so the whole run ends well inside this timeout.
    result = run_cli(["cycle", "--json", "--symbols", "ETH/USD"], env, timeout=20)
    assert result.code == 0, result.stderr
    doc = result.json()
    assert doc["status"] == "completed"
    assert any("metrics push" in w for w in doc["warnings"])
    assert "Traceback" not in result.stderr
    assert real_redis.xlen("signals:raw") == 1
