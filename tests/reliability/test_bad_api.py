"""Scenario 28 (the HTTP API): every route of a real `runner serve --no-schedule`, with bad query
strings, bodies, headers and tokens. Each answer is checked alone: its status, its one-line
`{"error": ...}`; then, once for all, that the server logged no traceback and that nothing
refused had any effect in Redis."""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.integration.helpers import log_lines
from tests.integration.web import TOKEN, Served, start_serve
from tests.reliability.support import bad_lines

pytestmark = pytest.mark.scenario("28")

JSON = {"Content-Type": "application/json"}
AUTH = {**JSON, "Authorization": f"Bearer {TOKEN}"}
GET_ROUTES = [
    "/",
    "/api/latest",
    "/api/status",
    "/api/history",
    "/api/scorecard",
    "/health",
    "/health/live",
    "/health/ready",
    "/health/detailed",
    "/metrics",
]


@dataclass(frozen=True)
class Bad:
    method: str
    path: str
    status: int
    says: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


def bad(method: str, path: str, status: int, says: str, body: bytes | None = None, **headers: str) -> Bad:
    return Bad(method, path, status, says, body, tuple(headers.items()))


def auth(**extra: str) -> dict[str, str]:
    return {k.replace("-", "_"): v for k, v in {**AUTH, **extra}.items()}


def _k(headers: dict[str, str]) -> dict[str, str]:
    """Header names as keyword arguments (``Content_Type``) turned back into header names."""
    return {k.replace("_", "-"): v for k, v in headers.items()}


CASES: dict[str, Bad] = {
    # --- query strings, on every route that takes none or a few ---------------------------------
    **{
        f"unknown parameter on {p}": bad("GET", f"{p}?verbose=1", 422, "unknown query parameter 'verbose'")
        for p in GET_ROUTES
        if p not in ("/", "/health", "/health/live", "/health/ready", "/health/detailed", "/metrics")
    },
    "history limit twice": bad("GET", "/api/history?limit=1&limit=2", 422, "limit: given more than once"),
    "history limit huge": bad("GET", "/api/history?limit=" + "9" * 400, 422, "limit: must be an integer"),
    "history limit unicode digits": bad("GET", "/api/history?limit=%D9%A3", 422, "limit: must be an integer"),
    "history limit with spaces inside": bad(
        "GET", "/api/history?limit=1%200", 422, "limit: must be an integer"
    ),
    "history limit not UTF-8": bad("GET", "/api/history?limit=%FF", 422, "limit: must be an integer"),
    "history limit hex": bad("GET", "/api/history?limit=0x10", 422, "limit: must be an integer"),
    "history bad percent-encoding": bad("GET", "/api/history?limit=%ZZ", 422, "limit: must be an integer"),
    "scorecard horizon negative": bad("GET", "/api/scorecard?horizon=-5", 422, "horizon: must be an integer"),
    "scorecard horizon huge": bad("GET", "/api/scorecard?horizon=1441", 422, "horizon: must be an integer"),
    "scorecard since 0d": bad("GET", "/api/scorecard?since=0d", 422, "since:"),
    "scorecard since negative": bad("GET", "/api/scorecard?since=-7d", 422, "since:"),
    "scorecard symbol twice": bad(
        "GET", "/api/scorecard?symbol=ETH/USD&symbol=BTC/USD", 422, "given more than once"
    ),
    "scorecard symbol too long": bad("GET", "/api/scorecard?symbol=" + "A" * 30 + "/USD", 422, "symbol:"),
    "scorecard model blank": bad("GET", "/api/scorecard?model=%20%20", 422, "model: must not be empty"),
    "events unknown parameter": bad("GET", "/api/events?cursor=1", 422, "unknown query parameter 'cursor'"),
    "events cursor twice": bad(
        "GET", "/api/events?last_event_id=a&last_event_id=b", 422, "given more than once"
    ),
    "write with a query string": bad(
        "POST", "/api/cycles?dry_run=1", 422, "unknown query parameter", b"{}", **auth()
    ),
    # --- paths and methods ----------------------------------------------------------------------
    "unknown route": bad("GET", "/api/signals", 404, "not found: /api/signals"),
    "unknown static file": bad("GET", "/static/nothing.js", 404, "not found"),
    "static path escaping": bad("GET", "/static/..%2f..%2fpyproject.toml", 404, "not found"),
    "PUT a read route": bad("PUT", "/api/latest", 405, "method PUT not allowed here", b"{}"),
    "DELETE the kill switch": bad("DELETE", "/api/kill-switch", 405, "method DELETE not allowed here"),
    "GET the cycles route": bad("GET", "/api/cycles", 405, "method GET not allowed here"),
    "POST the event stream": bad("POST", "/api/events", 405, "not allowed", b"{}"),
    "PATCH the status": bad("PATCH", "/api/status", 405, "not allowed", b"{}"),
    # --- tokens and headers ---------------------------------------------------------------------
    "no Authorization": bad("POST", "/api/kill-switch", 401, "missing token", b'{"on": false}', **JSON),
    "Bearer without a token": bad(
        "POST", "/api/kill-switch", 401, "missing token", b'{"on": false}', **auth(Authorization="Bearer")
    ),
    "Bearer and spaces": bad(
        "POST", "/api/kill-switch", 401, "missing token", b'{"on": false}', **auth(Authorization="Bearer    ")
    ),
    "Basic scheme": bad(
        "POST",
        "/api/kill-switch",
        401,
        "missing token",
        b'{"on": false}',
        **auth(Authorization="Basic dXNlcjpwYXNz"),
    ),
    "token without a scheme": bad(
        "POST", "/api/kill-switch", 401, "missing token", b'{"on": false}', **auth(Authorization=TOKEN)
    ),
    "token with a suffix": bad(
        "POST",
        "/api/kill-switch",
        401,
        "wrong token",
        b'{"on": false}',
        **auth(Authorization=f"Bearer {TOKEN}x"),
    ),
    "a prefix of the token": bad(
        "POST",
        "/api/kill-switch",
        401,
        "wrong token",
        b'{"on": false}',
        **auth(Authorization=f"Bearer {TOKEN[:-1]}"),
    ),
    "the token upper-cased": bad(
        "POST",
        "/api/kill-switch",
        401,
        "wrong token",
        b'{"on": false}',
        **auth(Authorization=f"Bearer {TOKEN.upper()}"),
    ),
    "a 10 kB token": bad(
        "POST",
        "/api/kill-switch",
        401,
        "wrong token",
        b'{"on": false}',
        **auth(Authorization="Bearer " + "t" * 10000),
    ),
    "two tokens": bad(
        "POST",
        "/api/kill-switch",
        401,
        "wrong token",
        b'{"on": false}',
        **auth(Authorization=f"Bearer {TOKEN} {TOKEN}"),
    ),
    "a token in the query": bad(
        "POST", f"/api/cycles?token={TOKEN}", 422, "unknown query parameter 'token'", b"{}", **JSON
    ),
    "a bad token, a bad body too": bad(
        "POST", "/api/cycles", 401, "wrong token", b"{not json", **auth(Authorization="Bearer nope")
    ),
    "no token for a cycle": bad("POST", "/api/cycles", 401, "missing token", b"{}", **JSON),
    # --- bodies ---------------------------------------------------------------------------------
    "body of spaces": bad("POST", "/api/kill-switch", 400, "body: required", b"   \n ", **auth()),
    "body a JSON string": bad(
        "POST", "/api/kill-switch", 422, "must be a JSON object (got str)", b'"on"', **auth()
    ),
    "body a number": bad("POST", "/api/kill-switch", 422, "must be a JSON object (got int)", b"1", **auth()),
    "body null": bad("POST", "/api/kill-switch", 422, "must be a JSON object", b"null", **auth()),
    "body NaN": bad("POST", "/api/kill-switch", 422, "body.on:", b'{"on": NaN}', **auth()),
    "on as a number": bad("POST", "/api/kill-switch", 422, "body.on:", b'{"on": 1, "reason": "x"}', **auth()),
    "reason a number": bad(
        "POST", "/api/kill-switch", 422, "body.reason:", b'{"on": true, "reason": 5}', **auth()
    ),
    "reason a list": bad(
        "POST", "/api/kill-switch", 422, "body.reason:", b'{"on": true, "reason": ["x"]}', **auth()
    ),
    "deep nesting": bad(
        "POST",
        "/api/kill-switch",
        400,
        "body: nested too deeply",
        b'{"on": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        **auth(),
    ),
    "truncated JSON": bad("POST", "/api/kill-switch", 400, "body: not valid JSON", b'{"on": tr', **auth()),
    "latin-1 body": bad(
        "POST", "/api/kill-switch", 400, "body: not UTF-8", b'{"on": true, "reason": "caf\xe9"}', **auth()
    ),
    "a 1 MB body": bad(
        "POST", "/api/cycles", 413, "larger than", b'{"symbols": ["' + b"A" * (1 << 20) + b'"]}', **auth()
    ),
    "a Content-Length that lies": bad(
        "POST", "/api/cycles", 413, "larger than", b"{}", **auth(Content_Length="99999999")
    ),
    "symbols of another type": bad(
        "POST", "/api/cycles", 422, "body.symbols.0:", b'{"symbols": [1]}', **auth()
    ),
    "symbols with a bad one": bad(
        "POST", "/api/cycles", 422, "body.symbols.1:", b'{"symbols": ["ETH/USD", "ETH-USD"]}', **auth()
    ),
    "an unknown field beside null symbols": bad(
        "POST", "/api/cycles", 422, "body.x: unknown field", b'{"symbols": null, "x": 1}', **auth()
    ),
    "symbols too many": bad(
        "POST",
        "/api/cycles",
        422,
        "body.symbols:",
        json.dumps({"symbols": [f"S{i}/USD" for i in range(501)]}).encode(),
        **auth(),
    ),
    "a form instead of JSON": bad(
        "POST",
        "/api/kill-switch",
        400,
        "body: not valid JSON",
        b"on=true&reason=x",
        **auth(Content_Type="application/x-www-form-urlencoded"),
    ),
}


def _request(port: int, case: Bad) -> tuple[int, Any, dict[str, str]]:
    """Send ``case`` as it is (http.client: no normalisation of the path or the headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(case.method, case.path, skip_accept_encoding=True)
        headers = _k(dict(case.headers))
        body = case.body
        if body is not None and "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        if body is not None:
            # The server may answer before reading it all (413): the answer is what counts.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.send(body)
        response = conn.getresponse()
        raw = response.read()
        got = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw.decode(errors="replace")
    return response.status, parsed, got


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Served]:
    client = redis_server.client()
    client.flushall()
    server = start_serve(redis_server.url, tmp_path_factory.mktemp("bad-api"), RUNNER_API_TOKEN=TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def answers(served: Served) -> dict[str, tuple[int, Any, dict[str, str]]]:
    return {name: _request(served.port, case) for name, case in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_every_bad_request_gets_its_status_and_one_line(name, answers, measure):
    """Each bad request gets the status the README gives it (401 for a missing or wrong token,
    before the body is even read; 400 for a body that is not JSON; 413 for one too large; 404 and
    405; 422 for what does not validate) and a body `{"error": "<one line>"}` saying what is
    wrong; never a 5xx."""
    case = CASES[name]
    status, body, headers = answers[name]
    error = body.get("error") if isinstance(body, dict) else None
    measure.figures(status=status, error=(error or str(body))[:100])
    assert status == case.status, (status, body)
    assert isinstance(error, str), body
    assert "\n" not in error
    assert case.says in error, error
    assert TOKEN not in error
    if status == 401:
        assert headers.get("www-authenticate", "").startswith("Bearer")


def test_nothing_refused_had_an_effect_and_nothing_crashed(answers, served, redis_server, measure):
    """After every bad request: the server is still up and answers, it logged no traceback, the
    kill switch was never set, no cycle ran, and the token never appears in its log."""
    client = redis_server.client()
    health = _request(served.port, Bad("GET", "/health/live", 200, ""))
    log = served.stderr()
    measure.figures(requests=len(answers), kill_switch_set=bool(client.exists("runner:kill_switch")))
    assert health[0] == 200
    assert not bad_lines(log), log[-3000:]
    assert "Traceback" not in log
    assert not [r for r in log_lines(log) if r.get("level") == "error"], log[-3000:]
    assert TOKEN not in log
    assert not client.exists("runner:kill_switch")
    assert client.xlen("signals:raw") == 0
    assert client.llen("runner:history") == 0


def test_a_cursor_the_server_cannot_read_is_a_reset_not_an_error(served, measure):
    """`Last-Event-ID` (header or `?last_event_id=`) holding garbage, an old format, a huge value
    or bytes that are not UTF-8: the stream answers 200 with a `reset` event and the snapshot,
    as the README says, never an error."""
    import asyncio

    from tests.support.sse import SseClient

    cursors = ["garbage", "0-0", "9" * 5000, "%FF%FE", "e30=", "1-1,2-2,3-3", ""]

    async def first_events(cursor: str, as_header: bool) -> list[str]:
        path = "/api/events" if as_header else f"/api/events?last_event_id={cursor}"
        headers = {"Last-Event-ID": cursor} if as_header else None
        client = await SseClient.open(served.port, path, headers=headers)
        try:
            assert client.status == 200, client.status
            events = []
            async with asyncio.timeout(30):
                while len(events) < 2:
                    message = await client.next()
                    if message.event:
                        events.append(message.event)
                        if message.event == "snapshot" and len(events) == 1:
                            break
            return events
        finally:
            await client.close()

    async def every() -> dict[str, list[str]]:
        out = {}
        for cursor in cursors:
            for as_header in (True, False):
                if as_header and not cursor.isascii():
                    continue
                out[f"{'header' if as_header else 'query'} {cursor[:12]!r}"] = await first_events(
                    cursor, as_header
                )
        return out

    seen = asyncio.run(every())
    measure.figures(cases=len(seen), first_events=sorted({" ".join(v) for v in seen.values()}))
    for where, events in seen.items():
        assert events in (["reset", "snapshot"], ["snapshot"]), (where, events)
