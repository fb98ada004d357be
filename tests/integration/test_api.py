"""The HTTP API of a real `runner serve --no-schedule` (uvicorn in a subprocess, a real
redis-server): reads, writes behind the token, and every bad request answered in one line."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import RedisServer, run_cli, start_cli
from tests.integration.helpers import assert_one_error_line, env_for, scheduled_now, wait_until
from tests.integration.web import TOKEN, Response, gated, start_serve

pytestmark = pytest.mark.integration


def cycle(
    redis_server: RedisServer, tmp_path: Path, minute: int, at: datetime | None = None, **env: str
) -> dict[str, Any]:
    """One `runner cycle` as the CronJob runs it beside the server, ``minute`` minutes from ``at``."""
    environ = env_for(
        redis_server.url, tmp_path, scripted=False, RUNNER_SCHEDULED_AT=scheduled_now(minute, at), **env
    )
    result = run_cli(["cycle", "--json", "--symbols", "ETH/USD,BTC/USD"], environ)
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = result.json()
    return doc


def test_latest_status_and_history_read_what_the_cycles_wrote(
    served: Any, real_redis: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    server = served()
    runs = [cycle(redis_server, tmp_path, m) for m in (-3, -2, -1)]

    latest = server.get("/api/latest")
    status = server.get("/api/status")
    history = server.get("/api/history?limit=2")
    everything = server.get("/api/history")
    cli_status = run_cli(["status", "--json"], env_for(redis_server.url, tmp_path)).json()

    assert latest.status == 200
    assert set(latest.body) == {"ETH/USD", "BTC/USD"}
    last = runs[-1]
    for symbol in ("ETH/USD", "BTC/USD"):
        assert latest.body[symbol] == {
            "signal": next(s for s in last["signals"] if s["symbol"] == symbol),
            "score": next(s for s in last["scores"] if s["symbol"] == symbol),
            "advice": next(a for a in last["advice"] if a["symbol"] == symbol),
        }
    assert status.status == 200
    assert set(status.body) == set(cli_status)  # what `runner status --json` prints
    assert status.body["last_cycle"]["cycle_id"] == runs[-1]["cycle_id"]
    assert status.body["health"]["code"] == cli_status["health"]["code"]
    assert history.status == 200
    assert [c["cycle_id"] for c in history.body] == [r["cycle_id"] for r in reversed(runs)][:2]
    assert [c["cycle_id"] for c in everything.body] == [r["cycle_id"] for r in reversed(runs)]


def test_the_scorecard_route_answers_what_runner_scorecard_prints(
    served: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    horizon = {"RUNNER_OUTCOMES__HORIZONS_MINUTES": "[1, 2]"}
    server = served(**horizon)
    at = datetime.now(UTC)  # one clock reading: the four cycles get four consecutive minutes
    for minute in (-4, -3, -2, -1):
        cycle(redis_server, tmp_path, minute, at, **horizon)

    answer = server.get("/api/scorecard")
    only_eth = server.get("/api/scorecard?symbol=ETH/USD&horizon=1&since=7d")
    cli = run_cli(["scorecard", "--json"], env_for(redis_server.url, tmp_path, **horizon)).json()
    cli_eth = run_cli(
        ["scorecard", "--json", "--symbol", "ETH/USD", "--horizon", "1", "--since", "7d"],
        env_for(redis_server.url, tmp_path, **horizon),
    ).json()

    assert answer.status == 200
    assert answer.body == cli
    # Signals of minutes -4 to -2 matured at 1 minute, of -4 and -3 at 2 minutes: two symbols each.
    counts = {(s["symbol"], s["horizon_minutes"]): s["count"] for s in answer.body["summary"]}
    assert counts == {("BTC/USD", 1): 3, ("ETH/USD", 1): 3, ("BTC/USD", 2): 2, ("ETH/USD", 2): 2}
    assert sum(c["count"] for c in answer.body["calibration"]) == sum(counts.values())
    assert only_eth.status == 200
    assert only_eth.body == cli_eth
    assert [(s["symbol"], s["horizon_minutes"]) for s in only_eth.body["summary"]] == [("ETH/USD", 1)]


def test_the_write_routes_refuse_every_request_while_no_token_is_configured(served: Any) -> None:
    server = served()

    answers = [
        server.post("/api/cycles", {}, token=TOKEN),
        server.post("/api/kill-switch", {"on": True, "reason": "x"}, token=TOKEN),
        server.post("/api/kill-switch", {"on": False}),
    ]

    assert [a.status for a in answers] == [403, 403, 403]
    assert all("RUNNER_API_TOKEN" in a.error for a in answers)


def test_the_write_routes_take_the_right_token_only(
    served: Any, real_redis: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    server = served(RUNNER_API_TOKEN=TOKEN)
    writes: list[tuple[str, dict[str, Any]]] = [
        ("/api/kill-switch", {"on": True, "reason": "maintenance"}),
        ("/api/kill-switch", {"on": False}),
        ("/api/cycles", {}),
    ]
    for path, body in writes:
        missing = server.post(path, body)
        wrong = server.post(path, body, token=TOKEN + "x")
        not_bearer = server.request("POST", path, json.dumps(body).encode(), {"Authorization": TOKEN})
        assert (missing.status, wrong.status, not_bearer.status) == (401, 401, 401), path
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "missing token" in missing.error
        assert wrong.error == "wrong token"
    assert not real_redis.exists("runner:kill_switch")
    assert real_redis.xlen("signals:raw") == 0  # nothing refused had any effect

    on = server.post("/api/kill-switch", {"on": True, "reason": "maintenance"}, token=TOKEN)
    status_on = run_cli(["status", "--json"], env_for(redis_server.url, tmp_path)).json()
    skipped = server.post("/api/cycles", {}, token=TOKEN)
    off = server.post("/api/kill-switch", {"on": False}, token=TOKEN)
    again = server.post("/api/kill-switch", {"on": False}, token=TOKEN)
    ran = server.post("/api/cycles", {"symbols": ["ETH/USD"]}, token=TOKEN)

    assert on.status == 200
    assert on.body["changed"] is True
    assert on.body["kill_switch"]["on"] is True
    assert on.body["kill_switch"]["reason"] == "maintenance"
    assert status_on["kill_switch"]["on"] is True
    assert (skipped.status, skipped.body["status"], skipped.body["skip_reason"]) == (
        200,
        "skipped",
        "kill_switch",
    )
    assert (off.status, off.body["changed"], again.body["changed"]) == (200, True, False)
    assert ran.status == 200
    assert ran.body["status"] == "completed"
    assert [s["symbol"] for s in ran.body["signals"]] == ["ETH/USD"]
    assert real_redis.xlen("signals:raw") == 1


def test_a_cycle_asked_for_while_one_runs_is_409(
    real_redis: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    started = tmp_path / "started"
    server = start_serve(
        redis_server.url, tmp_path, scripted=True, RUNNER_API_TOKEN=TOKEN, **gated(gate, started)
    )
    first: list[Response] = []
    try:
        runner = threading.Thread(target=lambda: first.append(server.post("/api/cycles", {}, token=TOKEN)))
        runner.start()
        wait_until(lambda: started.exists() and started.read_text(), timeout=30)
        busy = server.post("/api/cycles", {}, token=TOKEN)
        gate.write_text("go")
        runner.join(60)
        # A cycle of another process (the CronJob's) holds the shard's lease: 409 as well.
        gate.unlink()
        started.unlink()
        other = env_for(
            redis_server.url, tmp_path, RUNNER_SCHEDULED_AT=scheduled_now(-5), **gated(gate, started)
        )
        cronjob = start_cli(["cycle", "--json"], other)
        wait_until(lambda: started.exists() and started.read_text(), timeout=30)
        leased = server.post("/api/cycles", {}, token=TOKEN)
        gate.write_text("go")
        cronjob.communicate(timeout=60)
    finally:
        gate.write_text("go")
        result = server.stop()

    assert busy.status == 409
    assert "a cycle of this server is running" in busy.error
    assert first[0].status == 200
    assert first[0].body["status"] == "completed"
    assert leased.status == 409
    assert "running since" in leased.error
    assert leased.body["cycle"]["skip_reason"] == "cycle_running"
    assert result.code == 0, result.stderr


BAD_REQUESTS = [
    ("GET", "/api/history?limit=0", None, 422, "limit: must be an integer from 1 to 1000"),
    ("GET", "/api/history?limit=1001", None, 422, "limit: must be an integer from 1 to 1000"),
    ("GET", "/api/history?limit=-3", None, 422, "limit: must be an integer from 1 to 1000"),
    ("GET", "/api/history?limit=abc", None, 422, "limit: must be an integer from 1 to 1000"),
    ("GET", "/api/history?limit=2.5", None, 422, "limit: must be an integer from 1 to 1000"),
    ("GET", "/api/history?limit=", None, 422, "limit: must be an integer from 1 to 1000"),
    ("GET", "/api/history?limit=1&limit=2", None, 422, "limit: given more than once"),
    ("GET", "/api/history?limt=5", None, 422, "unknown query parameter 'limt'"),
    ("GET", "/api/latest?symbol=ETH", None, 422, "unknown query parameter 'symbol'"),
    ("GET", "/api/status?verbose=1", None, 422, "unknown query parameter 'verbose'"),
    ("GET", "/api/events?cursor=abc", None, 422, "unknown query parameter 'cursor'"),
    ("GET", "/api/nothing", None, 404, "not found: /api/nothing"),
    ("DELETE", "/api/latest", None, 405, "method DELETE not allowed here"),
    ("GET", "/api/kill-switch", None, 405, "method GET not allowed here"),
    ("POST", "/api/kill-switch", b"", 400, "body: required"),
    ("POST", "/api/kill-switch", b"{not json", 400, "body: not valid JSON"),
    ("POST", "/api/kill-switch", b"\xff\xfe", 400, "body: not UTF-8 text"),
    ("POST", "/api/kill-switch", b"[true]", 422, "body: must be a JSON object (got list)"),
    ("POST", "/api/kill-switch", b'{"on": "yes"}', 422, "body.on: Input should be a valid boolean"),
    ("POST", "/api/kill-switch", b'{"reason": "x"}', 422, "body.on: required"),
    ("POST", "/api/kill-switch", b'{"on": true}', 422, "reason is required when on is true"),
    ("POST", "/api/kill-switch", b'{"on": true, "reason": "  "}', 422, "reason is required when on is true"),
    ("POST", "/api/kill-switch", b'{"on": false, "by": "me"}', 422, "body.by: unknown field"),
    ("POST", "/api/kill-switch", b'{"on": true, "reason": "' + b"x" * 600 + b'"}', 422, "body.reason:"),
    ("POST", "/api/kill-switch", b'{"on": true, "reason": "' + b"x" * 20000 + b'"}', 413, "larger than"),
    ("POST", "/api/kill-switch?on=1", b'{"on": false}', 422, "unknown query parameter 'on'"),
    ("POST", "/api/cycles", b'{"symbols": "ETH/USD"}', 422, "body.symbols: Input should be a valid list"),
    ("POST", "/api/cycles", b'{"symbols": ["eth"]}', 422, "body.symbols.0: symbol must look like BASE/QUOTE"),
    ("POST", "/api/cycles", b'{"symbols": []}', 422, "body.symbols: List should have at least 1 item"),
    ("POST", "/api/cycles", b'{"dry_run": true}', 422, "body.dry_run: unknown field"),
    ("GET", "/api/scorecard?symbol=eth", b"", 422, "symbol: must look like BASE/QUOTE"),
    ("GET", "/api/scorecard?symbol=ETH/USD,BTC/USD", b"", 422, "symbol: must look like BASE/QUOTE"),
    ("GET", "/api/scorecard?horizon=0", b"", 422, "horizon: must be an integer from 1 to 1440"),
    ("GET", "/api/scorecard?horizon=5m", b"", 422, "horizon: must be an integer from 1 to 1440"),
    ("GET", "/api/scorecard?since=yesterday", b"", 422, "since: must look like 7d, 2w or all"),
    ("GET", "/api/scorecard?model=", b"", 422, "model: must not be empty"),
    ("GET", "/api/scorecard?days=7", b"", 422, "unknown query parameter 'days'"),
]


def test_every_bad_query_string_and_body_gets_its_status_and_one_line(
    served: Any, real_redis: redis.Redis
) -> None:
    server = served(RUNNER_API_TOKEN=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    answers = [
        (server.request(m, path, body, headers), status, text) for m, path, body, status, text in BAD_REQUESTS
    ]

    for (answer, status, text), (method, path, *_) in zip(answers, BAD_REQUESTS, strict=True):
        assert answer.status == status, (method, path, answer.body)
        assert text in answer.error, (method, path, answer.error)
    assert not real_redis.exists("runner:kill_switch")
    assert real_redis.xlen("signals:raw") == 0
    # The good forms of the same requests work.
    assert server.get("/api/history?limit=1000").status == 200
    assert server.get("/api/history?limit=1").body == []


def test_the_readiness_probe_reads_two_keys_and_never_scans(
    served: Any, real_redis: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    server = served()
    cycle(redis_server, tmp_path, -1)

    def scans() -> int:
        stats = real_redis.info("commandstats")
        return int(stats.get("cmdstat_scan", {}).get("calls", 0))

    before = scans()
    answers = [server.get("/health/ready") for _ in range(20)]
    after = scans()
    real_redis.hset("runner:breaker:llm_service", mapping={"state": "open", "opened_at": 1, "version": 9})
    opened = server.get("/health/ready")

    assert {(a.status, a.body["status"]) for a in answers} == {(200, "ready")}
    assert after == before
    assert opened.status == 503
    assert opened.body["checks"]["circuit_breaker_closed"] is False


def test_the_dashboard_page_and_its_files_are_served_by_the_app(served: Any) -> None:
    server = served()

    page = server.get("/")
    script = server.get("/static/app.js")
    style = server.get("/static/app.css")

    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "content-security-policy" in page.headers
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "/static/app.js" in page.body
    # Nothing comes from elsewhere: no URL in the page, the script or the style sheet.
    for text in (page.body, script.body, style.body):
        assert "http://" not in text
        assert "https://" not in text
    assert "new EventSource(" in script.body
    assert script.headers["cache-control"] == "no-cache"


def test_a_head_request_of_the_event_stream_gets_its_headers_and_no_stream(served: Any) -> None:
    server = served()

    head = server.request("HEAD", "/api/events")

    assert head.status == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.body == ""


def test_a_port_already_taken_is_one_line_and_exit_2(redis_server: RedisServer, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            ["serve", "--no-schedule", "--port", str(port)], env_for(redis_server.url, tmp_path), timeout=60
        )

    line = assert_one_error_line(result, 2)
    assert f"--port: cannot listen on 127.0.0.1:{port}" in line
