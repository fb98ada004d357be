"""Scenario 22: Redis Cluster (three masters with one replica each, node timeout 2 s) fails over
under running cycles: the master of the runner's slot killed, frozen, switched by
``CLUSTER FAILOVER``, and killed after its replica fell behind (the fencing counter is lost).
Every key of the runner shares one slot through the prefix's hash tag."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.failover import Cycles, check, surviving, when_locks_held
from tests.reliability.support import run, runner_env
from tests.support.topology import Cluster, Node, eventually

pytestmark = pytest.mark.scenario("22")


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    topology = Cluster.start(tmp_path_factory.mktemp("cluster"))
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def healthy(redis_cluster: Cluster) -> Cluster:
    """The cluster as every scenario starts: three masters, each with an online replica."""
    redis_cluster.wait_healthy()
    return redis_cluster


def fencing_key(prefix: str) -> str:
    return f"{prefix}runner:fencing"


def promoted(c: Cluster, prefix: str, old: Node) -> float:
    """Wait until another node serves the prefix's slot; when it did."""
    eventually(lambda: c.master_of(fencing_key(prefix)) is not old, "a new master for the slot")
    return time.monotonic()


def finish(cycles: Cycles, c: Cluster, measure, event_at: float, promoted_at: float) -> None:
    c.wait_healthy()
    healed_at = time.monotonic()
    first_ok = cycles.wait_for(lambda r: r.ok(), "a run completes after the failover", after=event_at)
    cycles.wait_for(lambda r: r.ok(), "a run that started after healing completes", after=healed_at)
    cycles.stop()
    with c.master_of(fencing_key(cycles.prefix)).client() as client:
        verdict = check(cycles.runs, client, cycles.prefix)
    measure.figures(
        new_master_after_s=round(promoted_at - event_at, 2),
        first_ok_run_ended_after_s=round(first_ok.ended - event_at, 2),
        healthy_after_s=round(healed_at - event_at, 2),
        **verdict.figures,
    )


def test_status_and_config_name_the_master(measure, healthy: Cluster, tmp_path: Path):
    """`runner config` and `runner status` say the topology is Cluster, the key prefix in use
    (`{runner}:` when none is set) and which node serves its slot now; `runner status` reads
    everything from that node."""
    c = healthy
    env = runner_env(c.url(), tmp_path)
    config = run(["config", "--json"], env, tmp_path / "runs")
    status = run(["status", "--json"], env, tmp_path / "runs")
    master = c.master_of("{runner}:runner:fencing")
    shown = config.json()["redis_master"]
    measure.figures(config_says=shown["address"], slot=shown["slot"])
    assert config.code == 0, config.stderr
    assert status.code == 0, status.stderr
    assert config.json()["autonomous_runner"]["redis"]["effective_key_prefix"] == "{runner}:"
    for doc in (shown, status.json()["redis"]):
        assert doc["topology"] == "cluster"
        assert doc["address"] == master.address
        assert doc["replicas"] == 1
        assert doc["masters"] == 3


def test_master_killed_mid_cycle(measure, healthy: Cluster, tmp_path: Path):
    """`kill -9` of the master serving the runner's slot while a run holds its locks: that run
    ends with exit 3 and one `runner: error:` line, runs exit 3 with one line until the replica
    takes over (node timeout 2 s), then complete; the killed node rejoins as a replica. Nothing
    doubled or reported published and lost, tokens only grow, the last run leaves no lock."""
    c = healthy
    prefix = "{kill}:"
    master = c.master_of(fencing_key(prefix))
    with Cycles(c.url(), prefix, tmp_path) as cycles:
        cycles.wait_for(lambda r: r.ok(), "a first run completes")
        event_at = when_locks_held(lambda: master.client(), prefix)
        master.kill()
        promoted_at = promoted(c, prefix, master)
        master.start()
        finish(cycles, c, measure, event_at, promoted_at)


def test_master_frozen_mid_cycle(measure, healthy: Cluster, tmp_path: Path):
    """The slot's master is SIGSTOPped while a run holds its locks and stays frozen until its
    replica takes over: the frozen-out run gives up after the socket timeout (exit 3, no
    traceback), the next runs find the new master through the cluster; the old master wakes up
    as a replica."""
    c = healthy
    prefix = "{freeze}:"
    master = c.master_of(fencing_key(prefix))
    with Cycles(c.url(), prefix, tmp_path) as cycles:
        cycles.wait_for(lambda r: r.ok(), "a first run completes")
        event_at = when_locks_held(lambda: master.client(), prefix)
        master.freeze()
        try:
            promoted_at = promoted(c, prefix, master)
        finally:
            master.thaw()
        finish(cycles, c, measure, event_at, promoted_at)


def test_cluster_failover_mid_cycle(measure, healthy: Cluster, tmp_path: Path):
    """`CLUSTER FAILOVER` on the slot's replica while a run holds its locks: the replica catches
    up and takes over within milliseconds; a run in flight follows the MOVED answers and the
    script cache it lacks (NOSCRIPT, answered with the script itself), and completes."""
    c = healthy
    prefix = "{switch}:"
    master = c.master_of(fencing_key(prefix))
    replica = c.replica_of(master)
    with Cycles(c.url(), prefix, tmp_path) as cycles:
        cycles.wait_for(lambda r: r.ok(), "a first run completes")
        event_at = when_locks_held(lambda: master.client(), prefix)
        c.manual_failover(replica)
        promoted_at = promoted(c, prefix, master)
        finish(cycles, c, measure, event_at, promoted_at)
    measure.figure("runs_failed", sum(1 for r in cycles.runs if r.code != 0))


def test_lost_fencing_counter(measure, healthy: Cluster, tmp_path: Path):
    """The slot's replica falls behind (frozen, with 48 MB queued ahead of the run's writes), one
    run completes on the master alone (`unconfirmed`), the master is killed and the stale replica
    takes over: the fencing counter is back where it was, yet the next runs' tokens are larger
    than every token handed out before."""
    c = healthy
    prefix = "{lost}:"
    master = c.master_of(fencing_key(prefix))
    replica = c.replica_of(master)
    with Cycles(c.url(), prefix, tmp_path) as cycles:
        cycles.wait_for(lambda r: r.ok(), "a first run completes")
        replica.freeze()
        try:
            with master.client(timeout=30) as cl:
                cl.set(f"{prefix}ballast", "x" * (48 << 20))
            cut_at = time.monotonic()
            lost_run = cycles.wait_for(
                lambda r: r.code is not None, "a run on the master alone", after=cut_at
            )
            with master.client() as cl:
                lost = [int(d["fencing_token"]) for docs in surviving(cl, prefix).values() for d in docs]
                counter_before = int(cl.get(fencing_key(prefix)) or 0)
            event_at = time.monotonic()
            master.kill()
        finally:
            replica.thaw()
        with replica.client() as cl:
            cl.execute_command("READONLY")
            counter_on_replica = int(cl.get(fencing_key(prefix)) or 0)
        promoted_at = promoted(c, prefix, master)
        master.start()
        finish(cycles, c, measure, event_at, promoted_at)
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
