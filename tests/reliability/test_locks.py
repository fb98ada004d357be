"""Scenarios 1-4: SIGTERM and SIGKILL mid-cycle, runs at once, racing takers of a stale lock."""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from runner.shards import Shard
from runner.store import scripts
from tests.integration.helpers import (
    HOLD,
    Gate,
    counter_totals,
    heartbeat_expiry,
    lock_keys,
    log_lines,
    scheduled_now,
    stream_signals,
    ungated,
    wait_until,
)
from tests.reliability.support import bad_lines, reap_all, run, runner_env, spawn

GRACE = 2.0
#: Wind-down after the grace period: publish, record, release (each one Redis round trip).
WIND_DOWN = 3.0


def shard_owning(symbol: str, count: int) -> str:
    return next(f"{i}/{count}" for i in range(count) if Shard(i, count).owns(symbol))


@pytest.mark.scenario("01")
@pytest.mark.parametrize("in_flight", ["finish_within_grace", "slower_than_grace"])
def test_sigterm_mid_cycle(in_flight, measure, real_redis, redis_server, tmp_path: Path):
    """SIGTERM while symbols are in flight (two at a time; ETH/USD is done, BTC/USD and SOL/USD
    are held busy): no new symbol starts, in-flight ones get the grace period (2 s here) and are
    published if they finish in it (the test lets them finish right after SIGTERM; else they are
    reported as timeout/shutdown), every lock, the lease and the heartbeat are released, the cycle
    is recorded, and the process exits within grace + wind-down with exit 0/1/3 matching its JSON
    and no traceback."""
    gate = Gate(tmp_path)
    env = runner_env(
        redis_server.url,
        tmp_path,
        **HOLD,
        **gate.env("BTC", "SOL", "DOGE", "AVAX", "LINK"),
        INSTANCE_ID="pod-term",
        RUNNER_PARALLEL__MAX_CONCURRENT="2",
        RUNNER_PARALLEL__MIN_CONCURRENT="1",
        RUNNER_GRACEFUL_SHUTDOWN__TIMEOUT_SECONDS=str(GRACE),
    )
    symbols = "ETH/USD,BTC/USD,SOL/USD,DOGE/USD,AVAX/USD,LINK/USD"
    proc = spawn(["cycle", "--symbols", symbols, "--json"], env, tmp_path / "runs")
    try:
        wait_until(lambda: real_redis.xlen("signals:raw") >= 1, timeout=15, interval=0.01)
        assert gate.wait_started(3) == ["ETH/USD", "BTC/USD", "SOL/USD"]  # two slow symbols in flight
        held = len(lock_keys(real_redis))
        sent = time.monotonic()
        proc.send(signal.SIGTERM)
        if in_flight == "finish_within_grace":
            # Only once the run has taken the signal: else a freed slot could start a new symbol.
            wait_until(lambda: "stopping: no new symbol starts" in proc.stderr, timeout=GRACE)
            gate.open()
        res = proc.wait(GRACE + WIND_DOWN + 10)
        took = time.monotonic() - sent
    finally:
        reap_all([proc])

    doc = res.json()
    statuses = [r["status"] for r in doc["results"]]
    published = stream_signals(real_redis)
    measure.figures(
        sigterm_to_exit_s=round(took, 3),
        grace_s=GRACE,
        exit_code=res.code,
        locks_held_at_sigterm=held,
        published=len(published),
        results={s: statuses.count(s) for s in sorted(set(statuses))},
        locks_left=len(lock_keys(real_redis)),
    )
    assert took < GRACE + WIND_DOWN, f"exited {took:.2f}s after SIGTERM; grace is {GRACE}s"
    assert not bad_lines(res.stderr), res.stderr
    assert res.code == doc["exit_code"]
    assert res.code in (0, 1, 3)
    assert lock_keys(real_redis) == [], "SIGTERM still releases every lock"
    assert real_redis.get("runner:lease:0-1") is None
    assert not real_redis.hexists("runner:heartbeat:pod-term", doc["cycle_id"])
    assert sorted(s["id"] for s in published) == sorted(s["id"] for s in doc["signals"])
    assert json.loads(real_redis.lindex("runner:history", 0))["cycle_id"] == doc["cycle_id"]
    not_started = [r for r in doc["results"] if r["status"] == "not_started"]
    measure.figure("not_started_reasons", sorted({r["reason"] for r in not_started}))
    assert not_started, "no new symbol starts after SIGTERM"
    assert gate.started() == ["ETH/USD", "BTC/USD", "SOL/USD"], "no new symbol starts after SIGTERM"
    if in_flight == "finish_within_grace":
        assert {r["reason"] for r in not_started} == {"shutdown"}
        assert statuses.count("ok") == 3, "the two symbols in flight finish within the grace"
        assert res.code == 1
    else:
        cut = [r for r in doc["results"] if r["status"] == "timeout"]
        assert len(cut) == 2, doc["results"]
        assert {r["reason"] for r in cut} == {"shutdown"}, doc["results"]
        assert statuses.count("ok") == 1


@pytest.mark.scenario("01")
def test_sigterm_after_the_grace_is_not_a_deadline_overrun(real_redis, redis_server, tmp_path: Path):
    """SIGTERM while a slow symbol is in flight and others wait: when the grace runs out, the
    waiting symbols are `not_started` with reason `shutdown` (the run was stopped, it did not
    overrun its deadline), and the backpressure overrun streak is not incremented."""
    gate = Gate(tmp_path)  # never opened: the symbol in flight outlasts the grace
    env = runner_env(
        redis_server.url,
        tmp_path,
        **HOLD,
        **gate.env(),
        RUNNER_PARALLEL__MAX_CONCURRENT="1",
        RUNNER_PARALLEL__MIN_CONCURRENT="1",
        RUNNER_GRACEFUL_SHUTDOWN__TIMEOUT_SECONDS="1",
    )
    proc = spawn(["cycle", "--symbols", "ETH/USD,BTC/USD,SOL/USD", "--json"], env, tmp_path / "runs")
    try:
        gate.wait_started(1)
        proc.send(signal.SIGTERM)
        res = proc.wait(15)
    finally:
        reap_all([proc])
    doc = res.json()
    reasons = {r["symbol"]: r["reason"] for r in doc["results"] if r["status"] == "not_started"}
    assert reasons == {"BTC/USD": "shutdown", "SOL/USD": "shutdown"}, doc["results"]
    assert real_redis.hget("runner:backpressure:0-1", "consecutive_overruns") in (None, "0")


@pytest.mark.scenario("02")
def test_sigkill_mid_cycle_then_takeover(measure, real_redis, redis_server, tmp_path: Path):
    """A run killed with SIGKILL leaves its locks and lease behind. While its heartbeat (TTL 2 s)
    lives, another run must not take them (it skips: exit 0); once the heartbeat has expired the
    next run takes over every stale lock and the lease, analyzes and publishes with larger
    fencing tokens, counts the takeovers, and leaves no lock behind."""
    ttl = 2
    symbols = ["--symbols", "ETH/USD,BTC/USD,SOL/USD", "--json"]
    gate = Gate(tmp_path)  # never opened: the victim is busy until it is killed
    env = runner_env(
        redis_server.url,
        tmp_path,
        **HOLD,
        **gate.env(),
        INSTANCE_ID="pod-victim",
        RUNNER_HEARTBEAT__TTL_SECONDS=str(ttl),
        RUNNER_HEARTBEAT__INTERVAL_SECONDS="0.4",
    )
    victim = spawn(["cycle", *symbols], env, tmp_path / "runs")
    try:
        gate.wait_started(3)
        first_beat = heartbeat_expiry(real_redis, "signal:lock:ETH/USD")
        wait_until(lambda: heartbeat_expiry(real_redis, "signal:lock:ETH/USD") > first_beat, timeout=10)
        victim.kill()  # after at least one background refresh of the heartbeat
        killed_at = time.monotonic()
    finally:
        reap_all([victim])
    dead = {k: json.loads(real_redis.get(k)) for k in lock_keys(real_redis)}
    assert len(dead) == 3, "SIGKILL leaves the locks behind"
    heartbeat_left_ms = real_redis.pttl("runner:heartbeat:pod-victim")

    other = ungated(env, INSTANCE_ID="pod-next")
    early = run(["cycle", *symbols], other, tmp_path / "runs")
    early_doc = early.json()
    early_alive = real_redis.exists("runner:heartbeat:pod-victim")

    wait_until(lambda: not real_redis.exists("runner:heartbeat:pod-victim"), timeout=ttl + 3, interval=0.02)
    expired_after = time.monotonic() - killed_at
    res = run(["cycle", *symbols], other, tmp_path / "runs")
    took_over_after = time.monotonic() - killed_at
    doc = res.json()
    published = {s["symbol"]: s for s in stream_signals(real_redis)}
    recovered = {
        k: v for k, v in counter_totals(real_redis).items() if k.startswith("stale_locks_recovered_total")
    }
    measure.figures(
        heartbeat_ttl_s=ttl,
        run_before_expiry=f"exit {early.code}, {early_doc['status']} ({early_doc['skip_reason']})",
        kill_to_heartbeat_expiry_s=round(expired_after, 3),
        kill_to_takeover_run_done_s=round(took_over_after, 3),
        takeover_exit_code=res.code,
        stale_locks_recovered=sum(recovered.values()),
        fencing_tokens_dead=sorted(o["token"] for o in dead.values()),
        fencing_tokens_new=sorted(s["fencing_token"] for s in published.values()),
    )
    if early_alive:
        assert early.code == 0, early.stdout
        assert early_doc["status"] == "skipped", early.stdout
        assert early_doc["skip_reason"] in ("cycle_running", "all_locked")
    # -2: already gone (a slow machine); else it expires at most one TTL after the last refresh.
    assert heartbeat_left_ms == -2 or 0 < heartbeat_left_ms <= ttl * 1000, heartbeat_left_ms
    assert res.code == 0, res.stderr
    assert doc["status"] == "completed"
    assert set(published) == {"ETH/USD", "BTC/USD", "SOL/USD"}
    for sym, sig in published.items():
        assert sig["instance_id"] == "pod-next"
        assert sig["fencing_token"] > dead[f"signal:lock:{sym}"]["token"]
    assert sum(recovered.values()) == 3, recovered
    # The run that took over is the second one, or the early one on a machine so slow that the
    # heartbeat had expired before it looked (then it did not skip, and early_alive is False).
    assert any("took over" in rec["msg"] for rec in log_lines(early.stderr + "\n" + res.stderr))
    assert lock_keys(real_redis) == []
    assert real_redis.get("runner:lease:0-1") is None


@pytest.mark.scenario("03")
def test_invocations_at_once_publish_each_signal_once(measure, real_redis, redis_server, tmp_path: Path):
    """Four invocations start at once, three rounds (one scheduled minute per round): two share
    the lease of shard 0/1 (one of them skips) and two run shards 0/2 and 1/2, whose symbols
    overlap the first ones, so the locks are contended for real. Every run exits 0 or 1 with no
    traceback, no (symbol, minute) reaches the stream twice, and every symbol of every round is
    published exactly once."""
    symbols = ["ETH/USD", "BTC/USD", "SOL/USD", "DOGE/USD", "AVAX/USD", "LINK/USD"]
    base = runner_env(redis_server.url, tmp_path, SCRIPTED_DELAY="0.4", RUNNER_SYMBOLS=json.dumps(symbols))
    rounds, codes, locked, skipped = 3, [], 0, 0
    first = datetime.now(UTC)
    for r in range(rounds):
        env = {**base, "RUNNER_SCHEDULED_AT": scheduled_now(-10 - r, at=first)}
        shards = ["0/1", "0/1", "0/2", "1/2"]
        procs = [
            spawn(
                ["cycle", "--json", "--shard", s], {**env, "INSTANCE_ID": f"pod-{r}-{i}"}, tmp_path / "runs"
            )
            for i, s in enumerate(shards)
        ]
        try:
            results = [p.wait(30) for p in procs]
        finally:
            reap_all(procs)
        for res in results:
            assert not bad_lines(res.stderr), res.stderr
            assert res.code in (0, 1), res.stderr
            doc = res.json()
            codes.append(res.code)
            skipped += doc["status"] == "skipped"
            locked += sum(x["status"] == "locked" for x in doc["results"])
    ids = [s["id"] for s in stream_signals(real_redis)]
    measure.figures(
        rounds=rounds,
        runs=len(codes),
        exit_codes={c: codes.count(c) for c in sorted(set(codes))},
        runs_skipped=skipped,
        symbols_skipped_locked=locked,
        stream_entries=len(ids),
        distinct_ids=len(set(ids)),
        duplicates=len(ids) - len(set(ids)),
    )
    assert len(ids) == len(set(ids)), "a (symbol, minute) was published twice"
    assert len(ids) == rounds * len(symbols)
    assert lock_keys(real_redis) == []


def _plant_stale_lock(client: redis.Redis, symbol: str, token: int) -> dict[str, object]:
    owner = {
        "instance_id": "pod-dead",
        "cycle_id": "20000101T000000000Z-dead00",
        "pid": 1,
        "acquired_at": time.time() - 5,
        "token": token,
    }
    client.set(f"signal:lock:{symbol}", json.dumps(owner), ex=90)
    if int(client.get("runner:fencing") or 0) < token:
        client.set("runner:fencing", token)
    return owner


@pytest.mark.scenario("04")
def test_two_cli_runs_race_for_one_stale_lock(measure, real_redis, redis_server, tmp_path: Path):
    """A lock whose owner's heartbeat is gone, and two runs (different leases: shards 0/1 and
    the 1-of-2 shard that owns ETH/USD) starting at once, three rounds. Exactly one of them takes
    the lock over (counted once in stale_locks_recovered), the other finds it held; exactly one
    ETH/USD signal per round is published, with a fencing token above the dead owner's. The
    winner is held busy until the loser has exited, so the loser always meets the lock held."""
    rounds, wins, tokens = 3, [], []
    env = runner_env(redis_server.url, tmp_path, **HOLD)
    first = datetime.now(UTC)
    for r in range(rounds):
        dead = _plant_stale_lock(real_redis, "ETH/USD", 1000 * (r + 1))
        minute = {"RUNNER_SCHEDULED_AT": scheduled_now(-20 - r, at=first)}
        gate = Gate(tmp_path, f"round{r}")
        procs = [
            spawn(
                ["cycle", "--json", "--symbols", "ETH/USD", "--shard", shard],
                {**env, **minute, **gate.env(), "INSTANCE_ID": f"taker-{r}-{i}"},
                tmp_path / "runs",
            )
            for i, shard in enumerate(["0/1", shard_owning("ETH/USD", 2)])
        ]
        try:
            gate.wait_started(1)
            wait_until(lambda procs=procs: any(p.poll() for p in procs), timeout=30)
            gate.open()
            results = [p.wait(30) for p in procs]
        finally:
            gate.open()
            reap_all(procs)
        statuses = sorted(res.json()["results"][0]["status"] for res in results)
        winners = [res.json()["signals"] for res in results if res.json()["signals"]]
        wins.append(len(winners))
        assert statuses == ["locked", "ok"], statuses
        assert len(winners) == 1
        token = winners[0][0]["fencing_token"]
        tokens.append(token)
        assert token > int(dead["token"])  # type: ignore[call-overload]
    recovered = sum(
        v for k, v in counter_totals(real_redis).items() if k.startswith("stale_locks_recovered_total")
    )
    eth = [s for s in stream_signals(real_redis) if s["symbol"] == "ETH/USD"]
    measure.figures(rounds=rounds, winners_per_round=wins, takeovers_counted=recovered, tokens=tokens)
    assert recovered == rounds
    assert len(eth) == rounds
    assert tokens == sorted(tokens)


@pytest.mark.scenario("04")
def test_many_takers_race_in_the_lua_script(measure, real_redis, tmp_path: Path):
    """The acquire script against one stale lock, called by 16 live takers (each with its own
    heartbeat) released by a barrier at the same instant, 40 rounds: in every round exactly one
    caller gets ``taken_over`` and the others ``held`` (the winner is alive), and the winning
    fencing token grows from round to round."""
    script_client = real_redis
    takers, rounds = 16, 40
    winners_per_round: list[int] = []
    tokens: list[int] = []
    clients = [redis.Redis(connection_pool=script_client.connection_pool) for _ in range(takers)]
    for r in range(rounds):
        _plant_stale_lock(script_client, "ETH/USD", 1)
        barrier = threading.Barrier(takers)
        rows: list[list[object]] = [[] for _ in range(takers)]

        def take(
            i: int, rows: list[list[object]] = rows, barrier: threading.Barrier = barrier, r: int = r
        ) -> None:
            script = clients[i].register_script(scripts.ACQUIRE)
            # Each taker is a live run: its heartbeat is written before it takes locks.
            clients[i].hset(f"runner:heartbeat:taker-{i}", f"cycle-{r}-{i}", str(time.time() + 30))
            clients[i].expire(f"runner:heartbeat:taker-{i}", 30)
            keys, args = scripts.pack(
                {"fencing": "runner:fencing"},
                {"locks": ["signal:lock:ETH/USD"]},
                {
                    "owner": {"instance_id": f"taker-{i}", "cycle_id": f"cycle-{r}-{i}", "pid": i},
                    "now": time.time(),
                    "ttl": 90,
                    "stale": 120,
                    "hb_prefix": "runner:heartbeat:",
                },
            )
            barrier.wait()
            rows[i] = json.loads(script(keys=keys, args=args))[0]

        threads = [threading.Thread(target=take, args=(i,)) for i in range(takers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        won = [row for row in rows if row[0] == "taken_over"]
        winners_per_round.append(len(won))
        assert len(won) == 1, rows
        assert all(row[0] == "held" for row in rows if row[0] != "taken_over"), rows
        tokens.append(int(won[0][1]))  # type: ignore[call-overload]
    measure.figures(
        takers=takers,
        rounds=rounds,
        rounds_with_exactly_one_winner=winners_per_round.count(1),
        first_token=tokens[0],
        last_token=tokens[-1],
    )
    assert tokens == sorted(set(tokens)), "fencing tokens grow"


@pytest.mark.scenario("02")
def test_takeover_warning_names_the_previous_owner(real_redis, redis_server, tmp_path: Path):
    """The warning a takeover logs names the dead owner (the instance whose lock was stale), not
    the run that took it over."""
    _plant_stale_lock(real_redis, "ETH/USD", 50)
    env = runner_env(redis_server.url, tmp_path, INSTANCE_ID="pod-taker")
    proc = run(["cycle", "--symbols", "ETH/USD", "--json"], env, tmp_path / "runs")
    assert proc.code == 0, proc.stderr
    took = [rec["msg"] for rec in log_lines(proc.stderr) if "took over" in rec["msg"]]
    assert len(took) == 1, proc.stderr
    assert "pod-dead" in took[0], took[0]
