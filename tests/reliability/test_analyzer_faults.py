"""Scenarios 9-13: the `openai` backend against a stub LLM that fails in every way it can."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import lock_keys, result_of, stream_signals, wait_until
from tests.reliability.support import (
    ResettingProxy,
    WhitespaceServer,
    bad_lines,
    run,
    serving,
    stub_env,
)
from tests.support.stub_llm import Mode, StubLLM, symbol_in

FIVE = "ETH/USD,BTC/USD,SOL/USD,DOGE/USD,AVAX/USD"


def per_symbol(stub: StubLLM) -> Counter[str]:
    """How many chat requests the stub saw for each symbol."""
    return Counter(symbol_in(r.messages) or "?" for r in stub.chat_requests())


def one_at_a_time(**extra: str) -> dict[str, str]:
    return {"RUNNER_PARALLEL__MAX_CONCURRENT": "1", "RUNNER_PARALLEL__MIN_CONCURRENT": "1", **extra}


# --- 9. 5xx and resets: transient, retried, counted by the breaker ---------------------------------


@pytest.mark.scenario("09")
@pytest.mark.parametrize("fault", ["500", "502", "503", "reset"])
def test_transient_errors_are_retried_within_the_deadline(
    fault, measure, real_redis, redis_server, stub: StubLLM, tmp_path: Path
):
    """The analyzer fails twice (HTTP 500, 502, 503, or the connection is reset), then answers:
    the symbol is retried (max_attempts 3, backoff with jitter) and succeeds on the third attempt,
    well within the deadline, and its signal is published once."""
    with serving(ResettingProxy(stub.port, resets=2 if fault == "reset" else 0)) as proxy:
        if fault != "reset":
            stub.queue.extend([Mode("http_error", status=int(fault))] * 2)
        env = stub_env(redis_server.url, tmp_path, proxy.url, RUNNER_RETRY__MAX_ATTEMPTS="3")
        proc = run(["cycle", "--symbols", "ETH/USD", "--json"], env, tmp_path / "runs")
    doc = proc.json()
    eth = result_of(doc, "ETH/USD")
    measure.figures(
        fault=fault,
        exit_code=proc.code,
        attempts=eth["attempts"],
        symbol_ms=eth["duration_ms"],
        run_s=round(proc.elapsed, 3),
        stub_requests=len(stub.chat_requests()),
        connections_reset=proxy.reset_count,
    )
    assert not bad_lines(proc.stderr), proc.stderr
    assert proc.code == 0, proc.stdout
    assert (eth["status"], eth["attempts"]) == ("ok", 3)
    assert len(stream_signals(real_redis)) == 1
    assert eth["duration_ms"] < 6000


@pytest.mark.scenario("09")
@pytest.mark.parametrize("fault", ["500", "503", "reset"])
def test_outage_opens_the_breaker(fault, measure, real_redis, redis_server, stub: StubLLM, tmp_path: Path):
    """Every call fails (HTTP 500, 503 or a reset). One symbol at a time, two attempts each:
    after `failure_threshold` (3) failed symbols the breaker opens mid-cycle and no further symbol
    starts (`not_started`, `breaker_open`); the run exits 3, the breaker is saved `open` with 3
    failures, and the next run is skipped (exit 0) without a single call to the analyzer."""
    with serving(ResettingProxy(stub.port, resets=10**6 if fault == "reset" else 0)) as proxy:
        if fault != "reset":
            stub.mode = Mode("http_error", status=int(fault))
        env = stub_env(
            redis_server.url,
            tmp_path,
            proxy.url,
            **one_at_a_time(
                RUNNER_RETRY__MAX_ATTEMPTS="2",
                RUNNER_CIRCUIT_BREAKER__LLM_SERVICE__FAILURE_THRESHOLD="3",
            ),
        )
        first = run(["cycle", "--symbols", FIVE, "--json"], env, tmp_path / "runs")
        calls = len(stub.chat_requests()) + proxy.reset_count
        second = run(["cycle", "--symbols", FIVE, "--json"], env, tmp_path / "runs")
        calls_after = len(stub.chat_requests()) + proxy.reset_count
    doc = first.json()
    statuses = Counter(f"{r['status']}:{(r['reason'] or '').split(':')[0]}" for r in doc["results"])
    breaker = real_redis.hgetall("runner:breaker:llm_service")
    measure.figures(
        fault=fault,
        exit_code=first.code,
        results=dict(statuses),
        analyzer_calls=calls,
        breaker=f"{breaker.get('state')} after {breaker.get('failure_count')} failures",
        next_run=f"exit {second.code}, {second.json()['skip_reason']}, {calls_after - calls} calls",
        run_s=round(first.elapsed, 3),
    )
    assert not bad_lines(first.stderr + second.stderr)
    assert first.code == 3, first.stdout
    assert statuses["not_started:breaker_open"] == 2, statuses
    assert calls == 3 * 2, "three symbols, two attempts each, then the breaker is open"
    assert breaker["state"] == "open", breaker
    assert breaker["failure_count"] == "3", breaker
    assert second.code == 0
    assert second.json()["skip_reason"] == "breaker_open"
    assert calls_after == calls
    assert real_redis.hlen("runner:paused") == 0, "an outage pauses no symbol"


@pytest.mark.scenario("09")
def test_retry_after_on_503_is_honoured_but_never_past_the_deadline(
    measure, real_redis, redis_server, stub: StubLLM, tmp_path: Path
):
    """A 503 with `Retry-After: 1` on every call, max_attempts 10, a 3 s cycle: the runner waits
    the second between attempts as asked, stops retrying when the next wait plus an attempt would
    pass the deadline, reports the symbol failed (transient), and ends before the deadline."""
    stub.mode = Mode("http_error", status=503, retry_after=1)
    env = stub_env(
        redis_server.url,
        tmp_path,
        stub.url,
        RUNNER_RETRY__MAX_ATTEMPTS="10",
        RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS="3",
        RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_SECONDS="1",
    )
    proc = run(["cycle", "--symbols", "ETH/USD", "--json"], env, tmp_path / "runs")
    eth = result_of(proc.json(), "ETH/USD")
    measure.figures(
        attempts=eth["attempts"],
        symbol_ms=eth["duration_ms"],
        run_s=round(proc.elapsed, 3),
        reason=eth["reason"],
    )
    assert proc.code == 3
    assert eth["status"] == "failed"
    assert eth["reason"].startswith("transient")
    assert 2 <= eth["attempts"] < 10
    assert eth["duration_ms"] < 3000
    assert not bad_lines(proc.stderr)


# --- 10. 429 with a Retry-After beyond the deadline -----------------------------------------------


@pytest.mark.scenario("10")
def test_429_retry_after_beyond_the_deadline(
    measure, real_redis, redis_server, stub: StubLLM, tmp_path: Path
):
    """The analyzer answers 429 with `Retry-After: 30` in a 4 s cycle: the symbol is reported
    `rate_limited`, the run does not sleep past its deadline, and the pause is shared through
    Redis, so the other symbol of the run and every symbol of the next run are `rate_limited`
    without a single further call. A rate limit is not an outage: the breaker stays closed."""
    stub.mode = Mode("http_error", status=429, retry_after=30)
    env = stub_env(
        redis_server.url,
        tmp_path,
        stub.url,
        **one_at_a_time(RUNNER_RETRY__MAX_ATTEMPTS="3", RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS="4"),
    )
    first = run(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env, tmp_path / "runs")
    calls = len(stub.chat_requests())
    second = run(["cycle", "--symbols", "ETH/USD,BTC/USD", "--json"], env, tmp_path / "runs")
    docs = [first.json(), second.json()]
    pause_left = real_redis.pttl("runner:ratelimit:pause") / 1000
    measure.figures(
        first_run_s=round(first.elapsed, 3),
        second_run_s=round(second.elapsed, 3),
        deadline_s=4,
        statuses=[r["status"] for d in docs for r in d["results"]],
        analyzer_calls=len(stub.chat_requests()),
        shared_pause_left_s=round(pause_left, 1),
    )
    assert not bad_lines(first.stderr + second.stderr)
    for d in docs:
        assert {r["status"] for r in d["results"]} == {"rate_limited"}, d["results"]
    assert calls == 1
    assert len(stub.chat_requests()) == 1
    # The cycle's own duration (Python's start-up on a loaded machine is no part of it).
    assert docs[0]["duration_ms"] < (4 + 2) * 1000, "no sleep past the deadline"
    assert real_redis.hget("runner:breaker:llm_service", "state") in (None, "closed")
    assert pause_left > 20


# --- 11. HTTP 200 with an error; an answer that never completes ------------------------------------


@pytest.mark.scenario("11")
def test_200_whose_body_is_an_error(measure, real_redis, redis_server, stub: StubLLM, tmp_path: Path):
    """HTTP 200 whose body is an error object (as OpenRouter reports a failure after generation
    started): a transient failure, retried (2 attempts), never a signal, never a HOLD, and counted
    by the breaker."""
    stub.mode = Mode("error_body")
    env = stub_env(redis_server.url, tmp_path, stub.url, RUNNER_RETRY__MAX_ATTEMPTS="2")
    proc = run(["cycle", "--symbols", "ETH/USD", "--json"], env, tmp_path / "runs")
    eth = result_of(proc.json(), "ETH/USD")
    breaker = real_redis.hgetall("runner:breaker:llm_service")
    measure.figures(
        exit_code=proc.code,
        reason=eth["reason"],
        attempts=eth["attempts"],
        breaker_failures=breaker.get("failure_count"),
    )
    assert proc.code == 3
    assert eth["status"] == "failed", eth
    assert "200" in eth["reason"], eth
    assert eth["attempts"] == 2
    assert real_redis.xlen("signals:raw") == 0
    assert breaker.get("failure_count") == "1"


@pytest.mark.scenario("11")
@pytest.mark.parametrize("server", ["stub_keepalive", "raw_whitespace"])
def test_an_answer_that_never_completes(
    server, measure, real_redis, redis_server, stub: StubLLM, tmp_path: Path
):
    """The server sends 200 and headers, then only keep-alive bytes forever (the stub's SSE
    `: keep-alive` comments, or a raw socket sending a blank every 0.2 s into a body it promised
    to be 1 MB): each byte would restart an HTTP read timeout, so only the runner's own symbol
    timeout (1.5 s) can end it. The symbol is a `timeout` after about that long, the connection
    is closed, and the run ends before its deadline."""
    timeout = 1.5
    extra = {
        "RUNNER_RETRY__MAX_ATTEMPTS": "1",
        "RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_SECONDS": str(timeout),
    }
    if server == "stub_keepalive":
        stub.mode = Mode("keepalive", keepalive_every=0.2)
        env = stub_env(redis_server.url, tmp_path, stub.url, **extra)
        proc = run(["cycle", "--symbols", "ETH/USD", "--json"], env, tmp_path / "runs")
        wait_until(lambda: stub.active == 0, timeout=15)
        seen = len(stub.chat_requests())
    else:
        with serving(WhitespaceServer(every=0.2)) as raw:
            env = stub_env(redis_server.url, tmp_path, raw.url, **extra)
            proc = run(["cycle", "--symbols", "ETH/USD", "--json"], env, tmp_path / "runs")
            seen = raw.requests
    eth = result_of(proc.json(), "ETH/USD")
    measure.figures(
        server=server,
        symbol_timeout_s=timeout,
        symbol_ms=eth["duration_ms"],
        status=f"{eth['status']} ({eth['reason']})",
        run_s=round(proc.elapsed, 3),
    )
    assert not bad_lines(proc.stderr)
    assert proc.code == 3
    assert eth["status"] == "timeout", eth
    assert seen == 1
    assert eth["duration_ms"] < (timeout + 1.0) * 1000, "bounded by the symbol timeout"
    assert proc.json()["duration_ms"] < (6 + 2) * 1000
    assert real_redis.xlen("signals:raw") == 0


# --- 12. 401 / 402 / 403 -----------------------------------------------------------------------------


@pytest.mark.scenario("12")
@pytest.mark.parametrize("status", [401, 402, 403])
def test_refusals_are_not_retried(status, measure, real_redis, redis_server, stub: StubLLM, tmp_path: Path):
    """401, 402 and 403 are permanent: each symbol that was asked got exactly one request (max
    attempts 3). 401 and 402 (credentials, money) fail the whole cycle fast: no symbol starts
    after the first refusal (`not_started`, `auth_failed`), exit 3, and one clear line says the
    analyzer refused our credentials. 403 fails each symbol once. None of them opens the breaker
    or pauses a symbol."""
    stub.mode = Mode("http_error", status=status)
    env = stub_env(
        redis_server.url,
        tmp_path,
        stub.url,
        **one_at_a_time(RUNNER_RETRY__MAX_ATTEMPTS="3"),
    )
    proc = run(["cycle", "--symbols", FIVE, "--json"], env, tmp_path / "runs")
    doc = proc.json()
    asked = per_symbol(stub)
    statuses = Counter(f"{r['status']}:{(r['reason'] or '').split(':')[0]}" for r in doc["results"])
    measure.figures(
        status=status,
        exit_code=proc.code,
        requests_per_symbol=dict(asked),
        results=dict(statuses),
        run_s=round(proc.elapsed, 3),
    )
    if doc["warnings"]:
        measure.note(f"first warning: `{doc['warnings'][0]}`")
    assert not bad_lines(proc.stderr)
    assert proc.code == 3
    assert set(asked.values()) == {1}, asked
    if status in (401, 402):
        assert sum(asked.values()) == 1, "no call after the first refusal"
        assert statuses["not_started:auth_failed"] == 4, statuses
        assert "credentials" in doc["warnings"][0]
        assert str(status) in doc["warnings"][0]
        assert any(str(status) in line and "auth" in line for line in proc.stderr.splitlines())
    else:
        assert sum(asked.values()) == 5
        assert statuses["failed:permanent"] == 5, statuses
    assert real_redis.hget("runner:breaker:llm_service", "failure_count") in (None, "0")
    assert real_redis.hlen("runner:paused") == 0
    assert lock_keys(real_redis) == []


# --- 13. invalid output ---------------------------------------------------------------------------------


def _answer(symbol: str, **fields: Any) -> str:
    doc = {"symbol": symbol, "action": "BUY", "confidence": 0.6, "reasoning": "r", "price": 100.0, **fields}
    return json.dumps(doc)


#: symbol -> (what the model answers, what it is)
INVALID: dict[str, tuple[Mode, str]] = {
    "BTC/USD": (Mode("malformed"), "truncated JSON"),
    "SOL/USD": (Mode("bad_confidence"), "confidence 1.7"),
    "DOGE/USD": (Mode("wrong_symbol"), "another symbol's signal (BTC/USD)"),
    "AVAX/USD": (Mode("text", text=_answer("AVAX/USD", action="STRONG_BUY")), "action not in the enum"),
    "LINK/USD": (Mode("text", text=_answer("LINK/USD", reasoning=["a", "list"])), "reasoning not a string"),
    "UNI/USD": (Mode("text", text=_answer("UNI/USD", confidence=-0.2)), "confidence -0.2"),
    "AAVE/USD": (Mode("text", text=_answer("AAVE/USD", confidence="0.9")), "confidence as a string"),
    "MKR/USD": (
        Mode(
            "text",
            text='{"symbol": "MKR/USD", "action": "HOLD", "confidence": NaN, "reasoning": "r", "price": 1}',
        ),
        "HOLD with confidence NaN",
    ),
    "CRV/USD": (Mode("text", text="HOLD"), "a bare word"),
    "COMP/USD": (Mode("text", text=""), "an empty answer"),
    "SNX/USD": (Mode("text", text="Sure! " + _answer("SNX/USD")), "prose around the JSON"),
    "YFI/USD": (Mode("text", text=_answer("YFI/USD") + _answer("YFI/USD")), "two JSON objects"),
    "SUSHI/USD": (Mode("text", text=json.dumps([json.loads(_answer("SUSHI/USD"))])), "an array"),
    "LDO/USD": (Mode("text", text=_answer("LDO/USD", reasoning="x" * 5000)), "unbounded reasoning"),
    "RPL/USD": (Mode("text", text=_answer("RPL/USD", action=None)), "action null"),
}


@pytest.mark.scenario("13")
def test_invalid_outputs_are_failures_never_holds(
    measure, real_redis, redis_server, stub: StubLLM, tmp_path: Path
):
    """Fifteen kinds of bad answers (truncated JSON, schema violations, out-of-range or NaN
    confidence, another symbol's signal, prose, arrays, empty, unbounded reasoning), one per
    symbol, next to one good symbol: each bad one fails with `invalid_output` after exactly one
    call (not retried), nothing is published for it (stream and latest hash), nothing is turned
    into a HOLD, and the good symbol's signal is published (exit 1, partial)."""
    for symbol, (mode, _) in INVALID.items():
        stub.per_symbol[symbol] = mode
    symbols = ["ETH/USD", *INVALID]
    env = stub_env(redis_server.url, tmp_path, stub.url, RUNNER_RETRY__MAX_ATTEMPTS="3")
    proc = run(["cycle", "--symbols", ",".join(symbols), "--json"], env, tmp_path / "runs")
    doc = proc.json()
    asked = per_symbol(stub)
    published = stream_signals(real_redis)
    measure.figures(
        kinds=len(INVALID),
        exit_code=proc.code,
        invalid_output=sum((r["reason"] or "").startswith("invalid_output") for r in doc["results"]),
        published=[s["symbol"] for s in published],
        holds_published=sum(s["action"] == "HOLD" for s in published),
    )
    for symbol, (_, what) in INVALID.items():
        measure.note(f"{what}: `{result_of(doc, symbol)['reason']}`")
    assert not bad_lines(proc.stderr)
    assert proc.code == 1, proc.stdout
    for symbol in INVALID:
        r = result_of(doc, symbol)
        assert r["status"] == "failed", (symbol, r)
        assert r["reason"].startswith("invalid_output"), (symbol, r)
        assert asked[symbol] == 1, (symbol, asked)
    assert [(s["symbol"], s["action"]) for s in published] == [("ETH/USD", "BUY")]
    assert set(real_redis.hkeys("signals:latest")) == {"ETH/USD"}
    assert [s["symbol"] for s in doc["signals"]] == ["ETH/USD"]


@pytest.mark.scenario("13")
def test_truncated_http_body(measure, real_redis, redis_server, stub: StubLLM, tmp_path: Path):
    """The HTTP body itself is cut in half (a transport failure rather than a bad answer): the
    symbol fails (reported as transient and retried), nothing is published, never a HOLD."""
    stub.mode = Mode("broken_body")
    env = stub_env(redis_server.url, tmp_path, stub.url, RUNNER_RETRY__MAX_ATTEMPTS="2")
    proc = run(["cycle", "--symbols", "ETH/USD", "--json"], env, tmp_path / "runs")
    eth = result_of(proc.json(), "ETH/USD")
    measure.figures(exit_code=proc.code, reason=eth["reason"], attempts=eth["attempts"])
    assert proc.code == 3
    assert eth["status"] == "failed"
    assert real_redis.xlen("signals:raw") == 0
    assert not bad_lines(proc.stderr)


@pytest.mark.scenario("13")
def test_deeply_nested_answer_is_invalid_output(real_redis, redis_server, stub: StubLLM, tmp_path: Path):
    """A model answering 100000 nested brackets: `invalid_output` (the symbol's own failure), no
    traceback, not counted as an outage by the breaker."""
    stub.mode = Mode("text", text="[" * 100_000 + "]" * 100_000)
    env = stub_env(redis_server.url, tmp_path, stub.url)
    proc = run(["cycle", "--symbols", "ETH/USD", "--json"], env, tmp_path / "runs")
    eth = result_of(proc.json(), "ETH/USD")
    assert proc.code == 3
    assert eth["reason"].startswith("invalid_output"), eth
    assert "Traceback" not in proc.stderr
    assert real_redis.hget("runner:breaker:llm_service", "failure_count") in (None, "0")


@pytest.mark.scenario("13")
def test_boolean_price_is_invalid_output(real_redis, redis_server, stub: StubLLM, tmp_path: Path):
    """`"price": true` violates the schema (number or null): `invalid_output`, nothing published."""
    stub.mode = Mode("text", text=_answer("ETH/USD", price=True))
    env = stub_env(redis_server.url, tmp_path, stub.url)
    proc = run(["cycle", "--symbols", "ETH/USD", "--json"], env, tmp_path / "runs")
    eth = result_of(proc.json(), "ETH/USD")
    assert eth["status"] == "failed", eth
    assert eth["reason"].startswith("invalid_output"), eth
    assert real_redis.xlen("signals:raw") == 0
