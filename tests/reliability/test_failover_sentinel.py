"""Scenario 21: Redis Sentinel (a master, a replica, three sentinels, down-after 1 s) fails over
under running cycles: the master killed, frozen, switched by ``SENTINEL FAILOVER``, and killed
after its replica fell behind (the fencing counter is lost)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.failover import Cycles, check, surviving, when_locks_held
from tests.reliability.support import run, runner_env
from tests.support.topology import SentinelSet, eventually

pytestmark = pytest.mark.scenario("21")


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    topology = SentinelSet.start(tmp_path_factory.mktemp("sentinel"))
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def healthy(sentinels: SentinelSet) -> SentinelSet:
    """The set as every scenario starts: a live master with an online replica."""
    sentinels.wait_healthy()
    return sentinels


def promoted(s: SentinelSet, old_port: int) -> float:
    """Wait until the sentinels agree on a master other than ``old_port``; when they did."""
    eventually(lambda: (s.master_address() or ("", old_port))[1] != old_port, "a new master")
    return time.monotonic()


def finish(cycles: Cycles, s: SentinelSet, measure, event_at: float, promoted_at: float) -> None:
    s.wait_healthy()
    healed_at = time.monotonic()
    first_ok = cycles.wait_for(lambda r: r.ok(), "a run completes after the failover", after=event_at)
    cycles.wait_for(lambda r: r.ok(), "a run that started after healing completes", after=healed_at)
    cycles.stop()
    with s.master().client() as client:
        verdict = check(cycles.runs, client, cycles.prefix)
    measure.figures(
        new_master_after_s=round(promoted_at - event_at, 2),
        first_ok_run_ended_after_s=round(first_ok.ended - event_at, 2),
        healthy_after_s=round(healed_at - event_at, 2),
        **verdict.figures,
    )


def test_status_and_config_name_the_master(measure, healthy: SentinelSet, tmp_path: Path):
    """`runner config` and `runner status` say the topology is Sentinel and which node the
    sentinels name as the master now; a password in the URL never shows."""
    s = healthy
    env = runner_env(s.url().replace("redis+sentinel://", "redis+sentinel://:unused-pw@"), tmp_path)
    config = run(["config", "--json"], env, tmp_path / "runs")
    status = run(["status", "--json"], env, tmp_path / "runs")
    master = s.master()
    shown = config.json()["redis_master"]
    measure.figures(config_says=shown["address"], status_says=status.json()["redis"]["address"])
    assert config.code == 0, config.stderr
    assert status.code == 0, status.stderr
    assert "unused-pw" not in config.stdout + status.stdout
    assert config.json()["autonomous_runner"]["redis"]["topology"] == "sentinel"
    for doc in (shown, status.json()["redis"]):
        assert doc["topology"] == "sentinel"
        assert doc["address"] == master.address
        assert doc["replicas"] == 1


def test_master_killed_mid_cycle(measure, healthy: SentinelSet, tmp_path: Path):
    """`kill -9` of the master while a run holds its locks. That run ends with exit 3 and one
    `runner: error:` line (its heartbeat or its publish hit a closed or refused connection: a
    topology change), the runs
    while no master is elected exit 3 with one line, and once the sentinels promote the replica
    the next runs find it by themselves and complete; the old master comes back as a replica.
    No document is in a stream twice, none reported published is missing from the surviving
    master, fencing tokens only grow, and the last run leaves no lock behind."""
    s = healthy
    master = s.master()
    with Cycles(s.url(), "{kill}:", tmp_path) as cycles:
        cycles.wait_for(lambda r: r.ok(), "a first run completes")
        event_at = when_locks_held(lambda: master.client(), cycles.prefix)
        master.kill()
        promoted_at = promoted(s, master.port)
        s.restart_as_replica(master)
        finish(cycles, s, measure, event_at, promoted_at)


def test_master_frozen_mid_cycle(measure, healthy: SentinelSet, tmp_path: Path):
    """The master is SIGSTOPped while a run holds its locks and stays frozen until the replica
    is promoted: the frozen-out run gives up after the socket timeout (exit 3, no traceback),
    later runs find the new master; while it has no replica yet, what they publish is reported
    `unconfirmed` (never counted as published). The old master wakes, is demoted by the
    sentinels, and the runs after that complete."""
    s = healthy
    master = s.master()
    with Cycles(s.url(), "{freeze}:", tmp_path) as cycles:
        cycles.wait_for(lambda r: r.ok(), "a first run completes")
        event_at = when_locks_held(lambda: master.client(), cycles.prefix)
        master.freeze()
        try:
            promoted_at = promoted(s, master.port)
        finally:
            master.thaw()
        finish(cycles, s, measure, event_at, promoted_at)


def test_sentinel_failover_mid_cycle(measure, healthy: SentinelSet, tmp_path: Path):
    """`SENTINEL FAILOVER` while a run holds its locks: no client error, but a run still
    connected to the old master may go on writing there until the sentinels demote it, and those
    writes are lost. Nothing the runs report published is lost: what no replica acknowledged is
    `unconfirmed`. Tokens only grow, the last run completes and leaves no lock."""
    s = healthy
    master = s.master()
    with Cycles(s.url(), "{switch}:", tmp_path) as cycles:
        cycles.wait_for(lambda r: r.ok(), "a first run completes")
        event_at = when_locks_held(lambda: master.client(), cycles.prefix)
        s.failover()
        promoted_at = promoted(s, master.port)
        finish(cycles, s, measure, event_at, promoted_at)


def test_lost_fencing_counter(measure, healthy: SentinelSet, tmp_path: Path):
    """The replica falls behind (frozen, with 48 MB queued ahead of the run's writes), one run
    completes on the master alone (its documents `unconfirmed`), then the master is killed and
    the stale replica promoted: the fencing counter on the new master is back where it was before
    that run, as are the streams. The next runs' tokens are still larger than every token the
    lost run was handed (they are floored by the master's clock)."""
    s = healthy
    master, replica = s.master(), s.replica()
    prefix = "{lost}:"
    with Cycles(s.url(), prefix, tmp_path) as cycles:
        cycles.wait_for(lambda r: r.ok(), "a first run completes")
        replica.freeze()
        try:
            with master.client(timeout=30) as c:
                c.set(f"{prefix}ballast", "x" * (48 << 20))
            cut_at = time.monotonic()
            lost_run = cycles.wait_for(
                lambda r: r.code is not None, "a run on the master alone", after=cut_at
            )
            with master.client() as c:
                lost = [int(d["fencing_token"]) for docs in surviving(c, prefix).values() for d in docs]
                counter_before = int(c.get(f"{prefix}runner:fencing") or 0)
            event_at = time.monotonic()
            master.kill()
        finally:
            replica.thaw()
        with replica.client() as c:
            counter_on_replica = int(c.get(f"{prefix}runner:fencing") or 0)
        promoted_at = promoted(s, master.port)
        s.restart_as_replica(master)
        finish(cycles, s, measure, event_at, promoted_at)
    after = [r for r in cycles.runs if r.started > promoted_at and r.ok()]
    first_new = min(int(d["fencing_token"]) for d in after[0].doc()["signals"])
    lost_statuses = sorted({x["status"] for x in lost_run.doc().get("results", [])})
    measure.figures(
        lost_run_statuses=lost_statuses,
        counter_before_kill=counter_before,
        counter_on_promoted_replica=counter_on_replica,
        largest_lost_token=max(lost),
        first_token_after=first_new,
    )
    assert counter_on_replica < counter_before, "the replica should have missed the last increments"
    assert "ok" not in lost_statuses, "a run whose writes no replica had reported them published"
    assert first_new > max(*lost, counter_before)
