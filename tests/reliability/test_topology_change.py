"""Scenario 23: the master a run talks to stops being one that may write, mid-cycle (a plain
``redis://`` URL: a master and its replica of our own). The cycle ends at once with exit 3 and
one line; a run pointed at a writable master afterwards takes over what was left and completes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RedisServer, start_redis
from tests.integration.helpers import lock_keys, stream_signals, wait_until
from tests.reliability.support import bad_lines, reap_all, run, runner_env, spawn, stop_server

pytestmark = pytest.mark.scenario("23")

SYMBOLS = ["--symbols", "ETH/USD,BTC/USD,SOL/USD", "--json"]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    (tmp_path / "m").mkdir()
    (tmp_path / "r").mkdir()
    master = start_redis(tmp_path / "m", None, "--repl-diskless-sync-delay", "0")
    replica = start_redis(
        tmp_path / "r", None, "--replicaof", "127.0.0.1", str(master.port), "--repl-diskless-sync-delay", "0"
    )
    try:
        with replica.client() as c:
            wait_until(lambda: c.info("replication").get("master_link_status") == "up", timeout=60)
        yield master, replica
    finally:
        stop_server(replica)
        stop_server(master)
        shutil.rmtree(tmp_path / "m", ignore_errors=True)
        shutil.rmtree(tmp_path / "r", ignore_errors=True)


def _ended_with_one_line(proc, says: str) -> dict:
    """Exit 3, the cycle's JSON with its ``error``, and that error as the one `runner: error:` line."""
    assert proc.code == 3, (proc.stdout, proc.stderr)
    assert not bad_lines(proc.stderr), proc.stderr
    doc = json.loads(proc.stdout)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("runner: error:")]
    assert len(lines) == 1, proc.stderr
    assert says in lines[0], lines[0]
    assert doc["error"] in lines[0]
    assert doc["status"] == "failed"
    assert doc["signals"] == []
    return doc


def test_noreplicas_mid_cycle(measure, pair, tmp_path: Path):
    """`min-replicas-to-write` can no longer be met (NOREPLICAS) while a run holds its locks:
    the run ends at once, exit 3, one `runner: error:` line naming NOREPLICAS, no symbol reported
    published and nothing in the stream. Once writes are accepted again the next run completes
    and leaves no lock behind."""
    master, _ = pair
    client = master.client()
    env = runner_env(
        master.url,
        tmp_path,
        SCRIPTED_DELAY="1.0",
        RUNNER_REDIS__SOCKET_TIMEOUT_SECONDS="1",
        INSTANCE_ID="pod-a",
    )
    proc = spawn(["cycle", *SYMBOLS], env, tmp_path / "runs")
    try:
        wait_until(lambda: lock_keys(client), timeout=30, interval=0.01)
        client.config_set("min-replicas-to-write", 2)
        proc.wait(60)
    finally:
        reap_all([proc])
        client.config_set("min-replicas-to-write", 0)
    doc = _ended_with_one_line(proc, "NOREPLICAS")
    measure.figures(exit_code=proc.code, took_s=round(proc.elapsed, 2))
    measure.note(f"stderr: `{doc['error'][:200]}`")
    assert stream_signals(client) == []
    locks_left = len(lock_keys(client))  # releasing them was refused as well

    wait_until(lambda: not client.exists("runner:heartbeat:pod-a"), timeout=30)  # its heartbeat expires
    after = run(
        ["cycle", *SYMBOLS], {**env, "SCRIPTED_DELAY": "0", "INSTANCE_ID": "pod-b"}, tmp_path / "runs"
    )
    measure.figure("locks_left", locks_left)
    measure.figure("next_run_exit_code", after.code)
    assert after.code == 0, after.stderr
    assert lock_keys(client) == []
    client.close()


def test_master_demoted_mid_cycle(measure, pair, tmp_path: Path):
    """The roles swap while a run holds its locks (the replica promoted, the master made its
    replica, as an operator or an orchestrator does): writes on the old master answer READONLY,
    the run ends at once with exit 3 and one line. A run pointed at the new master (the old run's
    heartbeat expired) takes over the locks it left and completes."""
    old, new = pair
    env = runner_env(
        old.url, tmp_path, SCRIPTED_DELAY="1.0", RUNNER_REDIS__SOCKET_TIMEOUT_SECONDS="1", INSTANCE_ID="pod-a"
    )
    proc = spawn(["cycle", *SYMBOLS], env, tmp_path / "runs")
    with old.client() as o, new.client() as n:
        try:
            wait_until(lambda: lock_keys(o), timeout=30, interval=0.01)
            wait_until(lambda: lock_keys(n), timeout=30, interval=0.01)  # the locks reached the replica
            n.replicaof("NO", "ONE")
            o.replicaof("127.0.0.1", new.port)
            proc.wait(60)
        finally:
            reap_all([proc])
        doc = _ended_with_one_line(proc, "read only replica")
        measure.figures(exit_code=proc.code, took_s=round(proc.elapsed, 2), locks_left=len(lock_keys(n)))
        measure.note(f"stderr: `{doc['error'][:200]}`")

        wait_until(lambda: not n.exists("runner:heartbeat:pod-a"), timeout=30)  # its heartbeat expires
        moved = {**env, "SCRIPTED_DELAY": "0", "REDIS_URL": new.url, "INSTANCE_ID": "pod-b"}
        after = run(["cycle", *SYMBOLS], moved, tmp_path / "runs")
        measure.figure("next_run_exit_code", after.code)
        assert after.code == 0, after.stderr
        assert lock_keys(n) == []
        assert len(stream_signals(n)) == 3
