"""Notifications end to end: the real ``runner`` CLI against a real redis-server, sending through
Apprise (``json://127.0.0.1:PORT/...``) to a real HTTP receiver started by a fixture.

What an operator pointing RUNNER_NOTIFY__URLS at a webhook would check: one message per real
change and none while nothing changes, whatever the number of runs and shards; a receiver in
trouble costs the cycle nothing and gets the message on a later run, once; secrets never show.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from runner.shards import Shard
from tests.conftest import CliResult, free_port, run_cli, start_cli
from tests.integration.helpers import assert_one_error_line, env_for, finish, log_lines, wait_until
from tests.support.receiver import Receiver

TOKEN = "T0KEN-s3cr3t-9f8e7d"
PASSWORD = "pa55w0rd-4c3b2a"
TWO = "ETH/USD,BTC/USD"


def hook(receiver: Receiver) -> str:
    """The receiver's URL with a token in its path and a password, as real webhooks carry."""
    return receiver.url(f"hook/{TOKEN}", auth=f"ops:{PASSWORD}")


def env(redis_server: Any, tmp_path: Path, receiver: Receiver | None, **extra: str) -> dict[str, str]:
    if receiver is not None:
        extra.setdefault("RUNNER_NOTIFY__URLS", hook(receiver))
    return env_for(redis_server.url, tmp_path, **extra)


def clean(result: CliResult) -> CliResult:
    """The result, after checking that no secret is in what it printed."""
    for text in (result.stdout, result.stderr):
        assert TOKEN not in text
        assert PASSWORD not in text
        assert "Traceback" not in text
    return result


def cycle(e: dict[str, str], symbols: str = TWO) -> CliResult:
    return clean(run_cli(["cycle", "--symbols", symbols, "--json"], e))


def assert_nothing_secret_in_redis(real_redis: Any) -> None:
    for key in real_redis.keys("runner:notify:*"):
        raw = json.dumps(real_redis.hgetall(key) if real_redis.type(key) == "hash" else real_redis.get(key))
        assert TOKEN not in raw
        assert PASSWORD not in raw


# Each transition: one message, with what a person needs ------------------------------------------------


def test_the_breaker_opening_and_closing_is_told_once_each(real_redis, redis_server, tmp_path, receiver):
    breaker = {"RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__FAILURE_THRESHOLD": "2"}
    failing = env(redis_server, tmp_path, receiver, SCRIPTED_FAIL="*", **breaker)

    codes = [cycle(failing).code for _ in range(3)]  # opens, then skips twice
    # The recovery timeout passes (moved back in Redis rather than waited for): probes succeed.
    real_redis.hset("runner:breaker:llm_service", "opened_at", time.time() - 3600)
    closed = cycle(env(redis_server, tmp_path, receiver, **breaker))
    cycle(env(redis_server, tmp_path, receiver, **breaker))

    assert codes == [3, 0, 0]
    assert closed.code == 0
    assert receiver.events() == ["breaker_opened", "breaker_closed"]
    opened, shut = receiver.accepted
    assert opened.title == "autonomous-runner: circuit breaker opened"
    assert opened.body["type"] == "failure"
    assert "transient on ETH/USD, BTC/USD (503 service unavailable)" in opened.message
    assert "`runner breaker reset`" in opened.message
    assert shut.title == "autonomous-runner: circuit breaker closed"
    assert "probe calls to the analyzer succeeded" in shut.message
    assert opened.path == f"/hook/{TOKEN}"
    assert_nothing_secret_in_redis(real_redis)


def test_a_breaker_reset_by_hand_is_told_once(real_redis, redis_server, tmp_path, receiver):
    failing = env(
        redis_server,
        tmp_path,
        receiver,
        SCRIPTED_FAIL="*",
        RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__FAILURE_THRESHOLD="2",
    )
    cycle(failing)

    reset = clean(run_cli(["breaker", "reset"], failing))
    again = clean(run_cli(["breaker", "reset"], failing))
    cycle(env(redis_server, tmp_path, receiver))

    assert reset.code == 0
    assert reset.stdout.strip() == "circuit breaker closed"
    assert again.code == 0
    assert receiver.events() == ["breaker_opened", "breaker_closed"]
    assert "closed by hand" in receiver.accepted[1].message
    assert "Seen by: `runner breaker reset`" in receiver.accepted[1].message


def test_a_paused_symbol_and_its_resume_are_told_once_each(real_redis, redis_server, tmp_path, receiver):
    bad_eth = env(
        redis_server,
        tmp_path,
        receiver,
        SCRIPTED_FAIL="ETH/USD",
        SCRIPTED_FAIL_KIND="invalid",
        RUNNER_ADAPTIVE__PAUSE_AFTER_FAILURES="2",
    )
    codes = [cycle(bad_eth).code for _ in range(3)]  # paused at the second; the third skips it

    resumed = clean(run_cli(["resume", "ETH/USD"], bad_eth))
    cycle(env(redis_server, tmp_path, receiver))

    assert codes == [1, 1, 0]
    assert resumed.stdout.strip() == "resumed ETH/USD"
    assert receiver.events() == ["symbol_paused", "symbol_resumed"]
    paused, back = receiver.accepted
    assert paused.title == "autonomous-runner: ETH/USD paused"
    assert "after 2 failures of its own in a row" in paused.message
    assert "Why: invalid_output: confidence 7 is not in [0, 1]" in paused.message
    assert "To undo: `runner resume ETH/USD`" in paused.message
    assert back.title == "autonomous-runner: ETH/USD resumed"


def test_the_kill_switch_is_told_once_on_and_once_off(real_redis, redis_server, tmp_path, receiver):
    e = env(redis_server, tmp_path, receiver, INSTANCE_ID="ops-laptop")

    on = clean(run_cli(["kill-switch", "on", "--reason", "exchange maintenance"], e))
    on_again = clean(run_cli(["kill-switch", "on", "--reason", "still maintenance"], e))
    skipped = [cycle(e).code for _ in range(2)]
    off = clean(run_cli(["kill-switch", "off"], e))
    off_again = clean(run_cli(["kill-switch", "off"], e))
    cycle(e)

    assert (on.code, on_again.code, off.code, off_again.code) == (0, 0, 0, 0)
    assert "already on" in on_again.stdout
    assert off_again.stdout.strip() == "kill switch was already off"
    assert skipped == [0, 0]
    assert receiver.events() == ["kill_switch_on", "kill_switch_off"]
    first, second = receiver.accepted
    assert first.title == "autonomous-runner: kill switch ON"
    assert "Why: exchange maintenance (by ops-laptop)" in first.message
    assert "To undo: `runner kill-switch off`" in first.message
    assert "it had been on since" in second.message


def test_the_daily_budget_running_out_is_told_once(real_redis, redis_server, tmp_path, receiver):
    e = env(redis_server, tmp_path, receiver, SCRIPTED_COST="0.03", RUNNER_ANALYZER__DAILY_BUDGET_USD="0.05")

    spent = cycle(e)
    skipped = [cycle(e) for _ in range(2)]

    assert spent.code in (0, 1)
    assert [s.json()["skip_reason"] for s in skipped] == ["budget", "budget"]
    (message,) = receiver.accepted
    assert message.event == "budget_exhausted"
    assert "of $0.05 on" in message.message
    assert "RUNNER_ANALYZER__DAILY_BUDGET_USD" in message.message


def test_failing_cycles_in_a_row_and_the_recovery_are_told_once(real_redis, redis_server, tmp_path, receiver):
    failing = env(
        redis_server,
        tmp_path,
        receiver,
        SCRIPTED_FAIL="*",
        SCRIPTED_FAIL_KIND="permanent",
        RUNNER_NOTIFY__FAILING_CYCLES="2",
    )

    codes = [cycle(failing).code for _ in range(4)]
    healthy = env(redis_server, tmp_path, receiver, RUNNER_NOTIFY__FAILING_CYCLES="2")
    ok = [cycle(healthy).code for _ in range(2)]

    assert codes == [3, 3, 3, 3]
    assert ok == [0, 0]
    assert receiver.events() == ["cycles_failing", "recovered"]
    failing_msg, recovered_msg = receiver.accepted
    assert failing_msg.title == "autonomous-runner: cycles failing (shard 0/1)"
    assert "2 cycles of shard 0/1 failed in a row" in failing_msg.message
    assert "permanent on ETH/USD, BTC/USD (400 bad request)" in failing_msg.message
    assert "succeed again after 4 failed cycles in a row" in recovered_msg.message


# Many runs, one message ---------------------------------------------------------------------------------


def test_two_shards_running_at_once_that_see_one_opening_send_one_message(
    real_redis, redis_server, tmp_path, receiver
):
    symbols = "ETH/USD,BTC/USD,SOL/USD,DOGE/USD"
    shards = [Shard(0, 2), Shard(1, 2)]
    assert all(any(s.owns(sym) for sym in symbols.split(",")) for s in shards)
    gate, started = tmp_path / "gate", tmp_path / "started.log"
    e = env(
        redis_server,
        tmp_path,
        receiver,
        SCRIPTED_FAIL="*",
        SCRIPTED_GATE=str(gate),
        SCRIPTED_LOG=str(started),
        RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__FAILURE_THRESHOLD="1",
        # Held at the gate until both have started: time enough however slow the machine.
        RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS="60",
        RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_SECONDS="50",
        RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_MAX_SECONDS="50",
    )
    procs = [start_cli(["cycle", "--symbols", symbols, "--shard", s.label, "--json"], e) for s in shards]

    def both_started() -> bool:
        seen = started.read_text().split() if started.exists() else []
        return all(any(s.owns(sym) for sym in seen) for s in shards)

    wait_until(both_started, timeout=60)  # each read a closed breaker before either records
    gate.touch()
    results = [clean(finish(p, timeout=90)) for p in procs]

    assert [r.code for r in results] == [3, 3]
    assert receiver.events() == ["breaker_opened"]


def test_a_kill_switch_set_while_a_cycle_runs_is_told_once(real_redis, redis_server, tmp_path, receiver):
    gate, started = tmp_path / "gate", tmp_path / "started.log"
    e = env(
        redis_server,
        tmp_path,
        receiver,
        SCRIPTED_GATE=str(gate),
        SCRIPTED_LOG=str(started),
        RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS="60",
        RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_SECONDS="50",
        RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_MAX_SECONDS="50",
    )
    proc = start_cli(["cycle", "--symbols", TWO, "--json"], e)
    wait_until(started.exists, timeout=60)  # it read the switch off

    on = clean(run_cli(["kill-switch", "on", "--reason", "halt now"], e))
    gate.touch()
    ran = clean(finish(proc, timeout=90))  # and ends with it on: the same change

    assert on.code == 0
    assert ran.code == 0
    assert receiver.events() == ["kill_switch_on"]


# A receiver in trouble costs the cycle nothing ---------------------------------------------------------


@pytest.mark.parametrize("trouble", ["down", "slow", "error"])
def test_a_receiver_in_trouble_costs_the_cycle_nothing_and_gets_the_message_later_once(
    real_redis, redis_server, tmp_path, receiver, trouble
):
    breaker = {
        "RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__FAILURE_THRESHOLD": "2",
        "RUNNER_NOTIFY__TIMEOUT_SECONDS": "1",
    }
    baseline = cycle(env(redis_server, tmp_path, None, SCRIPTED_FAIL="*", **breaker))
    real_redis.flushall()
    failing = env(redis_server, tmp_path, receiver, SCRIPTED_FAIL="*", **breaker)
    if trouble == "down":
        receiver.down()
    elif trouble == "slow":
        receiver.slow()  # holds the request until the test opens the gate: past the 1 s timeout
    else:
        receiver.mode = "error"

    opened = cycle(failing)  # ends by itself, the gate still closed
    receiver.gate.set()
    receiver.up()
    later = cycle(failing)
    idle = cycle(failing)

    assert opened.code == baseline.code == 3
    assert opened.json()["status"] == baseline.json()["status"] == "failed"
    logged = log_lines(opened.stderr)
    warnings = [r["msg"] for r in logged if r["msg"].startswith("notification ")]
    assert len(warnings) == 1
    assert not [r for r in logged if r["logger"].startswith("apprise")]
    assert warnings[0].startswith(
        "notification breaker_opened not delivered to notify.urls[0] (json://127.0.0.1:"
    )
    assert "the next run retries it (attempt 1 of 5)" in warnings[0]
    assert later.code == idle.code == 0
    assert not [r for r in log_lines(later.stderr) if r["msg"].startswith("notification ")]
    assert receiver.events() == ["breaker_opened"]
    totals = real_redis.hgetall("runner:metrics:counters:0-1")
    assert totals['notifications_total{event="breaker_opened",result="failed"}'] == "1"
    assert totals['notifications_total{event="breaker_opened",result="sent"}'] == "1"
    assert_nothing_secret_in_redis(real_redis)


# runner notify test ------------------------------------------------------------------------------------


def test_notify_test_exits_0_when_every_url_accepted(real_redis, redis_server, tmp_path, receiver):
    second = receiver.url("second")
    e = env(redis_server, tmp_path, None, RUNNER_NOTIFY__URLS=f"{hook(receiver)},{second}")

    res = clean(run_cli(["notify", "test"], e))

    assert res.code == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"notify.urls[0] (json://127.0.0.1:{receiver.port}/***): accepted",
        f"notify.urls[1] (json://127.0.0.1:{receiver.port}/***): accepted",
    ]
    assert sorted(r.path for r in receiver.accepted) == [f"/hook/{TOKEN}", "/second"]
    assert {r.title for r in receiver.accepted} == {"autonomous-runner: test notification"}


def test_notify_test_exits_3_with_one_line_per_url_that_failed(real_redis, redis_server, tmp_path, receiver):
    nobody = f"json://ops:{PASSWORD}@127.0.0.1:{free_port()}/hook/{TOKEN}"
    e = env(redis_server, tmp_path, None, RUNNER_NOTIFY__URLS=f"{receiver.url('ok')},{nobody}")

    res = clean(run_cli(["notify", "test"], e))

    assert res.code == 3
    assert res.stdout.splitlines() == [f"notify.urls[0] (json://127.0.0.1:{receiver.port}/***): accepted"]
    (line,) = res.stderr.splitlines()
    assert line.startswith("runner: error: notify.urls[1] (json://127.0.0.1:")
    assert [r.path for r in receiver.accepted] == ["/ok"]


def test_notify_test_without_urls_is_a_usage_error(tmp_path):
    res = run_cli(["notify", "test"], env_for(None, tmp_path))

    line = assert_one_error_line(res, 2)
    assert "notify.urls" in line


# Bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("urls", "timeout", "field"),
    [
        (f"json://127.0.0.1:9/ok,slak://{TOKEN}/{PASSWORD}", "3", "autonomous_runner.notify.urls[1]"),
        (f"json://ops:{PASSWORD}@/{TOKEN}", "3", "autonomous_runner.notify.urls[0]"),
        ("json://127.0.0.1:9/ok", "-1", "autonomous_runner.notify.timeout_seconds"),
    ],
)
@pytest.mark.parametrize("command", [["cycle"], ["config"], ["notify", "test"]])
def test_bad_notify_settings_exit_2_with_one_line_without_the_secret(
    redis_server, tmp_path, urls, timeout, field, command
):
    e = env_for(redis_server.url, tmp_path, RUNNER_NOTIFY__URLS=urls, RUNNER_NOTIFY__TIMEOUT_SECONDS=timeout)

    res = clean(run_cli(command, e))

    line = assert_one_error_line(res, 2)
    assert line.startswith(f"runner: error: {field}: ")


def test_runner_config_shows_the_urls_masked(redis_server, tmp_path, receiver):
    res = clean(run_cli(["config", "--json"], env(redis_server, tmp_path, receiver)))

    assert res.code == 0
    assert json.loads(res.stdout)["autonomous_runner"]["notify"]["urls"] == [
        f"json://127.0.0.1:{receiver.port}/***"
    ]
