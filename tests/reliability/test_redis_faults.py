"""Scenarios 5-8: Redis frozen, refusing writes, restarted, and holding garbage."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import RedisServer, start_redis
from tests.integration.helpers import Gate, lock_keys, log_lines, stream_signals, ungated, wait_until
from tests.reliability.support import (
    bad_lines,
    frozen,
    reap_all,
    run,
    runner_env,
    spawn,
    stop_server,
)

TOTAL = 6.0  # FAST's total_timeout_seconds
GRACE = 2.0  # FAST's graceful_shutdown.timeout_seconds
SOCKET = 1.0  # redis.socket_timeout_seconds here (default 2)
#: The socket timeout of the deadline test: a wind-down call that waited for it instead of the
#: deadline would end past deadline + grace + EXIT_S by seconds.
SOCKET_LONG = 8.0
#: What a process may take to exit after its last Redis call (no deadline governs it).
EXIT_S = 2.0
LONG = 60.0  # a deadline far from a run that gives up after the socket timeout
SYMBOLS = ["--symbols", "ETH/USD,BTC/USD,SOL/USD", "--json"]


def env_of(server: RedisServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    return runner_env(server.url, tmp_path, RUNNER_REDIS__SOCKET_TIMEOUT_SECONDS=str(SOCKET), **extra)


def _clear_outcome(proc: Any) -> dict[str, Any]:
    """Exit 1 or 3, a JSON document on stdout, no traceback; returns the document."""
    assert proc.code in (1, 3), (proc.code, proc.stdout, proc.stderr)
    assert not bad_lines(proc.stderr), proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == proc.code
    return doc


# --- 5. frozen (SIGSTOP) ----------------------------------------------------------------------


@pytest.mark.scenario("05")
def test_redis_frozen_before_the_run(measure, own_redis: RedisServer, tmp_path: Path):
    """Redis is SIGSTOPped before the run starts (the kernel still accepts connections, nothing
    answers): the first Redis call gives up after the socket timeout (1 s) and the run exits 3
    with one `runner: error:` line naming Redis, long before its deadline (60 s here, so that a
    loaded machine's start-up cannot blur the difference)."""
    env = env_of(own_redis, tmp_path, RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS=str(LONG))
    with frozen(own_redis):
        proc = run(["cycle", *SYMBOLS], env, tmp_path / "runs", timeout=30)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    measure.figures(exit_code=proc.code, took_s=round(proc.elapsed, 3), socket_timeout_s=SOCKET)
    measure.note(f"stderr: `{lines[-1] if lines else ''}`")
    assert proc.code == 3
    assert not bad_lines(proc.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("runner: error:"), lines
    assert "Redis" in lines[0], lines
    assert json.loads(proc.stdout)["exit_code"] == 3
    assert proc.elapsed < LONG / 2


@pytest.mark.scenario("05")
def test_redis_frozen_mid_cycle(measure, own_redis: RedisServer, tmp_path: Path):
    """Redis is SIGSTOPped while three symbols are being analyzed (held busy until it is frozen)
    and stays frozen until the run has exited: publishing and recording each give up after the
    socket timeout, the run exits 3 (nothing could be published) with a JSON document whose
    warnings name Redis, no traceback, within its deadline + grace. Once Redis is back and the
    dead run's heartbeat has expired, the next run (heartbeat TTL 1 s here) takes the locks it
    left and completes."""
    client = own_redis.client()
    gate = Gate(tmp_path)
    env = env_of(own_redis, tmp_path, **gate.env(), RUNNER_HEARTBEAT__TTL_SECONDS="1")
    proc = spawn(["cycle", *SYMBOLS], env, tmp_path / "runs")
    try:
        gate.wait_started(3)
        locked_at = time.monotonic()
        with frozen(own_redis):
            gate.open()
            proc.wait(60)
            took = time.monotonic() - locked_at
    finally:
        gate.open()
        reap_all([proc])
    doc = _clear_outcome(proc)
    left = lock_keys(client)
    measure.figures(
        exit_code=proc.code,
        run_took_s=round(proc.elapsed, 3),
        lock_to_exit_s=round(took, 3),
        bound_s=TOTAL + GRACE,
        locks_left_behind=len(left),
    )
    for w in doc["warnings"]:
        measure.note(f"warning: `{w}`")
    assert proc.code == 3
    assert doc["signals"] == []
    assert any("Redis" in w for w in doc["warnings"]), doc["warnings"]
    assert took < TOTAL + GRACE, f"{took:.2f}s after the run took its locks"

    # The heartbeat TTL (1 s) of the frozen-out run runs out.
    wait_until(lambda: not client.keys("runner:heartbeat:*"), timeout=10)
    after = run(["cycle", *SYMBOLS], ungated(env), tmp_path / "runs")
    measure.figure("next_run_exit_code", after.code)
    assert after.code == 0, after.stderr
    assert lock_keys(client) == []
    client.close()


@pytest.mark.scenario("05")
def test_redis_frozen_just_before_the_deadline(measure, own_redis: RedisServer, tmp_path: Path):
    """A 3 s cycle (grace 0.5 s) whose Redis freezes about 0.7 s before the deadline, just before
    the analyses (held until then) finish: the wind-down (publish, record, release) must still end
    within the deadline + grace, since each Redis call gets at most what remains of the deadline,
    not its socket timeout (8 s here, so that a call that waited for it would overrun the bound
    by seconds). The bound allows 2 s more for the process to exit after its last Redis call,
    which no deadline governs and a loaded machine slows."""
    total, grace = 3.0, 0.5
    client = own_redis.client()
    gate = Gate(tmp_path)
    env = runner_env(
        own_redis.url,
        tmp_path,
        **gate.env(),
        RUNNER_REDIS__SOCKET_TIMEOUT_SECONDS=str(SOCKET_LONG),
        RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS=str(total),
        RUNNER_GRACEFUL_SHUTDOWN__TIMEOUT_SECONDS=str(grace),
    )
    proc = spawn(["cycle", *SYMBOLS], env, tmp_path / "runs")
    try:
        gate.wait_started(3)
        locked_at = time.monotonic()
        # Where the freeze falls only shapes the case (the bound holds wherever it falls), but the
        # bound is measured from here, so the test must not oversleep by a second: it never does.
        time.sleep(total - 0.7)
        with frozen(own_redis):
            gate.open()
            proc.wait(60)
            took = time.monotonic() - locked_at
    finally:
        gate.open()
        reap_all([proc])
        client.close()
    bound = total + grace + EXIT_S
    measure.figures(exit_code=proc.code, lock_to_exit_s=round(took, 3), bound_s=bound)
    _clear_outcome(proc)
    assert took < bound, f"{took:.2f}s after the run took its locks; deadline {total}s"


# --- 6. CLIENT PAUSE WRITE ---------------------------------------------------------------------


def _pause(client: redis.Redis, ms: int) -> None:
    client.execute_command("CLIENT", "PAUSE", ms, "WRITE")


@pytest.mark.scenario("06")
def test_writes_paused_before_the_run(measure, own_redis: RedisServer, tmp_path: Path):
    """`CLIENT PAUSE WRITE` before the run (lifted only after it): the first step (a script that
    writes the heartbeat and takes the lease) blocks and gives up after the socket timeout (1 s);
    exit 3 with one line, no traceback, nothing written."""
    client = own_redis.client()
    env = env_of(own_redis, tmp_path, RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS=str(LONG))
    _pause(client, 60_000)
    try:
        proc = run(["cycle", *SYMBOLS], env, tmp_path / "runs", timeout=30)
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    measure.figures(exit_code=proc.code, took_s=round(proc.elapsed, 3))
    measure.note(f"stderr: `{lines[-1] if lines else ''}`")
    assert proc.code == 3
    assert len(lines) == 1, lines
    assert lines[0].startswith("runner: error:"), lines
    assert not bad_lines(proc.stderr)
    assert proc.elapsed < LONG / 2
    assert client.dbsize() == 0
    client.close()


@pytest.mark.scenario("06")
@pytest.mark.parametrize("pause", ["outlasts_the_publish", "over_before_the_publish"])
def test_writes_paused_mid_cycle(pause, measure, own_redis: RedisServer, tmp_path: Path):
    """`CLIENT PAUSE <ms> WRITE` while three analyses are held busy (socket timeout 1 s). A pause
    of 1.5 s, in which the analyses end at once, outlasts the publish, which gives up after the
    socket timeout: exit 3, the warnings say publishing failed, nothing is half-published, and
    once writes resume (within the next call's socket timeout) the cycle is still recorded and
    every lock released. A pause of 0.5 s that is over before the analyses end changes nothing:
    the cycle completes (exit 0, three signals). Either way within the deadline + grace, no
    traceback."""
    long = pause == "outlasts_the_publish"
    pause_ms = int(SOCKET * 1500) if long else 500
    client = own_redis.client()
    gate = Gate(tmp_path)
    env = env_of(own_redis, tmp_path, **gate.env())
    proc = spawn(["cycle", *SYMBOLS], env, tmp_path / "runs")
    try:
        gate.wait_started(3)
        busy_at = time.monotonic()
        _pause(client, pause_ms)
        if not long:
            client.set("writes-resumed", "1")  # a write of our own: it returns once the pause is over
        gate.open()
        proc.wait(60)
    finally:
        gate.open()
        reap_all([proc])
        client.execute_command("CLIENT", "UNPAUSE")
    doc = json.loads(proc.stdout)
    measure.figures(
        pause_ms=pause_ms,
        exit_code=proc.code,
        took_s=round(proc.elapsed, 3),
        signals_published=client.xlen("signals:raw"),
        locks_left=len(lock_keys(client)),
    )
    assert not bad_lines(proc.stderr), proc.stderr
    assert (proc.ended or 0) - busy_at < TOTAL + GRACE  # from the moment the run was busy
    assert lock_keys(client) == []
    assert sorted(s["id"] for s in stream_signals(client)) == sorted(s["id"] for s in doc["signals"])
    if long:
        _clear_outcome(proc)
        assert any("publishing failed" in w for w in doc["warnings"]), doc["warnings"]
    else:
        assert proc.code == 0, proc.stderr
        assert len(doc["signals"]) == 3
    client.close()


# --- 7. restart ----------------------------------------------------------------------------------


def _snapshot(client: redis.Redis) -> dict[str, Any]:
    return {
        "history": client.lrange("runner:history", 0, -1),
        "breaker": client.hgetall("runner:breaker:llm_service"),
        "paused": client.hgetall("runner:paused"),
        "stream": client.xrange("signals:raw"),
        "latest": client.hgetall("signals:latest"),
        "stats": client.hgetall("runner:stats"),
        "fencing": client.get("runner:fencing"),
        "markers": sorted(client.scan_iter(match="runner:published:*")),
        "counters": client.hgetall("runner:metrics:counters:0-1"),
    }


@pytest.mark.scenario("07")
@pytest.mark.parametrize("how", ["shutdown", "sigkill"])
def test_redis_restarted_between_runs(how, measure, tmp_path: Path):
    """A redis-server with `--appendonly yes` (and `--appendfsync always` for the SIGKILL case)
    is restarted between two runs, cleanly or with SIGKILL. Everything the first run left
    (history, breaker failure count, paused symbol, stream, latest signals, per-symbol stats,
    fencing counter, idempotency markers, metric totals) is there after the restart; the second
    run in the same minute publishes nothing twice, still skips the paused symbol, goes on from
    the saved breaker (version-checked save) and history, and nothing crashes."""
    directory = tmp_path / "aof"
    directory.mkdir()
    extra = ("--appendonly", "yes", "--appendfsync", "always" if how == "sigkill" else "everysec")
    server = start_redis(directory, None, *extra)
    port = server.port
    env = runner_env(
        server.url,
        tmp_path,
        SCRIPTED_FAIL="SOL/USD,DOGE/USD",
        SCRIPTED_DELAY_DOGE="0.3",
        RUNNER_ADAPTIVE__PAUSE_AFTER_FAILURES="1",
        RUNNER_RETRY__MAX_ATTEMPTS="1",
    )
    args = ["cycle", "--symbols", "ETH/USD,BTC/USD,SOL/USD,DOGE/USD", "--json"]
    try:
        client = server.client()
        # SOL/USD answers garbage (its own fault: paused after one); DOGE/USD has an outage.
        first = run(
            args, {**env, "SCRIPTED_FAIL": "SOL/USD", "SCRIPTED_FAIL_KIND": "invalid"}, tmp_path / "r"
        )
        second_env = {**env, "SCRIPTED_FAIL": "DOGE/USD"}
        assert first.code == 1, first.stderr
        outage = run(["cycle", "--symbols", "DOGE/USD", "--json"], second_env, tmp_path / "r")
        assert outage.code == 3, outage.stderr
        before = _snapshot(client)
        client.close()
        started = time.monotonic()
        if how == "sigkill":
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(10)
        else:
            server.stop()
        server = start_redis(directory, port, *extra)
        restart_s = time.monotonic() - started
        client = server.client()
        after = _snapshot(client)
        status = run(["status", "--json"], env, tmp_path / "r")
        again = run(args, second_env, tmp_path / "r")
        doc = again.json()
        history = client.llen("runner:history")
        breaker_after = client.hgetall("runner:breaker:llm_service")
        stream_after = client.xlen("signals:raw")
        client.close()
    finally:
        stop_server(server)
    measure.figures(
        restart=how,
        restart_s=round(restart_s, 3),
        keys_compared=len(before),
        identical_after_restart=before == after,
        stream_entries=len(after["stream"]),
        breaker_version=f"{before['breaker'].get('version')} -> {breaker_after.get('version')}",
        paused=sorted(after["paused"]),
        second_run=f"exit {again.code}, {len(doc['signals'])} new signal(s)",
    )
    assert before["stream"]
    assert before["history"]
    assert before["paused"]
    assert before["breaker"]
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert status.code == 0, status.stderr
    assert status.json()["paused"].keys() == {"SOL/USD"}
    assert not bad_lines(again.stderr), again.stderr
    assert again.code == 1, again.stdout
    assert doc["signals"] == [], "the same minute publishes nothing twice, even across a restart"
    assert {r["symbol"]: r["status"] for r in doc["results"]}["SOL/USD"] == "paused"
    assert stream_after == len(before["stream"])
    assert history == len(before["history"]) + 1
    # The breaker kept its state across the restart and went on from it (version-checked saves).
    assert int(breaker_after["version"]) > int(before["breaker"]["version"])
    assert float(breaker_after["last_failure_at"]) > float(before["breaker"]["last_failure_at"])


# --- 8. garbage in state keys ------------------------------------------------------------------


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


#: name -> (what to plant, the key a warning must name or None, the type the key must have after)
GARBAGE: dict[str, tuple[Callable[[redis.Redis], Any], str | None, tuple[str, ...]]] = {
    "breaker as a string": (
        lambda c: c.set("runner:breaker:llm_service", "open-ish"),
        "runner:breaker:llm_service",
        ("hash", "none"),
    ),
    "breaker fields garbage": (
        lambda c: c.hset("runner:breaker:llm_service", mapping={"state": "exploded", "failure_count": "x"}),
        "runner:breaker:llm_service",
        ("hash", "none"),
    ),
    "paused as a list": (lambda c: c.rpush("runner:paused", "ETH/USD"), "runner:paused", ("hash", "none")),
    "history as a string": (lambda c: c.set("runner:history", "nope"), "runner:history", ("list",)),
    "latency as a hash": (lambda c: c.hset("runner:latency", "a", "b"), "runner:latency", ("list",)),
    "latency samples garbage": (
        lambda c: c.rpush("runner:latency", "abc", "1:2:3", "nan:nan", "-1:inf"),
        None,
        ("list",),
    ),
    "backpressure fields garbage": (
        lambda c: c.hset(
            "runner:backpressure:0-1", mapping={"consecutive_overruns": "-5", "cooldown_remaining": "x"}
        ),
        "runner:backpressure:0-1",
        ("hash", "none"),
    ),
    "backpressure as a string": (
        lambda c: c.set("runner:backpressure:0-1", "x"),
        "runner:backpressure:0-1",
        ("hash", "none"),
    ),
    "kill switch as a list": (
        lambda c: c.rpush("runner:kill_switch", "on"),
        "runner:kill_switch",
        ("hash", "none"),
    ),
    "fencing counter not a number": (lambda c: c.set("runner:fencing", "abc"), "runner:fencing", ("string",)),
    "fencing counter as a hash": (
        lambda c: c.hset("runner:fencing", "a", "1"),
        "runner:fencing",
        ("string",),
    ),
    "stats as a list": (lambda c: c.rpush("runner:stats", "x"), "runner:stats", ("hash",)),
    "stats entry not JSON": (lambda c: c.hset("runner:stats", "ETH/USD", "{not json"), None, ("hash",)),
    "own heartbeat as a string": (
        lambda c: c.set("runner:heartbeat:pod-g", "x"),
        "runner:heartbeat:pod-g",
        ("hash", "none"),
    ),
    "lock not a record": (
        lambda c: c.set("signal:lock:ETH/USD", "\x00garbage{"),
        "ETH/USD (corrupt",
        ("none",),
    ),
    "lock as a hash": (lambda c: c.hset("signal:lock:ETH/USD", "a", "b"), "ETH/USD (corrupt", ("none",)),
    "lease not a record": (lambda c: c.set("runner:lease:0-1", "[1,2"), None, ("none",)),
    "lease as a list": (lambda c: c.rpush("runner:lease:0-1", "x"), "runner:lease:0-1", ("none",)),
    "counters as a string": (
        lambda c: c.set("runner:metrics:counters:0-1", "x"),
        "runner:metrics:counters:0-1",
        ("hash",),
    ),
    "gauges as a list": (
        lambda c: c.rpush("runner:metrics:gauges:0-1", "x"),
        "runner:metrics:gauges:0-1",
        ("hash",),
    ),
    "last cycle as a hash": (
        lambda c: c.hset("runner:last_cycle", "a", "b"),
        "runner:last_cycle",
        ("string",),
    ),
    "spend as a string": (
        lambda c: c.set(f"runner:spend:{_today()}", "x"),
        "runner:spend:",
        ("hash", "none"),
    ),
}


@pytest.mark.scenario("08")
@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_state_key_is_reset_with_a_warning(case, measure, real_redis, redis_server, tmp_path: Path):
    """A state key holding garbage or the wrong type: the cycle still completes (exit 0, both
    signals published), the key is reset to its default type, and a warning names the key where
    the key itself was unusable (a lock or lease record that is not a record is simply taken over
    as `corrupt`; bad entries inside a good list or hash are skipped). No traceback."""
    plant, warned_key, types_after = GARBAGE[case]
    plant(real_redis)
    env = runner_env(redis_server.url, tmp_path, INSTANCE_ID="pod-g")
    proc = run(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env, tmp_path / "runs")
    warnings = [rec["msg"] for rec in log_lines(proc.stderr) if rec.get("level") == "warning"]
    key = {
        "spend as a string": f"runner:spend:{_today()}",
        "lock not a record": "signal:lock:ETH/USD",
        "lock as a hash": "signal:lock:ETH/USD",
        "lease not a record": "runner:lease:0-1",
    }.get(case, warned_key or "")
    measure.figures(exit_code=proc.code, warnings=len(warnings))
    if warnings:
        measure.note(f"warning: `{warnings[0]}`")
    assert not bad_lines(proc.stderr), proc.stderr
    assert proc.code == 0, (proc.stdout, proc.stderr)
    assert len(proc.json()["signals"]) == 2
    if warned_key:
        assert any(warned_key in w for w in warnings), warnings
    if key:
        assert real_redis.type(key) in types_after, real_redis.type(key)
    assert lock_keys(real_redis) == []


@pytest.mark.scenario("08")
def test_all_garbage_at_once_then_status(measure, real_redis, redis_server, tmp_path: Path):
    """Every garbage case above planted at once (where they do not overwrite each other): the
    cycle completes, and `runner status --json` and `status --check` answer without a traceback."""
    seen: set[str] = set()
    for name, (plant, _, _) in GARBAGE.items():
        key = name.split(" ")[0]
        if key in seen:
            continue
        seen.add(key)
        plant(real_redis)
    env = runner_env(redis_server.url, tmp_path, INSTANCE_ID="pod-g")
    proc = run(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env, tmp_path / "runs")
    status = run(["status", "--json"], env, tmp_path / "runs")
    warnings = [rec["msg"] for rec in log_lines(proc.stderr) if rec.get("level") == "warning"]
    measure.figures(planted=len(seen), cycle_exit=proc.code, warnings=len(warnings), status_exit=status.code)
    assert proc.code == 0, proc.stderr
    assert not bad_lines(proc.stderr + status.stderr)
    assert status.code == 0, status.stderr
    assert status.json()["breaker"]["state"] == "closed"


PUBLISH_NOT_ATOMIC = (
    "BUG: runner/publish.py PUBLISH_SCRIPT is not atomic when a write fails: Redis does not roll "
    "back a script's earlier writes when a later `redis.call` errors. With `signals:latest` of the "
    "wrong type, SET marker, XADD and PUBLISH succeed and HSET fails: the signal is in the stream "
    "while the run reports it `not published (error)` and keeps its lock. With `signals:raw` of the "
    "wrong type, the idempotency marker is set and XADD fails: the signal is lost for that minute "
    "(a re-run finds it `duplicate`). Fix: check `TYPE` of the stream and the hash at the top of "
    "the script and return an error for the whole batch before writing anything (or set the "
    "marker last)."
)


@pytest.mark.scenario("08")
@pytest.mark.parametrize(
    "key",
    [
        "signals:latest",
        "signals:raw",
    ],
)
def test_published_keys_of_the_wrong_type(key, measure, real_redis, redis_server, tmp_path: Path):
    """The stream or the latest-signal hash holds the wrong type (a shared Redis, a
    misconfigured name). This is not state the runner may reset, so the symbols fail, but
    publishing stays atomic: a signal is either fully published (stream entry, latest hash,
    idempotency marker) and reported, or not at all, with no traceback."""
    real_redis.set(key, "not yours")
    env = runner_env(redis_server.url, tmp_path)
    proc = run(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env, tmp_path / "runs")
    doc = proc.json()
    markers = sorted(real_redis.scan_iter(match="runner:published:*"))
    # Scores, advice and the report have markers of their own (score:<id>, advice:<id>, report:...).
    signal_markers = [
        m for m in markers if not m.split(":", 2)[2].startswith(("score:", "advice:", "report:"))
    ]
    in_stream = real_redis.xlen("signals:raw") if real_redis.type("signals:raw") == "stream" else 0
    measure.figures(
        exit_code=proc.code, reported=len(doc["signals"]), in_stream=in_stream, markers=len(signal_markers)
    )
    assert not bad_lines(proc.stderr), proc.stderr
    assert proc.code in (0, 1, 3)
    assert in_stream == len(doc["signals"]), "a signal reached the stream but was reported failed"
    assert len(signal_markers) == len(doc["signals"]), "an idempotency marker without a published signal"
    for stage, published in (("score", doc["scores"]), ("advice", doc["advice"])):
        stage_markers = [m for m in markers if m.split(":", 2)[2].startswith(f"{stage}:")]
        assert len(stage_markers) == len(published), f"a {stage} marker without a published {stage}"
