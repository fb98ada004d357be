"""Small helpers shared by the CLI integration tests (subprocesses against a real Redis)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from tests.conftest import SCRIPTED, CliResult, cli_env

#: Settings that keep every run short: a real TTL that must pass is 1-2 s, never minutes.
FAST: dict[str, str] = {
    "RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS": "6",
    "RUNNER_HEARTBEAT__TTL_SECONDS": "2",
    # Not a divisor of the scripted delays the tests use: see test_heartbeat_stop_* (a known hang).
    "RUNNER_HEARTBEAT__INTERVAL_SECONDS": "0.4",
    "RUNNER_GRACEFUL_SHUTDOWN__TIMEOUT_SECONDS": "2",
    "RUNNER_RETRY__DELAY_SECONDS": "0.01",
}


def scheduled_now(offset_minutes: int = 0, at: datetime | None = None) -> str:
    """The current UTC minute (what the CronJob would pass), honoured by the runner within an hour.

    Tests that give each round its own minute pass one ``at`` for all rounds: offsets from a
    clock read at each round would repeat a minute whenever a minute boundary falls between them.
    """
    now = (at or datetime.now(UTC)).replace(second=0, microsecond=0) + timedelta(minutes=offset_minutes)
    return now.strftime("%Y-%m-%dT%H:%M:00Z")


def env_for(redis_url: str | None, state_dir: Path, *, scripted: bool = True, **extra: str) -> dict[str, str]:
    """A clean runner environment with short timeouts, the scripted analyzer and a pinned minute."""
    values: dict[str, str] = {**FAST, "RUNNER_SCHEDULED_AT": scheduled_now()}
    if scripted:
        values.update(SCRIPTED)
    values.update(extra)
    return cli_env(redis_url, state_dir, **values)


def stream_signals(client: redis.Redis, stream: str = "signals:raw") -> list[dict[str, Any]]:
    """Every signal document in the stream, oldest first (checks the two-field entry shape)."""
    out = []
    for _, fields in client.xrange(stream):
        assert set(fields) == {"symbol", "signal"}, fields
        doc = json.loads(fields["signal"])
        assert doc["symbol"] == fields["symbol"]
        out.append(doc)
    return out


def lock_keys(client: redis.Redis) -> list[str]:
    return sorted(client.scan_iter(match="signal:lock:*"))


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


#: A deadline far beyond any gate a test holds, so the gate, not the machine's speed, ends the wait.
HOLD: dict[str, str] = {
    "RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS": "40",
    "RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_SECONDS": "30",
    "RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_MAX_SECONDS": "30",
}


@dataclass
class Gate:
    """Holds the scripted analyzer's analyses busy until the test opens it.

    A run given ``gate.env()`` logs each analysis it starts and then waits for the gate file, so
    "the first run is still busy" lasts exactly as long as the test needs, on any machine. A gate
    that is never opened is an analyzer that hangs (only a deadline or a signal ends it).
    """

    directory: Path
    name: str = "gate"
    path: Path = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.path = self.directory / f"{self.name}.open"
        self.log = self.directory / f"{self.name}.started"

    def env(self, *bases: str) -> dict[str, str]:
        """Settings that gate every symbol, or only the symbols with these bases (``"BTC"``)."""
        gates = (
            {f"SCRIPTED_GATE_{b}": str(self.path) for b in bases}
            if bases
            else {"SCRIPTED_GATE": str(self.path)}
        )
        return {**gates, "SCRIPTED_LOG": str(self.log)}

    def started(self) -> list[str]:
        """The symbols whose analysis has started, in order."""
        return self.log.read_text().split() if self.log.exists() else []

    def wait_started(self, count: int, timeout: float = 20.0) -> list[str]:
        """Wait until ``count`` analyses have started (they are now held at the gate)."""
        return wait_until(lambda: len(self.started()) >= count and self.started(), timeout=timeout)

    def open(self) -> None:
        self.path.touch()


def ungated(env: dict[str, str], **extra: str) -> dict[str, str]:
    """``env`` without its gates (the second run of a test that holds the first one busy)."""
    return {**env, **{k: "" for k in env if k.startswith("SCRIPTED_GATE")}, **extra}


def heartbeat_expiry(client: redis.Redis, lock_key: str) -> float:
    """The heartbeat expiry (epoch seconds) of the run holding ``lock_key``; 0 if none."""
    raw = client.get(lock_key)
    if not raw:
        return 0.0
    owner = json.loads(raw)
    beat = client.hget(f"runner:heartbeat:{owner['instance_id']}", owner["cycle_id"])
    return float(beat) if beat else 0.0


def finish(proc: subprocess.Popen[str], timeout: float = 30.0) -> CliResult:
    """Wait for a started CLI process and collect its result (killing it if it hangs)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"runner did not exit within {timeout}s; stderr:\n{err}") from None
    return CliResult(proc.returncode, out, err)


def assert_one_error_line(result: CliResult, code: int) -> str:
    """Exit ``code`` with exactly one stderr line ``runner: error: ...`` and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == code, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runner: error:"), lines[0]
    return lines[0]


def log_lines(stderr: str) -> list[dict[str, Any]]:
    """The JSON log records on stderr (lines that are not JSON are ignored)."""
    out = []
    for line in stderr.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def result_of(doc: dict[str, Any], symbol: str) -> dict[str, Any]:
    """The per-symbol result for ``symbol`` in a cycle's JSON output."""
    found = [r for r in doc["results"] if r["symbol"] == symbol]
    assert len(found) == 1, doc["results"]
    return found[0]


def counter_totals(client: redis.Redis) -> dict[str, float]:
    """Cumulative metric totals kept in Redis, summed over every shard's counters hash."""
    totals: dict[str, float] = {}
    for key in client.scan_iter(match="runner:metrics:counters*"):
        for series, value in client.hgetall(key).items():
            totals[series] = totals.get(series, 0.0) + float(value)
    return totals
