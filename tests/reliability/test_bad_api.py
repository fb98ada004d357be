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


def app_routes() -> dict[str, set[str]]:
    """Every route of the application ``runner serve`` runs, with its methods (HEAD aside)."""
    from types import SimpleNamespace

    from starlette.routing import Route

    from runner.web.app import create_app

    app: Any = create_app(SimpleNamespace(hub=None))  # type: ignore[arg-type]
    while not hasattr(app, "routes"):
        app = app.app  # EventsFirst and SecurityHeaders wrap the Starlette application
    return {r.path: set(r.methods or {"GET"}) - {"HEAD"} for r in app.routes if isinstance(r, Route)}


ROUTES = app_routes()
WRITE_ROUTES = sorted(p for p, methods in ROUTES.items() if "POST" in methods)
READ_ROUTES = sorted(p for p, methods in ROUTES.items() if "GET" in methods)
#: A body each write route would take, so that only the token is wrong.
GOOD_BODY = {"/api/kill-switch": b'{"on": false}', "/api/cycles": b"{}"}
#: Query parameters of the read routes that take some: what each must refuse.
BAD_PARAMS = {
    "/api/history": {
        "limit": ["0", "1001", "-1", "", "abc", "1.5", "1e3"],
    },
    "/api/scorecard": {
        "horizon": ["0", "abc", "", "15m", "1.5"],
        "since": ["garbage", "", "7", "d7", "7y", "1e9d"],
        "symbol": ["bad", "eth/usd", "", "ETH/", "/USD", "ETH/USD/X", "ETH%2FUSD%00"],
        "model": ["", "%20"],
    },
}

CASES.update(
    {
        # Every method a route does not take (405), every read route given a body-less POST.
        **{
            f"{method} {path}": bad(method, path, 405, f"method {method} not allowed here", b"{}", **JSON)
            for path, methods in ROUTES.items()
            for method in ("GET", "POST", "PUT", "DELETE", "PATCH")
            if method not in methods and not (path == "/api/events" and method == "GET")
        },
        # Every write route: no token, an empty one, another scheme, a wrong one, one with a
        # line break smuggled in.
        **{
            f"{path}: {why}": bad("POST", path, 401, says, GOOD_BODY[path], **auth(Authorization=value))
            for path in WRITE_ROUTES
            for why, value, says in (
                ("empty Authorization", "", "missing token"),
                ("Bearer only", "Bearer", "missing token"),
                ("Token scheme", f"Token {TOKEN}", "missing token"),
                ("wrong token", "Bearer not-the-token", "wrong token"),
                ("the token twice", f"Bearer {TOKEN}{TOKEN}", "wrong token"),
                ("a token of one space less", f"Bearer {TOKEN[1:]}", "wrong token"),
            )
        },
        **{
            f"{path}: no Authorization header": bad(
                "POST", path, 401, "missing token", GOOD_BODY[path], **JSON
            )
            for path in WRITE_ROUTES
        },
        # Every write route: bodies of the wrong kind, under any Content-Type.
        **{
            f"{path}: {why}": bad("POST", path, status, says, body, **auth(Content_Type=ctype))
            for path in WRITE_ROUTES
            for why, body, ctype, status, says in (
                ("text/plain, not JSON", b"on", "text/plain", 400, "body: not valid JSON"),
                ("XML", b"<on>true</on>", "application/xml", 400, "body: not valid JSON"),
                (
                    "multipart",
                    b'--x\r\nContent-Disposition: form-data; name="on"\r\n\r\ntrue\r\n--x--\r\n',
                    "multipart/form-data; boundary=x",
                    400,
                    "body: not valid JSON",
                ),
                (
                    "a JSON list",
                    b'["ETH/USD"]',
                    "application/json",
                    422,
                    "body: must be a JSON object (got list)",
                ),
                (
                    "an empty JSON list",
                    b"[]",
                    "application/json",
                    422,
                    "body: must be a JSON object (got list)",
                ),
                ("JSON false", b"false", "application/json", 422, "body: must be a JSON object (got bool)"),
                ("JSON zero", b"0", "application/json", 422, "body: must be a JSON object (got int)"),
                (
                    "an empty JSON string",
                    b'""',
                    "application/json",
                    422,
                    "body: must be a JSON object (got str)",
                ),
                ("a JSON number", b"3", "application/json", 422, "body: must be a JSON object (got int)"),
                (
                    "latin-1 declared",
                    b'{"x": "caf\xe9"}',
                    "application/json; charset=latin-1",
                    400,
                    "not UTF-8",
                ),
                ("NUL bytes", b"\x00\x00", "application/json", 400, "body: not valid JSON"),
                ("a BOM", b'\xef\xbb\xbf{"on": false}', "application/json", 400, "body: not valid JSON"),
                ("just over the limit", b" " * (16 * 1024 + 1), "application/json", 413, "larger than"),
                (
                    "an unknown field",
                    b'{"on": false, "symbols": null, "force": true}',
                    "application/json",
                    422,
                    "unknown field",
                ),
            )
        },
        **{
            f"{path}: a chunked body over the limit": bad(
                "POST",
                path,
                413,
                "larger than",
                b"".join(b"%x\r\n%s\r\n" % (8192, b" " * 8192) for _ in range(3)) + b"0\r\n\r\n",
                **auth(Transfer_Encoding="chunked"),
            )
            for path in WRITE_ROUTES
        },
        "kill switch on without a reason": bad(
            "POST", "/api/kill-switch", 422, "reason is required", b'{"on": true}', **auth()
        ),
        "kill switch reason too long": bad(
            "POST",
            "/api/kill-switch",
            422,
            "body.reason:",
            json.dumps({"on": True, "reason": "r" * 501}).encode(),
            **auth(),
        ),
        "kill switch on as a string": bad(
            "POST", "/api/kill-switch", 422, "body.on:", b'{"on": "true", "reason": "x"}', **auth()
        ),
        "cycle symbols a string": bad(
            "POST", "/api/cycles", 422, "body.symbols:", b'{"symbols": "ETH/USD"}', **auth()
        ),
        # Every read route that takes parameters, each parameter bad in every way listed, and
        # each parameter given twice.
        **{
            f"{path}?{name}={value!r}": bad("GET", f"{path}?{name}={value}", 422, f"{name}:")
            for path, params in BAD_PARAMS.items()
            for name, values in params.items()
            for value in values
        },
        **{
            f"{path}?{name} twice": bad(
                "GET", f"{path}?{name}=1&{name}=2", 422, f"{name}: given more than once"
            )
            for path, params in BAD_PARAMS.items()
            for name in params
        },
    }
)


def test_the_cases_cover_every_route_and_method() -> None:
    """Every route of the application (read from it, so a new route is noticed) has bad cases:
    each method it does not take, and for a write route every kind of bad token."""
    covered = {(c.method, c.path.partition("?")[0]) for c in CASES.values()}
    for path, methods in ROUTES.items():
        others = {"GET", "POST", "PUT", "DELETE", "PATCH"} - methods
        missing = {m for m in others if (m, path) not in covered and path != "/api/events"}
        assert not missing, (path, missing)
    assert set(WRITE_ROUTES) == set(GOOD_BODY)
    for path in READ_ROUTES:
        if path.startswith("/api/") and path != "/api/events":
            assert ("GET", path) in covered, path


def _request(port: int, case: Bad) -> tuple[int, Any, dict[str, str]]:
    """Send ``case`` as it is (http.client: no normalisation of the path or the headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(case.method, case.path, skip_accept_encoding=True)
        headers = _k(dict(case.headers))
        body = case.body
        if body is not None and "Content-Length" not in headers and "Transfer-Encoding" not in headers:
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
    given = _k(dict(case.headers)).get("Authorization", "").partition(" ")[2].strip()
    if len(given) >= 8:
        assert given not in error  # a token sent is never echoed, right or wrong
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


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "application/json; charset=utf-8", None],
)
def test_a_json_body_is_read_whatever_its_content_type(served, redis_server, content_type, measure):
    """A body is judged by what it holds, not by its `Content-Type`: the README's
    `curl -d '{"on": ...}'` sends `application/x-www-form-urlencoded` and must work (a body that
    is not JSON is a 400 under any type, as the cases above show). Turning off a switch that is
    off changes nothing."""
    headers = dict(AUTH)
    if content_type is None:
        del headers["Content-Type"]
    else:
        headers["Content-Type"] = content_type
    case = Bad("POST", "/api/kill-switch", 200, "", b'{"on": false}', tuple(headers.items()))
    status, body, _ = _request(served.port, case)
    measure.figures(status=status, body=str(body)[:100])
    assert status == 200, body
    assert body["changed"] is False
    assert not redis_server.client().exists("runner:kill_switch")
