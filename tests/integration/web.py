"""Helpers of the ``runner serve`` tests: the real server as a subprocess, HTTP calls to it, and
documents written to the streams it serves."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.conftest import CliResult, free_port, wait_for_port
from tests.integration.helpers import env_for

#: The streams the feed serves, the event each becomes and its entry field.
STREAMS = {
    "signal": ("signals:raw", "signal"),
    "score": ("signals:scored", "doc"),
    "advice": ("signals:advised", "doc"),
    "report": ("reports:cycle", "doc"),
    "cycle": ("runner:cycles", "doc"),
}
TOKEN = "test-token-0123456789"


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def error(self) -> str:
        assert isinstance(self.body, dict), self.body
        message = self.body["error"]
        assert isinstance(message, str), message
        assert "\n" not in message, message
        return message


@dataclass
class Served:
    """A ``runner serve`` process of our own."""

    port: int
    proc: subprocess.Popen[str]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Response:
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})  # noqa: S310 - loopback
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback
                raw, status, got = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw, status, got = exc.read(), exc.code, dict(exc.headers)
        text = raw.decode()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return Response(status, parsed, {k.lower(): v for k, v in got.items()})

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post(
        self, path: str, doc: Any = None, token: str | None = None, raw: bytes | None = None
    ) -> Response:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = raw if raw is not None else (json.dumps(doc).encode() if doc is not None else None)
        return self.request("POST", path, body, headers)

    def feed(self) -> dict[str, Any]:
        """The event feed's figures from /health/detailed."""
        doc = self.get("/health/detailed").body
        assert isinstance(doc, dict), doc
        events: dict[str, Any] = doc["events"]
        return events

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 40) -> CliResult:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"runner serve did not exit within {timeout}s:\n{self.stderr()}") from None
        return CliResult(self.proc.returncode, "", self.stderr())


def start_serve(
    redis_url: str | None,
    tmp_path: Path,
    *args: str,
    schedule: bool = False,
    scripted: bool = False,
    port: int | None = None,
    **env: str,
) -> Served:
    """``runner serve --no-schedule`` (as a user starts it beside the CronJob) on a free port."""
    port = port or free_port()
    values = {"RUNNER_SYMBOLS": '["ETH/USD","BTC/USD"]', "LOG_LEVEL": "INFO", **env}
    environ = env_for(redis_url, tmp_path, scripted=scripted, **values)
    log = tmp_path / f"serve-{port}.log"
    command = [sys.executable, "-m", "runner", "serve", "--port", str(port)]
    if not schedule:
        command.append("--no-schedule")
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [*command, *args],
            env=environ,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
    served = Served(port, proc, log)
    try:
        wait_for_port(port, timeout=30)
    except RuntimeError:
        served.stop()
        raise AssertionError(f"runner serve did not listen:\n{served.stderr()}") from None
    return served


def gated(gate: Path, started: Path) -> dict[str, str]:
    """Settings of a cycle held open by the scripted analyzer until the test creates ``gate``;
    each analysis appends its symbol to ``started`` as it begins. The timeouts are long enough
    that only the gate decides when the cycle ends."""
    return {
        "SCRIPTED_GATE": str(gate),
        "SCRIPTED_LOG": str(started),
        "RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS": "60",
        "RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_SECONDS": "55",
        "RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_MAX_SECONDS": "55",
    }


def add(client: redis.Redis, kind: str, doc: dict[str, Any], symbol: str = "ETH/USD") -> str:
    """XADD one document to the stream of ``kind``, as the cycle writes it; returns the entry id."""
    stream, field_name = STREAMS[kind]
    fields = (
        {field_name: json.dumps(doc)} if kind == "cycle" else {"symbol": symbol, field_name: json.dumps(doc)}
    )
    return str(client.xadd(stream, fields))


async def until(predicate: Callable[[], Any], within: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (it may be a coroutine function) until it is truthy, at most ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {within}s")
        await asyncio.sleep(0.05)
