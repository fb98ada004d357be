"""Cross-run resilience: what one invocation leaves in Redis changes what the next one does.

Kill switch, maintenance windows, the circuit breaker and auto-pause across separate processes;
the cycle lease, stale locks of a killed run, SIGTERM, two runs at once, fencing, and state keys
that hold garbage.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta

from tests.conftest import run_cli, start_cli
from tests.integration.helpers import (
    HOLD,
    Gate,
    counter_totals,
    env_for,
    finish,
    heartbeat_expiry,
    lock_keys,
    log_lines,
    result_of,
    stream_signals,
    ungated,
    wait_until,
)
from tests.reliability.support import reap_all, spawn

BREAKER = "runner:breaker:llm_service"


def _lease_owner(client) -> dict | None:
    raw = client.get("runner:lease:0-1")
    return json.loads(raw) if raw else None


# --- kill switch and maintenance ------------------------------------------------------------


def test_kill_switch_halts_cycles_until_switched_off(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, INSTANCE_ID="oncall-alice")

    on = run_cli(["kill-switch", "on", "--reason", "maintenance"], env)
    assert on.code == 0, on.stderr
    assert real_redis.hget("runner:kill_switch", "on") == "1"

    skipped = run_cli(["cycle", "--symbols", "ETH/USD", "--json"], env)
    assert skipped.code == 0, skipped.stderr
    assert skipped.json()["status"] == "skipped"
    assert skipped.json()["skip_reason"] == "kill_switch"
    assert real_redis.xlen("signals:raw") == 0
    assert lock_keys(real_redis) == []

    st = run_cli(["status", "--json"], env).json()
    assert st["kill_switch"]["on"] is True
    assert st["kill_switch"]["reason"] == "maintenance"
    assert st["kill_switch"]["by"] == "oncall-alice"
    assert st["last_cycle"]["skip_reason"] == "kill_switch"

    off = run_cli(["kill-switch", "off"], env)
    assert off.code == 0, off.stderr
    assert not real_redis.exists("runner:kill_switch")
    ran = run_cli(["cycle", "--symbols", "ETH/USD", "--json"], env)
    assert ran.code == 0, ran.stderr
    assert ran.json()["status"] == "completed"
    assert real_redis.xlen("signals:raw") == 1
    assert run_cli(["status", "--json"], env).json()["kill_switch"]["on"] is False


def test_kill_switch_needs_a_reason(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path)
    res = run_cli(["kill-switch", "on", "--reason", "  "], env)
    assert res.code == 2
    assert res.stderr.startswith("runner: error:")
    assert not real_redis.exists("runner:kill_switch")


def _window_around_now() -> str:
    now = datetime.now(UTC)
    start, end = now - timedelta(minutes=2), now + timedelta(minutes=3)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_cycle_inside_a_maintenance_window_is_skipped(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, RUNNER_MAINTENANCE_WINDOWS=json.dumps([_window_around_now()]))

    res = run_cli(["cycle", "--symbols", "ETH/USD", "--json"], env)

    assert res.code == 0, res.stderr
    assert res.json()["status"] == "skipped"
    assert res.json()["skip_reason"] == "maintenance"
    assert real_redis.xlen("signals:raw") == 0
    assert json.loads(real_redis.lindex("runner:history", 0))["skip_reason"] == "maintenance"


# --- the circuit breaker across runs ---------------------------------------------------------


def test_breaker_opens_across_runs_then_probes_and_closes(real_redis, redis_server, tmp_path):
    failing = env_for(
        redis_server.url,
        tmp_path,
        SCRIPTED_FAIL="*",
        RUNNER_RETRY__MAX_ATTEMPTS="1",
        RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__FAILURE_THRESHOLD="5",
        RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__SUCCESS_THRESHOLD="1",
    )
    args = ["cycle", "--symbols", "ETH/USD", "--json"]
    for run in range(1, 6):
        res = run_cli(args, failing)
        assert res.code == 3, (run, res.stderr)
        state = real_redis.hget(BREAKER, "state")
        assert state == ("open" if run == 5 else "closed"), (run, real_redis.hgetall(BREAKER))
    assert int(real_redis.hget(BREAKER, "failure_count")) == 5

    log = tmp_path / "analyzed.log"
    sixth = run_cli(args, {**failing, "SCRIPTED_LOG": str(log)})
    assert sixth.code == 0, sixth.stderr
    assert sixth.json()["status"] == "skipped"
    assert sixth.json()["skip_reason"] == "breaker_open"
    assert not log.exists(), "an open breaker makes no call"
    st = run_cli(["status", "--json"], failing).json()
    assert st["breaker"]["state"] == "open"
    assert st["breaker"]["failure_count"] == 5
    assert st["breaker"]["opened_at"] is not None
    check = run_cli(["status", "--check", "--json"], failing)
    assert check.code == 3, "an open breaker is unhealthy"
    assert "circuit breaker open" in check.json()["health"]["problems"]

    # The analyzer is back; after the (short) recovery timeout the next run probes and closes it.
    time.sleep(1.2)
    healthy = {
        **failing,
        "SCRIPTED_FAIL": "",
        "RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__RECOVERY_TIMEOUT_SECONDS": "1",
    }
    probe = run_cli(args, healthy)
    assert probe.code == 0, probe.stderr
    assert probe.json()["status"] == "completed"
    assert real_redis.hget(BREAKER, "state") == "closed"
    assert run_cli(["status", "--json"], healthy).json()["breaker"]["state"] == "closed"


def test_failed_probe_reopens_the_breaker(real_redis, redis_server, tmp_path):
    env = env_for(
        redis_server.url,
        tmp_path,
        SCRIPTED_FAIL="*",
        RUNNER_RETRY__MAX_ATTEMPTS="1",
        RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__FAILURE_THRESHOLD="1",
        RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__RECOVERY_TIMEOUT_SECONDS="1",
    )
    args = ["cycle", "--symbols", "ETH/USD", "--json"]
    assert run_cli(args, env).code == 3
    assert real_redis.hget(BREAKER, "state") == "open"
    opened = float(real_redis.hget(BREAKER, "opened_at"))

    time.sleep(1.2)  # the recovery timeout (1 s) passes
    probe = run_cli(args, env)

    assert probe.code == 3, probe.stderr
    assert real_redis.hget(BREAKER, "state") == "open"
    assert float(real_redis.hget(BREAKER, "opened_at")) > opened


def test_breaker_reset_closes_an_open_breaker(real_redis, redis_server, tmp_path):
    env = env_for(
        redis_server.url,
        tmp_path,
        SCRIPTED_FAIL="*",
        RUNNER_RETRY__MAX_ATTEMPTS="1",
        RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__FAILURE_THRESHOLD="1",
    )
    assert run_cli(["cycle", "--symbols", "ETH/USD", "--json"], env).code == 3
    assert real_redis.hget(BREAKER, "state") == "open"

    reset = run_cli(["breaker", "reset"], env)

    assert reset.code == 0, reset.stderr
    assert real_redis.hget(BREAKER, "state") in (None, "closed")
    assert run_cli(["status", "--json"], env).json()["breaker"]["state"] == "closed"
    healthy = {**env, "SCRIPTED_FAIL": ""}
    res = run_cli(["cycle", "--symbols", "ETH/USD", "--json"], healthy)
    assert res.code == 0, res.stderr
    assert res.json()["status"] == "completed"


# --- auto-pause ------------------------------------------------------------------------------


def test_symbol_with_repeated_invalid_output_is_paused_until_resumed(real_redis, redis_server, tmp_path):
    log = tmp_path / "analyzed.log"
    env = env_for(
        redis_server.url,
        tmp_path,
        SCRIPTED_FAIL="ETH/USD",
        SCRIPTED_FAIL_KIND="invalid",
        SCRIPTED_LOG=str(log),
    )
    args = ["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"]
    for run in range(1, 4):
        res = run_cli(args, env)
        assert res.code == 1, (run, res.stderr)
        assert "invalid_output" in result_of(res.json(), "ETH/USD")["reason"]
        assert real_redis.hexists("runner:paused", "ETH/USD") == (run == 3)
    st = run_cli(["status", "--json"], env).json()
    assert "ETH/USD" in st["paused"]
    assert "BTC/USD" not in st["paused"]

    log.unlink()
    fourth = run_cli(args, env)
    assert fourth.code == 0, fourth.stderr
    assert result_of(fourth.json(), "ETH/USD")["status"] == "paused"
    assert result_of(fourth.json(), "BTC/USD")["status"] == "ok"
    assert log.read_text().split() == ["BTC/USD"], "a paused symbol is not analyzed"
    check = run_cli(["status", "--check", "--json"], env)
    assert check.code == 1, "a paused symbol is degraded"
    assert check.json()["health"]["problems"] == ["1 symbol(s) paused"]

    resume = run_cli(["resume", "ETH/USD"], env)
    assert resume.code == 0, resume.stderr
    assert not real_redis.hexists("runner:paused", "ETH/USD")
    assert "ETH/USD" not in run_cli(["status", "--json"], env).json()["paused"]
    log.unlink()
    fifth = run_cli(args, {**env, "SCRIPTED_FAIL": ""})
    assert fifth.code == 0, fifth.stderr
    assert result_of(fifth.json(), "ETH/USD")["status"] == "ok"
    assert sorted(log.read_text().split()) == ["BTC/USD", "ETH/USD"]


def test_outages_never_pause_a_symbol(real_redis, redis_server, tmp_path):
    env = env_for(
        redis_server.url,
        tmp_path,
        SCRIPTED_FAIL="ETH/USD",
        SCRIPTED_FAIL_KIND="transient",
        RUNNER_RETRY__MAX_ATTEMPTS="1",
        RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__FAILURE_THRESHOLD="50",
    )
    for run in range(4):
        res = run_cli(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env)
        assert res.code == 1, (run, res.stderr)
    assert not real_redis.exists("runner:paused")
    assert run_cli(["status", "--json"], env).json()["paused"] == {}


# --- the cycle lease ------------------------------------------------------------------------


def test_second_run_skips_while_a_cycle_is_running(real_redis, redis_server, tmp_path):
    gate = Gate(tmp_path)
    env = env_for(redis_server.url, tmp_path, **HOLD, **gate.env())
    first = start_cli(["cycle", "--symbols", "ETH/USD", "--json"], env)
    try:
        gate.wait_started(1)
        owner = _lease_owner(real_redis)
        assert owner is not None, "the lease is taken before any analysis starts"

        second = run_cli(["cycle", "--symbols", "ETH/USD", "--json"], ungated(env))

        assert second.code == 0, second.stderr
        doc = second.json()
        assert doc["status"] == "skipped"
        assert doc["skip_reason"] == "cycle_running"
        assert owner["cycle_id"] in second.stdout + second.stderr
    finally:
        gate.open()
        done = finish(first)
    assert done.code == 0, done.stderr
    assert done.json()["cycle_id"] == owner["cycle_id"]
    assert len(stream_signals(real_redis)) == 1
    assert real_redis.get("runner:lease:0-1") is None, "the lease is released at the end"


# --- a killed run's locks ----------------------------------------------------------------------


def test_locks_of_a_killed_run_are_taken_over_after_its_heartbeat_expires(real_redis, redis_server, tmp_path):
    symbols = ["--symbols", "ETH/USD,BTC/USD", "--json"]
    gate = Gate(tmp_path)  # never opened: the victim is busy until it is killed
    env = env_for(
        redis_server.url,
        tmp_path,
        **HOLD,
        **gate.env(),
        INSTANCE_ID="pod-a",
        RUNNER_HEARTBEAT__TTL_SECONDS="1",
        RUNNER_HEARTBEAT__INTERVAL_SECONDS="0.3",
    )
    victim = start_cli(["cycle", *symbols], env)
    try:
        gate.wait_started(2)
        assert len(lock_keys(real_redis)) == 2
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
    killed = {k: json.loads(real_redis.get(k)) for k in lock_keys(real_redis)}
    assert set(killed) == {"signal:lock:ETH/USD", "signal:lock:BTC/USD"}, "SIGKILL leaves the locks behind"
    assert {o["instance_id"] for o in killed.values()} == {"pod-a"}

    # The heartbeat's TTL (1 s) runs out: nothing refreshes it any more.
    wait_until(lambda: not real_redis.exists("runner:heartbeat:pod-a"), timeout=10)
    st = run_cli(["status", "--json"], env).json()
    assert sorted((lk["symbol"], lk["owner"], lk["owner_alive"]) for lk in st["locks"]) == [
        ("BTC/USD", "pod-a", False),
        ("ETH/USD", "pod-a", False),
    ]
    res = run_cli(["cycle", *symbols], ungated(env, INSTANCE_ID="pod-b"))

    assert res.code == 0, res.stderr
    doc = res.json()
    assert doc["status"] == "completed"
    assert {r["status"] for r in doc["results"]} == {"ok"}
    published = {s["symbol"]: s for s in stream_signals(real_redis)}
    assert set(published) == {"ETH/USD", "BTC/USD"}
    for sym, sig in published.items():
        assert sig["instance_id"] == "pod-b"
        assert sig["fencing_token"] > killed[f"signal:lock:{sym}"]["token"]
    assert lock_keys(real_redis) == []
    counters = counter_totals(real_redis)
    recovered = {k: v for k, v in counters.items() if k.startswith("stale_locks_recovered_total")}
    assert sum(float(v) for v in recovered.values()) == 2, counters
    assert any("ETH/USD" in k and "heartbeat" in k for k in recovered), recovered
    assert any("took over" in rec["msg"] for rec in log_lines(res.stderr)), res.stderr


# --- SIGTERM ------------------------------------------------------------------------------------


def test_sigterm_mid_cycle_publishes_what_is_done_and_releases_everything(real_redis, redis_server, tmp_path):
    """ETH/USD is done, BTC/USD is in flight, SOL/USD and DOGE/USD wait (one at a time) when
    SIGTERM arrives: BTC/USD finishes within the grace and is published, nothing else starts."""
    gate = Gate(tmp_path)
    env = env_for(
        redis_server.url,
        tmp_path,
        **HOLD,
        **gate.env("BTC", "SOL", "DOGE"),
        RUNNER_PARALLEL__MAX_CONCURRENT="1",
        RUNNER_PARALLEL__MIN_CONCURRENT="1",
    )
    proc = spawn(["cycle", "--symbols", "ETH/USD,BTC/USD,SOL/USD,DOGE/USD", "--json"], env, tmp_path / "run")
    try:
        gate.wait_started(2)
        wait_until(lambda: real_redis.xlen("signals:raw") >= 1, timeout=10, interval=0.02)
        sent = time.monotonic()
        proc.send(signal.SIGTERM)
        # The symbol in flight may finish once the run has taken the signal (before, the freed
        # slot could start the next symbol), within the grace.
        wait_until(lambda: "stopping: no new symbol starts" in proc.stderr, timeout=2)
        gate.open()
        res = proc.wait(2 + 5)
    finally:
        reap_all([proc])
    took = time.monotonic() - sent

    assert took < 2 + 3, f"exited {took:.1f}s after SIGTERM, grace is 2s"
    assert res.code in (0, 1), res.stderr
    assert "Traceback" not in res.stderr
    doc = res.json()
    assert doc["exit_code"] == res.code
    assert lock_keys(real_redis) == [], "SIGTERM still releases every lock"
    assert real_redis.get("runner:lease:0-1") is None
    published = [s["symbol"] for s in stream_signals(real_redis)]
    assert published == ["ETH/USD", "BTC/USD"]
    assert sorted(published) == sorted(s["symbol"] for s in doc["signals"])
    assert res.code == 1
    assert gate.started() == ["ETH/USD", "BTC/USD"], "no symbol starts after SIGTERM"
    for sym in ("SOL/USD", "DOGE/USD"):
        assert (result_of(doc, sym)["status"], result_of(doc, sym)["reason"]) == ("not_started", "shutdown")
    assert json.loads(real_redis.lindex("runner:history", 0))["cycle_id"] == doc["cycle_id"]


# --- two runs at once ---------------------------------------------------------------------------


def test_two_invocations_at_once_publish_each_signal_once(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, SCRIPTED_DELAY="0.5")
    args = ["cycle", "--symbols", "ETH/USD,BTC/USD,SOL/USD,DOGE/USD", "--json"]

    procs = [start_cli(args, {**env, "INSTANCE_ID": f"pod-{i}"}) for i in range(2)]
    results = [finish(p) for p in procs]

    for res in results:
        assert res.code == 0, res.stderr
    ids = [s["id"] for s in stream_signals(real_redis)]
    assert len(ids) == len(set(ids)), ids
    assert len(ids) == 4
    assert lock_keys(real_redis) == []


def test_two_shards_at_once_split_the_symbols(real_redis, redis_server, tmp_path):
    env = env_for(
        redis_server.url,
        tmp_path,
        SCRIPTED_DELAY="0.3",
        RUNNER_SYMBOLS=json.dumps(["ETH/USD", "BTC/USD", "SOL/USD", "DOGE/USD", "AVAX/USD", "LINK/USD"]),
    )

    procs = [start_cli(["cycle", "--json", "--shard", f"{i}/2"], env) for i in range(2)]
    results = [finish(p) for p in procs]

    for res in results:
        assert res.code == 0, res.stderr
    mine = [{r["symbol"] for r in res.json()["results"]} for res in results]
    assert not mine[0] & mine[1]
    assert mine[0] | mine[1] == {"ETH/USD", "BTC/USD", "SOL/USD", "DOGE/USD", "AVAX/USD", "LINK/USD"}
    ids = [s["id"] for s in stream_signals(real_redis)]
    assert len(ids) == 6
    assert len(set(ids)) == 6


# --- fencing ------------------------------------------------------------------------------------


def test_a_run_whose_lock_is_stolen_publishes_nothing_for_that_symbol(real_redis, redis_server, tmp_path):
    gate = Gate(tmp_path)
    env = env_for(redis_server.url, tmp_path, **HOLD, **gate.env(), INSTANCE_ID="pod-slow")
    proc = start_cli(["cycle", "--symbols", "ETH/USD", "--json"], env)
    try:
        gate.wait_started(1)
        mine = json.loads(real_redis.get("signal:lock:ETH/USD"))
        thief = json.dumps({
            "instance_id": "pod-thief", "cycle_id": "thief-cycle", "pid": 1,
            "acquired_at": time.time(), "token": mine["token"] + 100,
        })  # fmt: skip
        real_redis.set("signal:lock:ETH/USD", thief, ex=60)
    finally:
        gate.open()
        res = finish(proc)

    doc = res.json()
    eth = result_of(doc, "ETH/USD")
    assert eth["status"] == "failed"
    assert "fenced" in (eth["reason"] or "")
    assert doc["signals"] == []
    assert res.code == 3
    assert [s for s in stream_signals(real_redis) if s["cycle_id"] == doc["cycle_id"]] == []
    assert not real_redis.hexists("signals:latest", "ETH/USD")
    assert real_redis.get("signal:lock:ETH/USD") == thief, "the new owner's lock is left alone"


# --- corrupt state --------------------------------------------------------------------------------


def test_corrupt_state_keys_are_reset_and_the_cycle_runs(real_redis, redis_server, tmp_path):
    real_redis.set(BREAKER, "open-ish")
    real_redis.rpush("runner:paused", "ETH/USD")
    real_redis.set("signal:lock:ETH/USD", "\x00garbage{")
    env = env_for(redis_server.url, tmp_path)

    res = run_cli(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env)

    assert res.code == 0, res.stderr
    assert res.json()["status"] == "completed"
    assert sorted(s["symbol"] for s in stream_signals(real_redis)) == ["BTC/USD", "ETH/USD"]
    warnings = [rec["msg"] for rec in log_lines(res.stderr) if rec["level"] == "warning"]
    assert any(BREAKER in w for w in warnings), warnings
    assert any("runner:paused" in w for w in warnings), warnings
    assert real_redis.type(BREAKER) in ("hash", "none")
    assert real_redis.type("runner:paused") in ("hash", "none")
    assert not real_redis.exists("signal:lock:ETH/USD")
    st = run_cli(["status", "--json"], env)
    assert st.code == 0, st.stderr
    assert st.json()["breaker"]["state"] == "closed"


def test_status_survives_corrupt_keys(real_redis, redis_server, tmp_path):
    real_redis.set(BREAKER, "nonsense")
    real_redis.set("runner:history", "nonsense")
    real_redis.hset("runner:stats", "ETH/USD", "{not json")
    real_redis.set("signal:lock:ETH/USD", "garbage")
    env = env_for(redis_server.url, tmp_path)

    res = run_cli(["status", "--json"], env)

    assert res.code == 0, res.stderr
    assert "Traceback" not in res.stderr
    doc = res.json()
    assert doc["last_cycle"] is None
    assert doc["breaker"]["state"] == "closed"
    assert [lock["symbol"] for lock in doc["locks"]] == ["ETH/USD"]


# --- status --check --------------------------------------------------------------------------------


def test_status_check_exit_codes_follow_health(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path)
    before = run_cli(["status", "--check", "--json"], env)
    assert before.code == 1, "no cycle yet is degraded"
    assert before.json()["health"]["problems"] == ["no cycle has run yet"]

    assert run_cli(["cycle", "--symbols", "ETH/USD", "--json"], env).code == 0
    healthy = run_cli(["status", "--check", "--json"], env)
    assert healthy.code == 0, healthy.stdout
    assert healthy.json()["health"] == {"code": 0, "problems": []}

    assert run_cli(["kill-switch", "on", "--reason", "deploy"], env).code == 0
    halted = run_cli(["status", "--check", "--json"], env)
    assert halted.code == 1
    assert halted.json()["health"]["problems"] == ["kill switch on: deploy"]
    assert run_cli(["status", "--json"], env).code == 0, "without --check status always exits 0"


# --- bugs and harder cases ------------------------------------------------------------------------


def test_sigterm_with_a_symbol_slower_than_the_grace_period(real_redis, redis_server, tmp_path):
    """Regression: symbols still in flight when the grace ran out were lost; the cycle crashed
    with a KeyError and left its locks and lease behind."""

    gate = Gate(tmp_path)  # never opened: both symbols outlast any grace
    env = env_for(
        redis_server.url,
        tmp_path,
        **HOLD,
        **gate.env(),
        RUNNER_GRACEFUL_SHUTDOWN__TIMEOUT_SECONDS="1",
    )
    proc = start_cli(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env)
    try:
        gate.wait_started(2)
    finally:
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
    res = finish(proc, timeout=15)
    took = time.monotonic() - sent

    assert took < 1 + 3, f"exited {took:.1f}s after SIGTERM, grace is 1s"
    assert "Traceback" not in res.stderr, res.stderr
    assert res.code == 3, res.stderr
    doc = res.json()
    for sym in ("ETH/USD", "BTC/USD"):
        r = result_of(doc, sym)
        assert (r["status"], r["reason"]) == ("timeout", "shutdown")
    assert lock_keys(real_redis) == [], "SIGTERM must release every lock"
    assert real_redis.get("runner:lease:0-1") is None


def test_a_model_that_answers_garbage_for_everything_does_not_pause_everything(
    real_redis, redis_server, tmp_path
):
    """Regression: a model answering garbage for every symbol used to pause every symbol."""

    env = env_for(redis_server.url, tmp_path, SCRIPTED_FAIL="*", SCRIPTED_FAIL_KIND="invalid")
    args = ["cycle", "--symbols", "ETH/USD,BTC/USD,SOL/USD", "--json"]
    for _ in range(4):
        res = run_cli(args, env)
        assert res.code == 3, res.stdout
        assert res.json()["status"] == "failed", "the job must keep reporting the failure"
    assert real_redis.hlen("runner:paused") == 0, real_redis.hkeys("runner:paused")


def test_heartbeat_stop_never_hangs_the_cycle(real_redis, redis_server, tmp_path):
    """A beat in flight when the cycle ends must not hang the process.

    The race needs the end of the analysis to meet a heartbeat refresh; it happens at ordinary
    settings too (a 1.5 s analysis with a 0.5 s interval hung about one run in three). A 1 ms
    interval makes nearly every run meet it, so six runs side by side show it every time.
    """
    procs = []
    for i in range(6):
        env = env_for(
            redis_server.url,
            tmp_path,
            SCRIPTED_DELAY="0.3",
            RUNNER_HEARTBEAT__INTERVAL_SECONDS="0.001",
            RUNNER_REDIS__KEY_PREFIX=f"hb{i}:",  # independent deployments: no shared lease
        )
        procs.append(start_cli(["cycle", "--symbols", "ETH/USD", "--json"], env))
    # A hung run never exits; a slow machine only makes the runs take longer than usual.
    results = [finish(p, timeout=60) for p in procs]
    assert [r.code for r in results] == [0] * len(procs), [r.stderr for r in results if r.code]


def _shard_owning(symbol: str, count: int) -> str:
    from runner.shards import Shard

    return next(f"{i}/{count}" for i in range(count) if Shard(i, count).owns(symbol))


def test_a_slow_live_run_keeps_its_locks_past_the_heartbeat_ttl(real_redis, redis_server, tmp_path):
    gate = Gate(tmp_path)
    env = env_for(
        redis_server.url,
        tmp_path,
        **HOLD,
        **gate.env(),
        INSTANCE_ID="pod-a",
        RUNNER_HEARTBEAT__TTL_SECONDS="1",
        RUNNER_HEARTBEAT__INTERVAL_SECONDS="0.3",
    )
    slow = start_cli(["cycle", "--symbols", "ETH/USD", "--json"], env)
    try:
        gate.wait_started(1)
        first_beat = heartbeat_expiry(real_redis, "signal:lock:ETH/USD")
        # A refresh written a whole TTL after the first beat: the first beat alone would have
        # expired by now, so only the background refresh keeps the run alive.
        wait_until(lambda: heartbeat_expiry(real_redis, "signal:lock:ETH/USD") >= first_beat + 1, timeout=10)
        st = run_cli(["status", "--json"], env).json()
        assert [(lk["symbol"], lk["owner"], lk["owner_alive"]) for lk in st["locks"]] == [
            ("ETH/USD", "pod-a", True)
        ]
        assert [i["instance_id"] for i in st["instances"]] == ["pod-a"]
        # Another run (a different shard count, so another lease) must not take the live lock.
        other = run_cli(
            ["cycle", "--symbols", "ETH/USD", "--shard", _shard_owning("ETH/USD", 2), "--json"],
            ungated(env, INSTANCE_ID="pod-b"),
        )
        assert other.code == 0, other.stderr
        assert other.json()["skip_reason"] == "all_locked"
        assert result_of(other.json(), "ETH/USD")["status"] == "locked"
        assert "pod-a" in result_of(other.json(), "ETH/USD")["reason"]
    finally:
        gate.open()
        done = finish(slow)
    assert done.code == 0, done.stderr
    assert [s["instance_id"] for s in stream_signals(real_redis)] == ["pod-a"]


def test_a_lock_older_than_the_stale_threshold_is_taken_over_and_its_owner_fenced(
    real_redis, redis_server, tmp_path
):
    gate = Gate(tmp_path)
    env = env_for(
        redis_server.url,
        tmp_path,
        **HOLD,
        **gate.env(),
        INSTANCE_ID="pod-old",
        RUNNER_LOCKS__STALE_THRESHOLD_SECONDS="1",
    )
    old = start_cli(["cycle", "--symbols", "ETH/USD", "--json"], env)
    try:
        gate.wait_started(1)
        time.sleep(1.3)  # the lock is now older than the stale threshold (1 s)
        new = run_cli(
            ["cycle", "--symbols", "ETH/USD", "--shard", _shard_owning("ETH/USD", 2), "--json"],
            ungated(env, INSTANCE_ID="pod-new"),
        )
    finally:
        gate.open()
        done = finish(old)

    assert new.code == 0, new.stderr
    assert result_of(new.json(), "ETH/USD")["status"] == "ok"
    assert done.code == 3, done.stdout
    eth = result_of(done.json(), "ETH/USD")
    assert eth["status"] == "failed"
    assert "fenced" in eth["reason"]
    published = stream_signals(real_redis)
    assert [(s["symbol"], s["instance_id"]) for s in published] == [("ETH/USD", "pod-new")]
    counters = counter_totals(real_redis)
    assert any(k.startswith("stale_locks_recovered_total") and 'reason="age"' in k for k in counters), (
        counters
    )


def test_a_hanging_analyzer_is_cut_off_at_the_cycle_deadline(real_redis, redis_server, tmp_path):
    # A gate that is never opened: only the cycle's deadline can end these analyses.
    env = env_for(
        redis_server.url, tmp_path, **Gate(tmp_path).env(), RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS="1.5"
    )

    res = run_cli(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env, timeout=30)

    assert res.code == 3, res.stderr
    doc = res.json()
    assert doc["duration_ms"] < (1.5 + 1) * 1000, doc["duration_ms"]
    for r in doc["results"]:
        assert r["status"] in ("timeout", "not_started")
    assert lock_keys(real_redis) == []


def test_overrunning_cycles_trigger_a_backpressure_cooldown(real_redis, redis_server, tmp_path):
    env = env_for(
        redis_server.url,
        tmp_path,
        **Gate(tmp_path).env("ETH"),  # never opened: ETH/USD always outlasts the deadline
        RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS="1.2",
        RUNNER_PARALLEL__MAX_CONCURRENT="1",
        RUNNER_PARALLEL__MIN_CONCURRENT="1",
        RUNNER_RETRY__MAX_ATTEMPTS="1",
        RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__FAILURE_THRESHOLD="50",
    )
    args = ["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"]
    for _ in range(3):
        res = run_cli(args, env)
        assert res.json()["status"] != "skipped", res.stdout
    assert real_redis.hget("runner:backpressure:0-1", "cooldown_remaining") == "2"
    check = run_cli(["status", "--check", "--json"], env)
    assert check.code >= 1
    assert "backpressure cooldown" in check.json()["health"]["problems"]

    for _ in range(2):
        res = run_cli(args, env)
        assert res.code == 0, res.stderr
        assert res.json()["skip_reason"] == "cooldown"

    fast = ungated(env, RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS="6")
    res = run_cli(args, fast)
    assert res.code == 0, res.stderr
    assert res.json()["status"] == "completed"
    counters = counter_totals(real_redis)
    assert float(counters["backpressure_cooldowns_total"]) == 1


def test_high_latency_skip_ages_out_and_the_runner_measures_again(real_redis, redis_server, tmp_path):
    max_age = 60
    env = env_for(
        redis_server.url,
        tmp_path,
        SCRIPTED_DELAY="0.3",  # a latency of at least 300 ms: above both thresholds on any machine
        RUNNER_ADAPTIVE__P95_THRESHOLD_MS="100",
        RUNNER_ADAPTIVE__P99_THRESHOLD_MS="200",
        RUNNER_ADAPTIVE__SAMPLE_MAX_AGE_SECONDS=str(max_age),
    )
    args = ["cycle", "--symbols", "ETH/USD", "--json"]
    assert run_cli(args, env).json()["status"] == "completed"
    measured = real_redis.lrange("runner:latency", 0, -1)
    assert measured

    skipped = run_cli(args, env)
    assert skipped.code == 0, skipped.stderr
    assert skipped.json()["skip_reason"] == "high_latency"
    assert real_redis.lrange("runner:latency", 0, -1) == measured, "a skipped cycle measures nothing"

    # The samples grow older than sample_max_age_seconds: stamp them that much earlier rather
    # than wait for it.
    aged = [f"{float(at) - max_age - 1:.3f}:{ms}" for at, _, ms in (x.partition(":") for x in measured)]
    real_redis.delete("runner:latency")
    real_redis.rpush("runner:latency", *aged)
    again = run_cli(args, env)
    assert again.code == 0, again.stderr
    assert again.json()["status"] == "completed", "old samples age out, so the skip cannot last forever"


def test_refused_credentials_fail_the_cycle_fast_and_pause_nothing(real_redis, redis_server, tmp_path):
    log = tmp_path / "analyzed.log"
    env = env_for(
        redis_server.url,
        tmp_path,
        SCRIPTED_FAIL="*",
        SCRIPTED_FAIL_KIND="auth",
        SCRIPTED_DELAY="0.2",
        SCRIPTED_LOG=str(log),
        RUNNER_PARALLEL__MAX_CONCURRENT="2",
        RUNNER_PARALLEL__MIN_CONCURRENT="1",
    )
    args = ["cycle", "--symbols", "ETH/USD,BTC/USD,SOL/USD,DOGE/USD,AVAX/USD,LINK/USD", "--json"]
    for _ in range(3):
        res = run_cli(args, env)
        assert res.code == 3, res.stderr
    doc = res.json()
    assert len(log.read_text().split()) <= 3 * 2, "no new call after the analyzer refused our key"
    assert {r["reason"] for r in doc["results"] if r["status"] == "not_started"} == {"auth_failed"}
    assert any("credentials" in w for w in doc["warnings"])
    assert not real_redis.exists("runner:paused")


def test_redis_dying_mid_cycle_fails_the_run_cleanly(tmp_path):
    from tests.conftest import start_redis

    server = start_redis(tmp_path)
    try:
        gate = Gate(tmp_path)
        env = env_for(server.url, tmp_path, **gate.env())
        proc = start_cli(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env)
        try:
            gate.wait_started(2)
        finally:
            server.stop()
            gate.open()  # the analyses end with Redis gone: nothing can be published
        res = finish(proc, timeout=15)
    finally:
        server.stop()

    assert res.code == 3, res.stderr
    assert "Traceback" not in res.stderr
    doc = res.json()
    assert doc["status"] == "failed"
    assert doc["signals"] == []
    assert any("redis" in w.lower() for w in doc["warnings"])


def test_a_redis_that_accepts_but_never_answers_costs_seconds_not_minutes(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        started = time.monotonic()
        res = run_cli(["cycle", "--json"], env_for(f"redis://127.0.0.1:{port}/0", tmp_path), timeout=20)
        took = time.monotonic() - started
    finally:
        listener.close()

    assert res.code == 3
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("runner: error:")
    assert took < 10, f"took {took:.1f}s against a silent Redis"


def test_a_key_prefix_puts_every_key_under_it(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, RUNNER_REDIS__KEY_PREFIX="{runner}:")

    res = run_cli(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env)

    assert res.code == 0, res.stderr
    keys = real_redis.keys("*")
    assert keys
    assert all(k.startswith("{runner}:") for k in keys), keys
    assert real_redis.xlen("{runner}:signals:raw") == 2
    st = run_cli(["status", "--json"], env).json()
    assert st["last_cycle"]["cycle_id"] == res.json()["cycle_id"]
    assert st["stream_length"] == 2
