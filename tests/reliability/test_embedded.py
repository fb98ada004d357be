"""Scenario 17: concurrent runs on the embedded default (no REDIS_URL) share one state file."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import embedded_running, start_redis
from tests.integration.helpers import scheduled_now
from tests.reliability.support import bad_lines, reap_all, run, runner_env, spawn, stop_server


@pytest.mark.scenario("17")
def test_concurrent_embedded_runs_do_not_corrupt_state(measure, embedded_dir: Path, tmp_path: Path):
    """Three rounds of three runs started at once on the embedded Redis (no REDIS_URL,
    RUNNER_STATE_DIR), as shards 0/1, 0/2 and 1/2 so that they really overlap, one scheduled
    minute per round. Every run exits 0 or 1 without a traceback; afterwards (the last run out has
    saved and stopped the server) `runner status` reads back a consistent state from runner.rdb:
    all nine cycles in the history, one stream entry per (symbol, minute) and no id twice, the
    latest signal of every symbol."""
    symbols = ["ETH/USD", "BTC/USD", "SOL/USD"]
    env = runner_env(None, embedded_dir, SCRIPTED_DELAY="0.3", RUNNER_SYMBOLS=json.dumps(symbols))
    codes: list[int] = []
    took: list[float] = []
    first = datetime.now(UTC)
    for r in range(3):
        minute = {"RUNNER_SCHEDULED_AT": scheduled_now(-30 - r, at=first)}
        procs = [
            spawn(["cycle", "--json", "--shard", shard], {**env, **minute}, tmp_path / "runs")
            for shard in ("0/1", "0/2", "1/2")
        ]
        try:
            for p in procs:
                p.wait(30)
        finally:
            reap_all(procs)
        for p in procs:
            assert not bad_lines(p.stderr), p.stderr
            assert p.code in (0, 1), (p.code, p.stderr)
            codes.append(p.code)
            took.append(round(p.elapsed, 2))
    assert not embedded_running(embedded_dir), "the last run out stops the embedded server"
    assert (embedded_dir / "runner.rdb").exists()
    status = run(["status", "--json"], env, tmp_path / "runs")
    assert status.code == 0, status.stderr
    st = status.json()
    # Read the saved file itself with a redis-server of our own (on a copy).
    copy = tmp_path / "rdb-copy"
    copy.mkdir()
    shutil.copy(embedded_dir / "runner.rdb", copy / "runner.rdb")
    server = start_redis(copy, None, "--dbfilename", "runner.rdb")
    try:
        client = server.client()
        ids = [json.loads(f["signal"])["id"] for _, f in client.xrange("signals:raw")]
        client.close()
    finally:
        stop_server(server)
    measure.figures(
        runs=len(codes),
        exit_codes={c: codes.count(c) for c in sorted(set(codes))},
        run_s=took,
        history=len(st["history"]),
        stream_length=st["stream_length"],
        latest=sorted(st["latest"]),
        rdb_bytes=(embedded_dir / "runner.rdb").stat().st_size,
        duplicate_ids=len(ids) - len(set(ids)),
    )
    assert len(st["history"]) == 9
    assert st["stream_length"] == 3 * len(symbols)
    assert sorted(st["latest"]) == sorted(symbols)
    assert len(ids) == len(set(ids)) == 9
    assert not embedded_running(embedded_dir)
