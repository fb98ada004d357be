"""Scenario 15: a Pushgateway that is down, black-holed or refusing never changes a cycle's exit
code and costs a bounded time. The bad gateways are the fixtures of
tests/integration/test_metrics_push.py; this module measures what each one costs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.helpers import log_lines
from tests.integration.test_metrics_push import black_hole, refusing_gateway  # noqa: F401 - fixtures
from tests.reliability.support import bad_lines, run, runner_env

PUSH_TIMEOUT = 2.0  # metrics.push_timeout_seconds (default)


def push_cost(stderr: str) -> float:
    """Seconds from the cycle's outcome line to the push's warning, on the run's own log clock
    (so neither Python's start-up nor a slow test process counts)."""
    records = log_lines(stderr)
    ended = next(r for r in records if r["msg"].startswith("cycle "))
    warned = next(r for r in records if "metrics push" in r["msg"])
    at = [datetime.fromisoformat(r["ts"].replace("Z", "+00:00")) for r in (ended, warned)]
    return (at[1] - at[0]).total_seconds()


@pytest.mark.scenario("15")
@pytest.mark.parametrize("gateway", ["healthy", "down", "black_hole", "refusing"])
def test_bad_gateway_costs_a_warning_never_the_exit_code(
    gateway: str, measure, real_redis, redis_server, tmp_path: Path, request: pytest.FixtureRequest
):
    """A completed cycle (exit 0) and a failed one (exit 3) with the gateway healthy, down
    (connection refused), black-holed (accepts, never answers) or answering 400: the exit code
    is the same as with a healthy gateway, a bad gateway costs one warning naming the push, and
    the push takes at most its timeout (2 s, plus 0.5 s of slack the runner allows), from the
    cycle's outcome line to the warning on the run's own log clock."""
    url = {
        "healthy": lambda: request.getfixturevalue("pushgateway").url,
        "down": lambda: f"http://127.0.0.1:{free_port()}",
        "black_hole": lambda: request.getfixturevalue("black_hole"),
        "refusing": lambda: request.getfixturevalue("refusing_gateway"),
    }[gateway]()
    env = runner_env(redis_server.url, tmp_path, PUSHGATEWAY_URL=url, RUNNER_RETRY__MAX_ATTEMPTS="1")
    completed = run(["cycle", "--json", "--symbols", "ETH/USD"], env, tmp_path / "runs")
    failed = run(
        ["cycle", "--json", "--symbols", "BTC/USD"], {**env, "SCRIPTED_FAIL": "*"}, tmp_path / "runs"
    )
    measure.figures(
        gateway=gateway,
        completed_exit=completed.code,
        completed_run_s=round(completed.elapsed, 3),
        failed_exit=failed.code,
        failed_run_s=round(failed.elapsed, 3),
    )
    for proc, code in ((completed, 0), (failed, 3)):
        assert proc.code == code, proc.stderr
        assert not bad_lines(proc.stderr), proc.stderr
        doc = proc.json()
        pushed_warning = [w for w in doc["warnings"] if "metrics push" in w]
        if gateway == "healthy":
            assert pushed_warning == []
        else:
            assert len(pushed_warning) == 1, doc["warnings"]
            if code == 0:
                measure.note(f"warning: `{pushed_warning[0]}`")
            # The push gives up after its timeout plus the runner's 0.5 s of slack (and recording
            # the cycle, a Redis round trip or two, comes between the two lines).
            cost = push_cost(proc.stderr)
            measure.figure(f"{'completed' if code == 0 else 'failed'}_push_cost_s", round(cost, 3))
            assert cost < PUSH_TIMEOUT + 0.5 + 0.5, f"{cost:.2f}s"
    if gateway == "healthy":
        samples = request.getfixturevalue("pushgateway").metrics()
        assert "cycle_failures_total" in samples
