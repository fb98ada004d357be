"""A real cycle end to end: the ``runner`` CLI as a subprocess against a real redis-server.

Each test is a scenario an operator would check by hand: what the job prints, the exit code a
CronJob sees, and what is left in Redis afterwards.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import embedded_client, embedded_running, free_port, run_cli, start_cli
from tests.integration.helpers import (
    assert_one_error_line,
    env_for,
    finish,
    lock_keys,
    log_lines,
    result_of,
    stream_signals,
    wait_until,
)
from tests.support.terminal import on_a_terminal

SIGNAL_FIELDS = {
    "id", "symbol", "action", "confidence", "reasoning", "price", "generated_at", "cycle_id",
    "instance_id", "analyzer", "model", "latency_ms", "fencing_token", "schema_version",
}  # fmt: skip
RESULT_FIELDS = {"symbol", "status", "reason", "attempts", "duration_ms"}


# --- a full cycle ---------------------------------------------------------------------------


def test_twenty_signals_from_the_builtin_analyzer_and_status_shows_them(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, scripted=False)

    first = run_cli(["cycle", "--json"], env)

    assert first.code == 0, first.stderr
    doc = first.json()
    assert doc["status"] == "completed"
    assert len(doc["signals"]) == 20
    assert {s["analyzer"] for s in doc["signals"]} == {"builtin"}
    published = stream_signals(real_redis)
    assert len(published) == 20
    assert len({s["id"] for s in published}) == 20
    assert {s["id"] for s in published} == {s["id"] for s in doc["signals"]}
    assert real_redis.hlen("signals:latest") == 20
    assert lock_keys(real_redis) == [], "every lock is released after the cycle"

    status = run_cli(["status", "--json"], env)
    assert status.code == 0, status.stderr
    st = status.json()
    assert st["last_cycle"]["cycle_id"] == doc["cycle_id"]
    assert st["last_cycle"]["status"] == "completed"
    assert len(st["last_cycle"]["signals"]) == 20
    assert len(st["latest"]) == 20
    assert st["latest"]["ETH/USD"]["id"] == next(s["id"] for s in doc["signals"] if s["symbol"] == "ETH/USD")
    assert st["stream_length"] == 20
    assert st["breaker"]["state"] == "closed"
    assert st["locks"] == []


def test_a_second_cycle_in_the_same_minute_publishes_nothing_twice(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, scripted=False)
    assert run_cli(["cycle", "--json"], env).code == 0
    assert real_redis.xlen("signals:raw") == 20

    second = run_cli(["cycle", "--json"], env)

    assert second.code == 0, second.stderr
    assert second.json()["signals"] == []
    assert real_redis.xlen("signals:raw") == 20
    assert real_redis.llen("runner:history") == 2
    st = run_cli(["status", "--json"], env).json()
    assert st["last_cycle"]["cycle_id"] == second.json()["cycle_id"]
    assert len(st["history"]) == 2


def test_dry_run_prints_one_signal_and_writes_nothing(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, scripted=False)
    # Some prior state that must stay exactly as it is.
    assert run_cli(["cycle", "--symbols", "BTC/USD", "--json"], env).code == 0
    stream_before = real_redis.xrange("signals:raw")
    history_before = real_redis.lrange("runner:history", 0, -1)
    latest_before = real_redis.hgetall("signals:latest")
    keys_before = set(real_redis.keys("*"))

    dry = run_cli(["cycle", "--symbols", "ETH/USD", "--no-publish", "--json"], env)

    assert dry.code == 0, dry.stderr
    doc = dry.json()
    assert len(doc["signals"]) == 1
    assert doc["signals"][0]["symbol"] == "ETH/USD"
    assert [r["symbol"] for r in doc["results"]] == ["ETH/USD"]
    assert real_redis.xrange("signals:raw") == stream_before
    assert real_redis.lrange("runner:history", 0, -1) == history_before
    assert real_redis.hgetall("signals:latest") == latest_before
    assert lock_keys(real_redis) == []
    assert list(real_redis.scan_iter(match="runner:heartbeat:*")) == []
    assert list(real_redis.scan_iter(match="runner:lease:*")) == []
    assert list(real_redis.scan_iter(match="runner:published:ETH*")) == []
    assert set(real_redis.keys("*")) == keys_before


def test_dry_run_on_an_empty_redis_leaves_it_empty(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, SCRIPTED_FAIL="ETH/USD", SCRIPTED_FAIL_KIND="invalid")

    for _ in range(3):  # a failing dry run can neither pause the symbol nor trip the breaker
        dry = run_cli(["cycle", "--symbols", "ETH/USD", "--no-publish", "--json"], env)
        assert dry.code == 3, dry.stderr

    assert real_redis.dbsize() == 0, real_redis.keys("*")


# --- exit codes -----------------------------------------------------------------------------


def test_exit_0_when_every_symbol_completes(real_redis, redis_server, tmp_path):
    res = run_cli(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env_for(redis_server.url, tmp_path))
    assert res.code == 0, res.stderr
    assert res.json()["status"] == "completed"
    assert res.json()["exit_code"] == 0


def test_exit_1_when_one_symbol_fails_and_another_succeeds(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, SCRIPTED_FAIL="BTC/USD")

    res = run_cli(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env)

    assert res.code == 1, res.stderr
    doc = res.json()
    assert doc["status"] == "partial"
    assert doc["exit_code"] == 1
    assert result_of(doc, "ETH/USD")["status"] == "ok"
    assert result_of(doc, "BTC/USD")["status"] == "failed"
    assert [s["symbol"] for s in stream_signals(real_redis)] == ["ETH/USD"]
    assert lock_keys(real_redis) == []


def test_exit_3_when_every_symbol_fails(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, SCRIPTED_FAIL="*")

    res = run_cli(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env)

    assert res.code == 3, res.stderr
    assert res.json()["status"] == "failed"
    assert real_redis.xlen("signals:raw") == 0
    assert lock_keys(real_redis) == []
    assert json.loads(real_redis.lindex("runner:history", 0))["status"] == "failed"


def test_exit_3_with_one_line_when_redis_is_down(tmp_path):
    down = f"redis://127.0.0.1:{free_port()}/0"

    res = run_cli(["cycle", "--json"], env_for(down, tmp_path), timeout=15)

    line = assert_one_error_line(res, 3)
    assert "redis" in line.lower()
    assert json.loads(res.stdout)["exit_code"] == 3, "--json still prints a JSON object"


def test_status_exits_3_with_one_line_when_redis_is_down(tmp_path):
    down = f"redis://127.0.0.1:{free_port()}/0"

    res = run_cli(["status", "--json"], env_for(down, tmp_path), timeout=15)

    assert_one_error_line(res, 3)


@pytest.mark.parametrize(
    ("name", "args", "env_extra", "needle"),
    [
        ("bad yaml", ["--config", "{bad_yaml}"], {}, "bad.yaml"),
        ("unknown key in the file", ["--config", "{unknown_yaml}"], {}, "no_such_setting"),
        ("unknown nested env key", [], {"RUNNER_TIMEOUTS__NO_SUCH_SETTING": "1"}, "no_such_setting"),
        ("negative timeout", [], {"RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_SECONDS": "-1"}, "symbol_timeout_seconds"),
        ("malformed symbol", ["--symbols", "ETH/USD,eth-usd"], {}, "eth-usd"),
        ("bad REDIS_URL", [], {"REDIS_URL": "http://x"}, "redis.url"),
        ("bad shard", ["--shard", "3/2"], {}, "--shard"),
        ("shard not a fraction", ["--shard", "abc"], {}, "--shard"),
        ("unknown flag", ["--frobnicate"], {}, "--frobnicate"),
    ],
)
def test_exit_2_with_one_error_line_for_bad_configuration(
    real_redis, redis_server, tmp_path, name, args, env_extra, needle
):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("autonomous_runner:\n  symbols: [ETH/USD\n", encoding="utf-8")
    unknown_yaml = tmp_path / "unknown.yaml"
    unknown_yaml.write_text("autonomous_runner:\n  no_such_setting: 1\n", encoding="utf-8")
    args = [a.format(bad_yaml=bad_yaml, unknown_yaml=unknown_yaml) for a in args]
    env = env_for(redis_server.url, tmp_path, **env_extra)

    res = run_cli(["cycle", "--json", *args], env, timeout=15)

    line = assert_one_error_line(res, 2)
    assert needle in line, line
    assert real_redis.dbsize() == 0, "a configuration error must not touch Redis"


def test_exit_2_in_kubernetes_without_redis_url(tmp_path):
    env = env_for(None, tmp_path, KUBERNETES_SERVICE_HOST="10.0.0.1")

    res = run_cli(["cycle", "--json"], env, timeout=15)

    line = assert_one_error_line(res, 2)
    assert "REDIS_URL" in line
    assert not (tmp_path / "redis.sock").exists(), "no embedded Redis inside Kubernetes"


# --- machine-readable output and logs ---------------------------------------------------------


def test_cycle_json_has_the_documented_shape(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, INSTANCE_ID="itest-7", SCRIPTED_FAIL="BTC/USD")

    res = run_cli(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env)

    assert res.code == 1, res.stderr
    doc = res.json()
    for key in (
        "cycle_id",
        "instance_id",
        "status",
        "skip_reason",
        "exit_code",
        "duration_ms",
        "signals",
        "results",
    ):
        assert key in doc, key
    assert doc["instance_id"] == "itest-7"
    assert doc["status"] == "partial"
    assert doc["skip_reason"] is None
    assert doc["exit_code"] == 1
    assert isinstance(doc["duration_ms"], int)
    assert doc["duration_ms"] >= 0
    assert len(doc["signals"]) == 1
    sig = doc["signals"][0]
    assert set(sig) >= SIGNAL_FIELDS
    assert sig["id"] == f"ETH/USD:{doc['scheduled_minute']}"
    assert sig["action"] in ("BUY", "SELL", "HOLD")
    assert 0 <= sig["confidence"] <= 1
    assert sig["cycle_id"] == doc["cycle_id"]
    assert sig["instance_id"] == "itest-7"
    assert sig["schema_version"] == 1
    assert sig["fencing_token"] > 0
    assert [r["symbol"] for r in doc["results"]] == ["ETH/USD", "BTC/USD"]
    for r in doc["results"]:
        assert set(r) >= RESULT_FIELDS
    eth, btc = doc["results"]
    assert (eth["status"], eth["reason"], eth["attempts"]) == ("ok", None, 1)
    assert btc["status"] == "failed"
    assert "transient" in (btc["reason"] or "")
    assert btc["attempts"] == 2  # the default max_attempts, both spent on a transient error
    # Published in the same shape: the stream entry's document is the printed signal.
    assert stream_signals(real_redis) == [sig]
    assert json.loads(real_redis.hget("signals:latest", "ETH/USD")) == sig


def test_skipped_cycle_json_carries_the_skip_reason(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path)
    assert run_cli(["kill-switch", "on", "--reason", "json shape"], env).code == 0

    doc = run_cli(["cycle", "--json"], env).json()

    assert doc["status"] == "skipped"
    assert doc["skip_reason"] == "kill_switch"
    assert doc["exit_code"] == 0
    assert doc["signals"] == []


def test_logs_are_json_lines_with_cycle_and_instance_ids(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, INSTANCE_ID="itest-logs")
    # A corrupt key and a kill switch make the cycle log a warning and an info line.
    real_redis.set("runner:paused", "garbage")
    assert run_cli(["kill-switch", "on", "--reason", "logs"], env).code == 0

    res = run_cli(["cycle", "--json"], env)

    assert res.code == 0, res.stderr
    cycle_id = res.json()["cycle_id"]
    records = log_lines(res.stderr)
    assert records, f"expected JSON log lines on stderr, got:\n{res.stderr}"
    non_json = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert non_json == [], non_json
    for rec in records:
        assert rec["cycle_id"] == cycle_id, rec
        assert rec["instance_id"] == "itest-logs", rec
        assert {"ts", "level", "msg"} <= set(rec)
    assert any("kill switch" in rec["msg"] for rec in records)
    assert any(rec["level"] == "warning" and "runner:paused" in rec["msg"] for rec in records)


# --- config and version -----------------------------------------------------------------------


def test_config_masks_the_api_key_and_the_redis_password(redis_server, tmp_path):
    env = env_for(
        f"redis://:hunter2-secret@127.0.0.1:{redis_server.port}/0",
        tmp_path,
        OPENROUTER_API_KEY="sk-or-v1-very-secret-key",
    )

    for args in (["config"], ["config", "--json"]):
        res = run_cli(args, env)
        assert res.code == 0, res.stderr
        assert "sk-or-v1-very-secret-key" not in res.stdout + res.stderr
        assert "hunter2-secret" not in res.stdout + res.stderr
        assert "***" in res.stdout

    doc = run_cli(["config", "--json"], env).json()["autonomous_runner"]
    assert doc["analyzer"]["api_key"] == "***"
    assert doc["redis"]["url"] == f"redis://:***@127.0.0.1:{redis_server.port}/0"
    assert doc["timeouts"]["total_timeout_seconds"] == 6.0  # the environment is applied


def test_config_file_then_env_then_flags(redis_server, tmp_path):
    cfg = tmp_path / "runner.yaml"
    cfg.write_text(
        "autonomous_runner:\n"
        "  symbols: [ETH/USD]\n"
        "  parallel:\n    max_concurrent: 4\n    min_concurrent: 2\n"
        "  retry:\n    max_attempts: 5\n",
        encoding="utf-8",
    )
    env = env_for(redis_server.url, tmp_path, RUNNER_RETRY__MAX_ATTEMPTS="3")

    doc = run_cli(["config", "--json", "--config", str(cfg)], env).json()["autonomous_runner"]

    assert doc["symbols"] == ["ETH/USD"]
    assert doc["parallel"]["max_concurrent"] == 4
    assert doc["retry"]["max_attempts"] == 3  # environment beats the file


def test_version(tmp_path):
    from runner import __version__

    res = run_cli(["--version"], env_for(None, tmp_path))
    assert res.code == 0
    assert __version__ in res.stdout


# --- the embedded default -----------------------------------------------------------------------


def test_embedded_redis_keeps_state_between_runs(embedded_dir):
    env = env_for(None, embedded_dir)
    symbols = ["--symbols", "ETH/USD,BTC/USD"]

    first = run_cli(["cycle", "--json", *symbols], env)
    assert first.code == 0, first.stderr
    assert "embedded Redis" in first.stderr
    assert len(first.json()["signals"]) == 2
    assert not embedded_running(embedded_dir), "the last run out stops the embedded server"
    assert (embedded_dir / "runner.rdb").exists()

    second = run_cli(["cycle", "--json", *symbols], env)
    assert second.code == 0, second.stderr
    assert second.json()["signals"] == [], "nothing is published twice in one scheduled minute"

    status = run_cli(["status", "--json"], env)
    assert status.code == 0, status.stderr
    st = status.json()
    assert [h["cycle_id"] for h in st["history"]] == [second.json()["cycle_id"], first.json()["cycle_id"]]
    assert st["stream_length"] == 2
    assert set(st["latest"]) == {"ETH/USD", "BTC/USD"}
    assert (embedded_dir / "runner.rdb").exists()
    assert not embedded_running(embedded_dir)


def test_two_concurrent_embedded_runs_share_one_server(embedded_dir):
    env = env_for(None, embedded_dir, SCRIPTED_DELAY="0.3")
    args = ["cycle", "--json", "--symbols", "ETH/USD,BTC/USD,SOL/USD"]

    procs = [start_cli(args, env) for _ in range(2)]
    results = [finish(p, 30) for p in procs]

    for res in results:
        assert res.code == 0, res.stderr
        assert "Traceback" not in res.stderr
    docs = [r.json() for r in results]
    statuses = sorted(d["status"] for d in docs)
    # One run does the work; the other is held off by the lease (or finds the ids published).
    assert "completed" in statuses, docs
    st = run_cli(["status", "--json"], env).json()
    assert len(st["history"]) == 2
    # Three symbols, three entries, and each symbol's latest signal present: no id twice.
    assert st["stream_length"] == 3
    assert set(st["latest"]) == {"ETH/USD", "BTC/USD", "SOL/USD"}
    published = [s for d in docs for s in d["signals"]]
    assert sorted(s["id"] for s in published) == sorted({s["id"] for s in published})
    assert len(published) == 3
    assert not embedded_running(embedded_dir)


def test_embedded_status_alone_starts_and_stops_the_server(embedded_dir):
    env = env_for(None, embedded_dir)

    res = run_cli(["status", "--json"], env)

    assert res.code == 0, res.stderr
    assert res.json()["last_cycle"] is None
    assert not embedded_running(embedded_dir)


def _grow_embedded_state(state_dir: Path, keys: int) -> None:
    """Start the embedded server as a run does, fill it with ``keys`` keys, save and stop it."""
    from runner.store.embedded import server_binary

    subprocess.run([server_binary(), str(state_dir / "redis.conf")], check=True, timeout=10)
    wait_until(lambda: embedded_running(state_dir), timeout=10)
    client = embedded_client(state_dir)
    client.execute_command("DEBUG", "POPULATE", keys, "filler")
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(save=True)
    wait_until(lambda: not embedded_running(state_dir), timeout=10)


def test_a_run_waits_while_the_embedded_server_loads_a_large_state_file(embedded_dir):
    """A large runner.rdb takes the server a moment to load, and it answers every command with
    LOADING meanwhile: the run that starts it waits for it, rather than failing."""
    env = env_for(None, embedded_dir)
    assert run_cli(["cycle", "--json", "--symbols", "ETH/USD"], env).code == 0
    _grow_embedded_state(embedded_dir, 500_000)

    res = run_cli(["cycle", "--json", "--symbols", "BTC/USD"], env)

    assert res.code == 0, res.stderr
    assert [s["symbol"] for s in res.json()["signals"]] == ["BTC/USD"]
    assert not embedded_running(embedded_dir)


def test_python_dash_m_and_console_script_agree(tmp_path):
    """`python -m runner` is the same program as the `runner` console script."""
    script = Path(sys.executable).parent / "runner"
    if not script.exists():
        pytest.skip("the console script is not installed in this environment")
    env = env_for(None, tmp_path)
    out = subprocess.run(
        [str(script), "--version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0
    assert out.stdout == run_cli(["--version"], env).stdout


# --- more of what an operator sees ------------------------------------------------------------


def test_max_symbols_caps_the_configured_list(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, scripted=False, MAX_SYMBOLS="3")

    res = run_cli(["cycle", "--json"], env)

    assert res.code == 0, res.stderr
    assert [r["symbol"] for r in res.json()["results"]] == ["ETH/USD", "BTC/USD", "SOL/USD"]
    assert real_redis.xlen("signals:raw") == 3


def test_redis_with_a_password(tmp_path):
    from tests.conftest import start_redis

    server = start_redis(tmp_path, None, "--requirepass", "s3cret-pass")
    try:
        good = env_for(f"redis://:s3cret-pass@127.0.0.1:{server.port}/0", tmp_path)
        ok = run_cli(["cycle", "--symbols", "ETH/USD", "--json"], good)
        assert ok.code == 0, ok.stderr
        assert "s3cret-pass" not in ok.stdout + ok.stderr

        bad = env_for(f"redis://:wrong-pass-42@127.0.0.1:{server.port}/0", tmp_path)
        res = run_cli(["cycle", "--symbols", "ETH/USD", "--json"], bad, timeout=15)
        assert_one_error_line(res, 3)
        assert "wrong-pass-42" not in res.stdout + res.stderr
        assert json.loads(res.stdout)["exit_code"] == 3
    finally:
        server.stop()


def test_a_bad_redis_port_is_named_in_the_error(tmp_path):
    """Regression: redact_url used to drop an unparsable port, hiding the bad value."""

    env = env_for("redis://:pw-123456@127.0.0.1:99999/0", tmp_path)

    res = run_cli(["cycle", "--json"], env, timeout=15)

    line = assert_one_error_line(res, 2)
    assert "pw-123456" not in line
    assert "99999" in line, line


def test_status_last_cycle_has_the_shape_of_the_cycle_output(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path)
    cycle = run_cli(["cycle", "--symbols", "ETH/USD", "--json"], env).json()

    last = run_cli(["status", "--json"], env).json()["last_cycle"]

    for key in ("cycle_id", "instance_id", "status", "skip_reason", "exit_code", "duration_ms"):
        assert last[key] == cycle[key], key
    assert [r["symbol"] for r in last["results"]] == [r["symbol"] for r in cycle["results"]]
    assert isinstance(last["signals"], list)
    assert [s["id"] for s in last["signals"]] == [s["id"] for s in cycle["signals"]]


def test_watch_follows_the_stream(real_redis, redis_server, tmp_path):
    import threading

    env = env_for(redis_server.url, tmp_path)
    assert run_cli(["cycle", "--symbols", "ETH/USD", "--json"], env).code == 0
    watcher = start_cli(["watch", "--json", "--last", "5"], env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watcher.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(lines) >= 4, timeout=10)  # the backlog: signal, score, advice, report
        assert run_cli(["cycle", "--symbols", "BTC/USD,SOL/USD", "--json"], env).code == 0
        # followed live: two signals, scores and advice (the minute's report was written already)
        wait_until(lambda: len(lines) >= 4 + 6, timeout=10)
    finally:
        watcher.send_signal(signal.SIGINT)
        try:
            watcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()
        reader.join(5)
        err = watcher.stderr.read()
        watcher.stdout.close()
        watcher.stderr.close()
    assert watcher.returncode == 0, err
    docs = [json.loads(line) for line in lines]
    signals = [d["symbol"] for d in docs if "stage" not in d]  # a signal keeps its shape: no stage field
    assert signals[0] == "ETH/USD"
    assert sorted(signals[1:]) == ["BTC/USD", "SOL/USD"]
    assert sorted(d["stage"] for d in docs if "stage" in d) == ["advise"] * 3 + ["report"] + ["score"] * 3
    assert [d["symbol"] for d in docs[:3]] == ["ETH/USD"] * 3, "the backlog comes in the order it was written"


def test_watch_can_follow_one_stage(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path)
    assert run_cli(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env).code == 0
    watcher = start_cli(["watch", "--json", "--last", "5", "--stage", "score"], env)
    try:
        first = json.loads(watcher.stdout.readline())
        second = json.loads(watcher.stdout.readline())
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=10)
        watcher.stdout.close()
        watcher.stderr.close()
    assert {first["stage"], second["stage"]} == {"score"}
    assert {first["symbol"], second["symbol"]} == {"ETH/USD", "BTC/USD"}


def test_on_a_terminal_the_cycle_ends_with_a_table(real_redis, redis_server, tmp_path):
    env = env_for(redis_server.url, tmp_path, SCRIPTED_FAIL="BTC/USD")

    code, out = on_a_terminal(["cycle", "--symbols", "ETH/USD,BTC/USD"], env)

    assert code == 1, out
    assert "Traceback" not in out
    assert "ETH/USD" in out
    assert "BTC/USD" in out
    assert "PARTIAL" in out.upper()
    assert '"cycle_id"' not in out, "nothing machine-readable on a terminal"
    status_code, status_out = on_a_terminal(["status"], env)
    assert status_code == 0, status_out
    assert "Traceback" not in status_out


def test_an_unusable_state_directory_is_one_line_and_exit_2(tmp_path):
    """A read-only root filesystem without a writable /tmp, say (tests/images runs that too)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = env_for(None, blocker / "state")

    result = run_cli(["cycle", "--json", "--symbols", "ETH/USD"], env)

    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "RUNNER_STATE_DIR" in line]
    assert str(blocker / "state") in line
    assert "REDIS_URL" in line
