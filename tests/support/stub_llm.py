"""A small OpenAI-compatible chat-completions server for tests (stdlib only).

``StubLLM`` listens on a free loopback port in a background thread and serves
``POST /v1/chat/completions`` (plain JSON, or SSE chunks ending with ``data: [DONE]`` when the
request says ``"stream": true``) and ``GET /v1/models``. What it answers is set at run time::

    stub.mode = Mode("http_error", status=429, retry_after=3)
    stub.queue.append(Mode("hang"))                # used once, before ``mode``
    stub.per_symbol["BTC/USD"] = Mode("wrong_symbol")

A normal answer is a valid signal for the symbol named in the last user message (``symbol="..."``
in the market-data marker, or "signal for SYMBOL"), or, when the message asks for a later stage of
the pipeline ("Score the signal", "Advise a trade", "Summarize cycle"), a valid score, advice or
report (``stub.per_stage["score"] = Mode(...)`` sets how one stage answers). When the request
offers a tool named ``StructuredOutput`` (what OpenCode 1.18 sends for ``format: json_schema``, with
``tool_choice: "required"``), the answer is a call of that tool with the signal as its arguments
(``Mode(use_tool=False)`` plays a model that ignores it and answers in text); when the last message
is a tool result, it answers with a short text. Every request is recorded in ``stub.requests``
(``Recorded``: parsed JSON body, path, headers; ``.model``, ``.messages``, ``.tools``), and
``stub.active`` counts the chat requests being answered right now (a hanging answer gives up as
soon as the client hangs up, so a test can check that a cancelled call really went away).

Fixtures: ``stub_llm`` (one stub per test) and ``stub_llm_session`` (one per session; ``reset()``
it per test). Import them into a test module or a conftest to use them.

Kinds of ``Mode``:

``ok``               a valid signal (``action``/``confidence`` configurable)
``hang``             never answers: holds the request until the client hangs up or the stub stops
``http_error``       HTTP ``status`` with an OpenAI-style error body (``retry_after`` adds the header)
``error_body``       HTTP 200 whose body (or SSE event) is an error object, as OpenRouter does
``malformed``        the answer text is not JSON (a truncated signal)
``broken_body``      the HTTP body itself is truncated JSON (in a stream: one broken chunk)
``wrong_symbol``     a valid signal for another symbol
``bad_confidence``   a signal with ``confidence`` 1.7 (a score of 150, an advice whose stop is on the
                     wrong side, a report too long for the other stages)
``keepalive``        a stream that only sends ``: keep-alive`` comments (never an answer)
``text``             answer exactly ``text`` (content, or tool arguments when a tool is offered)
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

STRUCTURED_TOOL = "StructuredOutput"
DEFAULT_MODEL = "stub-model"

_SYMBOL_PATTERNS = (
    re.compile(r'symbol="([^"]+)"'),
    re.compile(r'"symbol":\s*"([^"]+)"'),
    re.compile(r"signal for ([A-Z0-9]+/[A-Z0-9]+)"),
)


@dataclass
class Mode:
    """How the stub answers the next requests."""

    kind: str = "ok"
    status: int = 500
    retry_after: float | str | None = None
    action: str = "BUY"
    confidence: float = 0.72
    price: float | None = 100.0
    text: str | None = None
    #: Whether to answer with a call of an offered ``StructuredOutput`` tool (False plays a model
    #: that ignores ``tool_choice`` and answers in text).
    use_tool: bool = True
    #: The model named in the reply (default: the one requested).
    served_model: str | None = None
    #: Usage reported with the answer (``cost`` as OpenRouter adds it; None leaves it out).
    prompt_tokens: int = 120
    completion_tokens: int = 40
    cost: float | None = 0.00042
    #: Seconds between keep-alive comments in ``keepalive`` mode, and how long it goes on.
    keepalive_every: float = 0.2
    keepalive_for: float = 120.0
    message: str = "stub failure"


@dataclass
class Recorded:
    """One request the stub received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def model(self) -> Any:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def tools(self) -> list[str]:
        """Names of the tools the request offers."""
        if not isinstance(self.body, dict):
            return []
        return [t.get("function", {}).get("name", "") for t in self.body.get("tools") or []]


def text_of(content: Any) -> str:
    """The text of a chat message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def symbol_in(messages: list[dict[str, Any]]) -> str | None:
    """The symbol asked about in the last user message that names one."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        text = text_of(message.get("content"))
        for pattern in _SYMBOL_PATTERNS:
            found = pattern.search(text)
            if found:
                return found.group(1)
    return None


def other_symbol(symbol: str) -> str:
    return "BTC/USD" if symbol != "BTC/USD" else "ETH/USD"


@dataclass
class StubLLM:
    """An OpenAI-compatible chat server on ``127.0.0.1``; see the module docstring."""

    mode: Mode = field(default_factory=Mode)
    queue: list[Mode] = field(default_factory=list)
    per_symbol: dict[str, Mode] = field(default_factory=dict)
    per_stage: dict[str, Mode] = field(default_factory=dict)
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    requests: list[Recorded] = field(default_factory=list)
    #: Chat requests being answered right now (a client that hung up ends its request).
    active: int = 0

    def __post_init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> StubLLM:
        stub = self

        class Handler(_Handler):
            owner = stub

        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="stub-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> StubLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the stub is not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT``); the API lives under ``/v1``."""
        return f"http://127.0.0.1:{self.port}"

    # --- control ---------------------------------------------------------------------------

    def reset(self, mode: Mode | None = None) -> None:
        """Back to ``mode`` (default: ok), with no queued modes and no recorded requests."""
        with self._lock:
            self.mode = mode or Mode()
            self.queue.clear()
            self.per_symbol.clear()
            self.per_stage.clear()
            self.requests.clear()

    def chat_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def _pick(self, symbol: str | None, stage: str = "signal") -> Mode:
        with self._lock:
            if self.queue:
                return self.queue.pop(0)
            if stage in self.per_stage:
                return self.per_stage[stage]
            if symbol is not None and symbol in self.per_symbol:
                return self.per_symbol[symbol]
            return self.mode

    def sleep(self, seconds: float) -> bool:
        """Sleep unless the stub stops first; True when it is stopping."""
        return self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (OpenCode aborting a run) are normal here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: StubLLM
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    # --- plumbing --------------------------------------------------------------------------

    def _send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(doc).encode(), headers)

    def _send_raw(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)
            self.wfile.flush()

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _event(self, data: Any) -> None:
        payload = data if isinstance(data, str) else json.dumps(data)
        self.wfile.write(f"data: {payload}\n\n".encode())
        self.wfile.flush()

    def _hang(self) -> None:
        """Answer nothing until the client hangs up or the stub stops."""
        while not self.owner.sleep(0.05):
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return  # EOF: the client is gone
                except OSError:
                    return

    # --- routes ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self.owner._record(Recorded("GET", self.path, dict(self.headers), None))
        if self.path.rstrip("/").endswith("/models"):
            now = int(time.time())
            data = [
                {"id": m, "object": "model", "created": now, "owned_by": "stub"} for m in self.owner.models
            ]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode(errors="replace")
        self.owner._record(Recorded("POST", self.path, dict(self.headers), body))
        if not self.path.rstrip("/").endswith("/chat/completions") or not isinstance(body, dict):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        with self.owner._lock:
            self.owner.active += 1
        try:
            self._chat(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with self.owner._lock:
                self.owner.active -= 1

    def _chat(self, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        symbol = symbol_in(messages) or "ETH/USD"
        stage = stage_in(messages)
        mode = self.owner._pick(symbol, stage)
        stream = bool(body.get("stream"))
        if mode.kind == "hang":
            self._hang()
            return
        if mode.kind == "http_error":
            headers = {} if mode.retry_after is None else {"Retry-After": str(mode.retry_after)}
            error = {"message": f"{mode.message} ({mode.status})", "type": "stub_error", "code": mode.status}
            self._send_json(mode.status, {"error": error}, headers)
            return
        if mode.kind == "keepalive":
            self._keepalive(mode)
            return

        model = mode.served_model or body.get("model") or DEFAULT_MODEL
        last = messages[-1] if messages else {}
        offered = any(t.get("function", {}).get("name") == STRUCTURED_TOOL for t in body.get("tools") or [])
        tool_call: dict[str, Any] | None = None
        if last.get("role") == "tool":
            content = "Done."  # the tool ran; end the turn with a short text
        elif offered and mode.use_tool and body.get("tool_choice") != "none":
            tool_call = {
                "id": f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": STRUCTURED_TOOL, "arguments": answer_text(mode, symbol, stage)},
            }
            content = ""
        else:
            content = answer_text(mode, symbol, stage)
        usage: dict[str, Any] = {
            "prompt_tokens": mode.prompt_tokens,
            "completion_tokens": mode.completion_tokens,
            "total_tokens": mode.prompt_tokens + mode.completion_tokens,
        }
        if mode.cost is not None:
            usage["cost"] = mode.cost
        ident = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        if stream:
            self._stream(mode, ident, created, model, content, tool_call, usage)
        else:
            self._plain(mode, ident, created, model, content, tool_call, usage)

    def _plain(
        self,
        mode: Mode,
        ident: str,
        created: int,
        model: str,
        content: str,
        tool_call: dict[str, Any] | None,
        usage: dict[str, Any],
    ) -> None:
        if mode.kind == "error_body":
            self._send_json(200, {"error": {"message": mode.message, "code": 502}, "user_id": "stub"})
            return
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if tool_call is not None:
            message["tool_calls"] = [tool_call]
        doc = {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if tool_call else "stop"}
            ],
            "usage": usage,
        }
        if mode.kind == "broken_body":
            raw = json.dumps(doc).encode()
            self._send_raw(200, raw[: len(raw) // 2])
            return
        self._send_json(200, doc)

    def _stream(
        self,
        mode: Mode,
        ident: str,
        created: int,
        model: str,
        content: str,
        tool_call: dict[str, Any] | None,
        usage: dict[str, Any],
    ) -> None:
        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }

        self._start_stream()
        self._event(chunk({"role": "assistant", "content": ""}))
        if mode.kind == "error_body":
            error = {"message": mode.message, "code": 502}
            self._event({**chunk({}, "error"), "error": error})
            self._event("[DONE]")
            return
        if mode.kind == "broken_body":
            self._event('{"id": "' + ident + '", "object": "chat.completion.chunk", "choi')
            self._event("[DONE]")
            return
        if tool_call is not None:
            args = tool_call["function"]["arguments"]
            head = {"index": 0, "id": tool_call["id"], "type": "function"}
            self._event(
                chunk({"tool_calls": [{**head, "function": {"name": STRUCTURED_TOOL, "arguments": ""}}]})
            )
            half = len(args) // 2
            for piece in (args[:half], args[half:]):
                self._event(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            self._event(chunk({}, "tool_calls"))
        else:
            half = len(content) // 2
            for piece in (content[:half], content[half:]):
                if piece:
                    self._event(chunk({"content": piece}))
            self._event(chunk({}, "stop"))
        self._event({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": usage})  # fmt: skip
        self._event("[DONE]")

    def _keepalive(self, mode: Mode) -> None:
        self._start_stream()
        end = time.monotonic() + mode.keepalive_for
        while time.monotonic() < end:
            self.wfile.write(b": keep-alive\n\n")
            self.wfile.flush()
            if self.owner.sleep(mode.keepalive_every):
                return


def signal_doc(mode: Mode, symbol: str) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "action": mode.action,
        "confidence": mode.confidence,
        "reasoning": f"stub answer for {symbol}",
        "price": mode.price,
    }


#: What the last user message asks, by its first words.
_STAGE_ASKS = (("Score the signal", "score"), ("Advise a trade", "advise"), ("Summarize cycle", "report"))


def stage_in(messages: list[dict[str, Any]]) -> str:
    """Which stage of the pipeline the last user message asks for (``signal`` by default)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            text = text_of(message.get("content"))
            return next((stage for ask, stage in _STAGE_ASKS if ask in text), "signal")
    return "signal"


def score_doc(symbol: str, score: int = 72) -> dict[str, Any]:
    grade = "A" if score >= 80 else "B" if score >= 60 else "C" if score >= 40 else "D"
    return {
        "symbol": symbol,
        "score": score,
        "grade": grade,
        "factors": ["stub factor"],
        "reasoning": "stub score",
    }


def advice_doc(symbol: str, stop: float = 95.0) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "action": "BUY",
        "entry": 100.0,
        "stop_loss": stop,
        "take_profit": 110.0,
        "position_size_pct": 5.0,
        "horizon_minutes": 15,
        "reasoning": "stub advice",
    }


def stage_doc(mode: Mode, symbol: str, stage: str) -> dict[str, Any]:
    """A valid answer of ``stage`` (invalid in ``bad_confidence`` mode)."""
    bad = mode.kind == "bad_confidence"
    if stage == "score":
        return score_doc(symbol, 150 if bad else 72)
    if stage == "advise":
        return advice_doc(symbol, 105.0 if bad else 95.0)
    if stage == "report":
        return {"summary": "x" * 5000 if bad else "**stub report**: every symbol went through."}
    doc = signal_doc(mode, symbol)
    return {**doc, "confidence": 1.7} if bad else doc


def answer_text(mode: Mode, symbol: str, stage: str = "signal") -> str:
    """What the model 'says' in ``mode`` about ``symbol`` for ``stage``."""
    if mode.text is not None:
        return mode.text
    if mode.kind == "malformed":
        return json.dumps(stage_doc(mode, symbol, stage))[:25]
    if mode.kind == "wrong_symbol":
        return json.dumps(stage_doc(mode, other_symbol(symbol), stage))
    return json.dumps(stage_doc(mode, symbol, stage))


@pytest.fixture
def stub_llm() -> Iterator[StubLLM]:
    """A started stub, stopped after the test."""
    stub = StubLLM().start()
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture(scope="session")
def stub_llm_session() -> Iterator[StubLLM]:
    """One stub for a whole session (servers like OpenCode point at it); ``reset()`` it per test."""
    stub = StubLLM().start()
    try:
        yield stub
    finally:
        stub.stop()
