"""The ``opencode`` analyzer against a real OpenCode server backed by the stub LLM.

A session fixture installs the pinned ``opencode-ai`` npm package into ``.cache/opencode`` (once),
starts the stub and ``opencode serve`` on free loopback ports with an isolated home, and stops
both at the end. Nothing leaves the machine: the only provider is the stub. A missing ``npm``
fails these tests; it never skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.analyzers import opencode as opencode_module
from runner.analyzers.base import AnalysisRequest
from runner.analyzers.opencode import OpenCodeAnalyzer, OpenCodeClient, error_from_info
from runner.analyzers.prompt import SYSTEM_PROMPT, prompt_hash, user_prompt
from runner.config import Settings
from runner.errors import (
    AnalyzerError,
    AuthError,
    ConfigError,
    InvalidOutput,
    PermanentError,
    RateLimited,
    TransientError,
)
from runner.factory import build_stages
from runner.market.synthetic import SyntheticSource
from runner.models import Signal
from runner.pipeline import llm as llm_stages
from runner.pipeline.base import StageRequest
from runner.pipeline.prompts import ADVISE_PROMPT, REPORT_PROMPT, SCORE_PROMPT, SCORE_SCHEMA
from tests.conftest import ROOT, cli_env, free_port, run_cli
from tests.support.stub_llm import Mode, StubLLM, stage_in, text_of

pytestmark = pytest.mark.integration

OPENCODE_VERSION = "1.18.33"
CACHE = ROOT / ".cache" / "opencode"
PROVIDER, MODEL = "stub", "stub-model"
#: Prices per million tokens declared for the stub model, so OpenCode reports a cost.
PRICE_IN, PRICE_OUT = 1.0, 2.0
MINUTE = datetime(2026, 11, 23, 14, 5, tzinfo=UTC)
SERVER_PASSWORD = "the-right-password"
EXAMPLE_AGENTS = ROOT / "examples" / "opencode" / "agent"
#: The agents of the stages after the signal, installed from examples/opencode/agent/.
PIPELINE_AGENTS = ("signal-scorer", "trade-advisor", "cycle-reporter")
#: An agent of a user's own that may read files (for ``tools: agent``).
READER_AGENT = "reader"


# --- OpenCode: install, configure, run -------------------------------------------------------


def opencode_binary() -> Path:
    """The pinned ``opencode`` binary, installed with npm into the cache on first use."""
    binary = CACHE / "node_modules" / ".bin" / "opencode"
    manifest = CACHE / "node_modules" / "opencode-ai" / "package.json"
    with contextlib.suppress(OSError, ValueError):
        if binary.exists() and json.loads(manifest.read_text())["version"] == OPENCODE_VERSION:
            return binary
    npm = shutil.which("npm")
    if not npm:
        pytest.fail(
            "npm is not installed: the OpenCode tests need it to install opencode-ai "
            "(apt-get install nodejs npm)",
            pytrace=False,
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(CACHE),
            f"opencode-ai@{OPENCODE_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0 or not binary.exists():
        pytest.fail(
            f"npm install opencode-ai@{OPENCODE_VERSION} failed:\n{proc.stderr[-2000:]}", pytrace=False
        )
    return binary


def opencode_config(stub_url: str) -> dict[str, Any]:
    """A config whose only provider is the stub, and the signal-generator agent."""
    return {
        "$schema": "https://opencode.ai/config.json",
        "enabled_providers": [PROVIDER],
        "model": f"{PROVIDER}/{MODEL}",
        "small_model": f"{PROVIDER}/{MODEL}",
        "share": "disabled",
        "autoupdate": False,
        "snapshot": False,
        "lsp": False,
        "formatter": False,
        "provider": {
            PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Stub LLM",
                "options": {"baseURL": stub_url + "/v1", "apiKey": "stub-key"},
                "models": {
                    MODEL: {
                        "name": "Stub model",
                        "tool_call": True,
                        "cost": {"input": PRICE_IN, "output": PRICE_OUT},
                        "limit": {"context": 128000, "output": 4096},
                    }
                },
            }
        },
        "agent": {
            "signal-generator": {
                "description": "Answers with one trading-signal JSON object; no tools.",
                "mode": "primary",
                "prompt": "You are a trading-signal generator. Answer only with the JSON object asked for.",
                "permission": {"*": "deny", "StructuredOutput": "allow"},
            },
            READER_AGENT: {
                "description": "Scores signals and may read files to do so.",
                "mode": "primary",
                "prompt": "You are a signal scorer that may read files.",
                "permission": {"*": "deny", "read": "allow", "StructuredOutput": "allow"},
            },
        },
    }


@dataclass
class OpenCodeServer:
    """An ``opencode serve`` process of our own, with its own home and config."""

    process: subprocess.Popen[str]
    port: int
    root: Path
    password: str | None = None
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        auth = ("opencode", self.password) if self.password else None
        return httpx.Client(base_url=self.url, auth=auth, timeout=60)  # a loaded machine's OpenCode is slow

    def sessions(self) -> list[dict[str, Any]]:
        with self.client() as c:
            listed: list[dict[str, Any]] = c.get("/session").json()
            return listed

    def busy(self) -> dict[str, Any]:
        with self.client() as c:
            status: dict[str, Any] = c.get("/session/status").json()
            return status

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # after aborted runs it sometimes takes > 5 s to obey
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.root, ignore_errors=True)


def start_opencode(stub_url: str, password: str | None = None, ready_within: float = 60) -> OpenCodeServer:
    binary = opencode_binary()
    root = Path(tempfile.mkdtemp(prefix="runner-opencode-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENCODE", "XDG_")) and not k.endswith("_API_KEY")
    }
    for var, sub in (
        ("HOME", "home"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_STATE_HOME", "state"),
    ):
        (root / sub).mkdir()
        env[var] = str(root / sub)
    work = root / "work"
    # Every config dir OpenCode looks at gets a package.json and node_modules/, or it npm-installs
    # its plugin package there at start.
    for config_dir in (root / "config" / "opencode", work / ".opencode"):
        (config_dir / "node_modules").mkdir(parents=True)
        (config_dir / "package.json").write_text("{}\n")
    config = root / "config" / "opencode" / "opencode.json"
    config.write_text(json.dumps(opencode_config(stub_url), indent=2))
    # The pipeline's agents are the example files themselves, as a user installs them.
    agents = root / "config" / "opencode" / "agent"
    agents.mkdir()
    for name in PIPELINE_AGENTS:
        shutil.copy(EXAMPLE_AGENTS / f"{name}.md", agents / f"{name}.md")
    env.update(
        OPENCODE_CONFIG=str(config),
        OPENCODE_DISABLE_MODELS_FETCH="1",
        OPENCODE_DISABLE_AUTOUPDATE="1",
        OPENCODE_DISABLE_LSP_DOWNLOAD="1",
    )
    if password:
        env["OPENCODE_SERVER_PASSWORD"] = password
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "serve", "--port", str(port), "--hostname", "127.0.0.1", "--print-logs"],
        env=env,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    server = OpenCodeServer(proc, port, root, password)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.output.append(line)
            del server.output[:-200]
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="opencode-output", daemon=True).start()
    deadline = time.monotonic() + ready_within
    # A request sent before "server listening" can hang forever: wait for the line.
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = ""
        if line is None or time.monotonic() > deadline:
            server.stop()
            pytest.fail(
                f"opencode serve did not start within {ready_within}s:\n{''.join(server.output[-30:])}",
                pytrace=False,
            )
        if "server listening" in line:
            return server


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def stub() -> Iterator[StubLLM]:
    llm = StubLLM(models=[MODEL]).start()
    yield llm
    llm.stop()


@pytest.fixture(scope="session")
def opencode(stub: StubLLM) -> Iterator[OpenCodeServer]:
    server = start_opencode(stub.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def locked_opencode(stub: StubLLM) -> Iterator[OpenCodeServer]:
    """A second server, with OPENCODE_SERVER_PASSWORD set."""
    server = start_opencode(stub.url, password=SERVER_PASSWORD)
    yield server
    server.stop()


#: In-process tests give the clean-up five times the room it has in a cycle: what they check is
#: that a session is aborted and deleted, within a bound; the bound's value is the cycle's choice,
#: and a loaded machine's OpenCode can take longer than 3 s to answer a DELETE.
CLEANUP_ROOM = 5


@pytest.fixture(autouse=True)
def roomy_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opencode_module, "CLEANUP_SECONDS", opencode_module.CLEANUP_SECONDS * CLEANUP_ROOM)
    monkeypatch.setattr(opencode_module, "ABORT_SECONDS", opencode_module.ABORT_SECONDS * CLEANUP_ROOM)


@pytest.fixture(autouse=True)
def no_leftover_sessions(request: pytest.FixtureRequest) -> Iterator[None]:
    """A session one test leaves behind is that test's failure, not every later test's."""
    yield
    for name in ("opencode", "locked_opencode"):
        if name in request.fixturenames:
            server: OpenCodeServer = request.getfixturevalue(name)
            with server.client() as c, contextlib.suppress(httpx.HTTPError):
                for session in ours(server):
                    c.delete(f"/session/{session['id']}")


@pytest.fixture
def llm(stub: StubLLM) -> StubLLM:
    """The session's stub, reset to valid answers for this test."""
    stub.reset()
    return stub


def settings_for(url: str, **analyzer: Any) -> Settings:
    return Settings(
        analyzer={"backend": "opencode", "opencode_url": url, "model": f"{PROVIDER}/{MODEL}", **analyzer}
    )


@pytest.fixture
async def analyzer(opencode: OpenCodeServer) -> AsyncIterator[OpenCodeAnalyzer]:
    a = OpenCodeAnalyzer(settings_for(opencode.url))
    yield a
    await a.aclose()


#: The budget of a call that should get its answer: the stub answers at once, so this only bounds
#: how long OpenCode may take on a loaded machine (a first message has taken over 10 s there).
ANSWER_BUDGET = 60.0


async def request_for(symbol: str = "ETH/USD", budget: float = ANSWER_BUDGET) -> AnalysisRequest:
    candles = await SyntheticSource().candles(symbol, MINUTE, 60)
    return AnalysisRequest(
        symbol=symbol, candles=candles, scheduled_minute=MINUTE, timeout=budget, cycle_id="c1"
    )


async def eventually(check: Any, within: float = 15.0) -> None:
    """Poll ``check()`` until it is true; fail the test after ``within`` seconds."""
    end = time.monotonic() + within
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.05)


def ours(server: OpenCodeServer) -> list[dict[str, Any]]:
    """Sessions the analyzer created (by their title) that still exist."""
    return [s for s in server.sessions() if s.get("title", "").startswith("signal ")]


def settle(server: OpenCodeServer, within: float = 15.0) -> None:
    """Wait until no session is busy (a cleanup may still be landing); the caller asserts it."""
    end = time.monotonic() + within
    while server.busy() and time.monotonic() < end:
        time.sleep(0.05)


# --- the analyzer against a real server ------------------------------------------------------


async def test_a_valid_signal_with_provenance_and_the_session_is_gone(analyzer, llm, opencode):
    llm.mode = Mode(action="SELL", confidence=0.61, price=3120.5)
    request = await request_for("ETH/USD")

    analysis = await analyzer.analyze(request)

    assert (analysis.symbol, analysis.action, analysis.confidence, analysis.price) == (
        "ETH/USD",
        "SELL",
        0.61,
        3120.5,
    )
    assert analysis.analyzer == "opencode"
    assert analysis.model == analysis.requested_model == f"{PROVIDER}/{MODEL}"
    assert analysis.prompt_hash == prompt_hash(SYSTEM_PROMPT, user_prompt(request))
    assert (analysis.tokens_in, analysis.tokens_out) == (120, 40)
    assert analysis.cost_usd == pytest.approx((120 * PRICE_IN + 40 * PRICE_OUT) / 1e6)
    # What reached the model: our prompt, and no tool but the structured-output one.
    [sent] = llm.chat_requests()
    assert sent.model == MODEL
    assert sent.tools == ["StructuredOutput"]
    assert sent.body["tool_choice"] == "required"
    assert SYSTEM_PROMPT in sent.messages[0]["content"]
    assert sent.messages[-1]["content"] == user_prompt(request)
    assert ours(opencode) == []


async def test_a_text_answer_is_used_when_the_model_ignores_the_tool(analyzer, llm):
    llm.mode = Mode(use_tool=False, action="HOLD", confidence=0.5)

    analysis = await analyzer.analyze(await request_for("BTC/USD"))

    assert (analysis.symbol, analysis.action) == ("BTC/USD", "HOLD")


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        (Mode("wrong_symbol"), "asked for 'ETH/USD'"),
        (Mode("bad_confidence"), "not in [0, 1]"),
        (Mode("malformed"), "not JSON"),
        (Mode("malformed", use_tool=False), "not JSON"),
        (Mode("text", text='{"symbol": "ETH/USD", "action": "MOON", "confidence": 0.5}'), ""),
    ],
    ids=["wrong-symbol", "confidence-out-of-range", "broken-tool-arguments", "broken-text", "schema"],
)
async def test_invalid_output_from_the_model_is_invalid_output(analyzer, llm, opencode, mode, says):
    llm.mode = mode

    with pytest.raises(InvalidOutput) as caught:
        await analyzer.analyze(await request_for("ETH/USD"))

    assert says in str(caught.value)
    assert ours(opencode) == []


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthError), (402, AuthError), (400, PermanentError), (403, PermanentError)],
)
async def test_a_model_api_error_in_a_200_maps_to_the_right_class(analyzer, llm, opencode, status, error):
    llm.mode = Mode("http_error", status=status)

    with pytest.raises(error) as caught:
        await analyzer.analyze(await request_for())

    if error is PermanentError:
        assert not isinstance(caught.value, AuthError)
    assert f"HTTP {status}" in str(caught.value)
    assert ours(opencode) == []


async def test_a_rate_limit_that_outlasts_opencode_retries_is_rate_limited(analyzer, llm):
    # OpenCode retries a 429 by itself, honouring Retry-After, then gives up with the error.
    llm.mode = Mode("http_error", status=429, retry_after=0)

    with pytest.raises(TransientError) as caught:
        await analyzer.analyze(await request_for(budget=8))

    if isinstance(caught.value, RateLimited):
        assert "HTTP 429" in str(caught.value)
    else:  # still retrying when our time ran out: also transient
        assert "within" in str(caught.value)


@pytest.mark.parametrize("mode", [Mode("http_error", status=500), Mode("keepalive"), Mode("hang")])
async def test_a_failing_or_silent_model_is_transient_and_the_run_is_aborted(analyzer, llm, opencode, mode):
    llm.mode = mode
    began = time.monotonic()

    with pytest.raises(TransientError, match="within"):
        await analyzer.analyze(await request_for(budget=1.0))

    bound = 1.0 + opencode_module.CLEANUP_SECONDS + 0.5
    assert time.monotonic() - began < bound, "our timeout holds, cleanup included"
    await analyzer.aclose()  # waits for a clean-up still landing (a session created late)
    settle(opencode)
    assert opencode.busy() == {}, "the run was aborted, not left going"
    assert ours(opencode) == []


async def test_a_cancelled_analysis_aborts_and_deletes_its_session(analyzer, llm, opencode):
    """What the cycle does on a symbol timeout or SIGTERM: cancel the call from outside."""
    llm.mode = Mode("hang")
    request = await request_for(budget=10.0)

    task = asyncio.create_task(analyzer.analyze(request))
    await eventually(llm.chat_requests)  # the model is being asked: the session exists, busy
    assert len(ours(opencode)) == 1
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await asyncio.shield(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await analyzer.aclose()  # waits for a clean-up still landing

    assert ours(opencode) == [], "the session is deleted even though the call was cancelled"
    settle(opencode)
    assert opencode.busy() == {}
    await eventually(lambda: llm.active == 0)
    assert llm.active == 0, "OpenCode hung up on the model: the run really stopped"


@pytest.mark.parametrize("after", [0.0, 0.01, 0.03, 0.06, 0.1, 0.2])
async def test_a_call_cancelled_at_any_moment_leaves_no_session(analyzer, llm, opencode, after):
    """Even while the session is being created: the server may create it after we gave up."""
    llm.mode = Mode("hang")
    request = await request_for(budget=10.0)

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(after):
            await analyzer.analyze(request)
    await analyzer.aclose()  # waits for clean-ups still landing

    settle(opencode)
    assert ours(opencode) == []
    assert opencode.busy() == {}


async def test_timeout_from_outside_like_the_cycle(analyzer, llm, opencode):
    llm.mode = Mode("hang")

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await analyzer.analyze(await request_for(budget=1.0))
    await analyzer.aclose()  # waits for a clean-up still landing (the session may come late)

    settle(opencode)
    assert ours(opencode) == []
    assert opencode.busy() == {}


async def test_two_symbols_at_once_get_their_own_sessions(analyzer, llm, opencode):
    requests = [await request_for(s) for s in ("ETH/USD", "BTC/USD")]

    results = await asyncio.gather(*(analyzer.analyze(r) for r in requests))

    assert [a.symbol for a in results] == ["ETH/USD", "BTC/USD"]
    assert len(llm.chat_requests()) == 2
    assert ours(opencode) == []


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"agent": "no-such-agent"}, "no agent 'no-such-agent'"),
        ({"model": f"{PROVIDER}/no-such-model"}, f"no model '{PROVIDER}/no-such-model'"),
        ({"model": "nowhere/x"}, "no provider 'nowhere'"),
    ],
)
async def test_an_unknown_agent_or_model_is_permanent_and_says_which(opencode, llm, overrides, says):
    a = OpenCodeAnalyzer(settings_for(opencode.url, **overrides))
    try:
        with pytest.raises(PermanentError, match=says):
            await a.analyze(await request_for())
    finally:
        await a.aclose()
    assert llm.chat_requests() == []
    assert ours(opencode) == []


async def test_an_unreachable_server_is_transient():
    a = OpenCodeAnalyzer(settings_for(f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(TransientError, match="cannot reach the OpenCode server"):
            await a.analyze(await request_for(budget=2))
    finally:
        await a.aclose()


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"opencode_url": None}, "opencode_url"),
        ({"opencode_url": "opencode:4096"}, "opencode_url"),
        ({"model": None}, "model"),
        ({"model": "gpt-4o-mini"}, "model"),
        ({"model": "openrouter/"}, "model"),
    ],
)
def test_bad_settings_are_a_config_error_naming_the_setting(overrides, field_name):
    with pytest.raises(ConfigError) as caught:
        OpenCodeAnalyzer(settings_for("http://127.0.0.1:4096", **overrides))
    message = str(caught.value)
    assert message.startswith(f"autonomous_runner.analyzer.{field_name}:")
    assert "\n" not in message


async def test_the_server_password_is_sent_and_never_shown(locked_opencode, llm, caplog):
    ok = OpenCodeAnalyzer(settings_for(locked_opencode.url, opencode_password=SERVER_PASSWORD))
    # credentials in the URL work too, and the URL the analyzer keeps has none
    port = locked_opencode.port
    in_url = OpenCodeAnalyzer(settings_for(f"http://opencode:{SERVER_PASSWORD}@127.0.0.1:{port}/"))
    wrong = OpenCodeAnalyzer(settings_for(locked_opencode.url, opencode_password="a-wrong-password"))
    try:
        assert (await ok.analyze(await request_for())).symbol == "ETH/USD"
        assert (await in_url.analyze(await request_for())).symbol == "ETH/USD"
        assert in_url.client.base_url == f"http://127.0.0.1:{port}"
        with pytest.raises(AuthError, match="OPENCODE_SERVER_PASSWORD") as caught:
            await wrong.analyze(await request_for())
    finally:
        for a in (ok, in_url, wrong):
            await a.aclose()
    shown = str(caught.value) + caplog.text
    assert SERVER_PASSWORD not in shown
    assert "a-wrong-password" not in shown
    assert ours(locked_opencode) == []


def test_every_kind_of_info_error_maps_to_a_runner_error():
    def err(name: str, **data: Any) -> AnalyzerError:
        return error_from_info({"name": name, "data": data})

    def api(status: int | None, **headers: str) -> AnalyzerError:
        return err("APIError", message="m", statusCode=status, isRetryable=True, responseHeaders=headers)

    assert type(err("ProviderAuthError", providerID="openrouter", message="no key")) is AuthError
    assert type(api(401)) is AuthError
    assert type(api(402)) is AuthError
    assert type(api(400)) is PermanentError
    assert type(api(403)) is PermanentError
    assert type(api(404)) is PermanentError
    limited = api(429, **{"retry-after": "7"})
    assert type(limited) is RateLimited
    assert limited.retry_after == 7.0
    assert type(api(408)) is TransientError
    unavailable = api(503, **{"retry-after": "2"})
    assert type(unavailable) is TransientError
    assert unavailable.retry_after == 2.0
    assert type(api(None)) is TransientError
    assert type(err("StructuredOutputError", message="m", retries=0)) is InvalidOutput
    assert type(err("MessageOutputLengthError")) is InvalidOutput
    assert type(err("ContextOverflowError", message="m")) is PermanentError
    assert type(err("ContentFilterError", message="m")) is PermanentError
    assert type(err("MessageAbortedError", message="Aborted")) is TransientError
    assert type(err("UnknownError", message="m")) is TransientError
    assert type(err("SomethingNew")) is TransientError
    assert type(error_from_info("nonsense")) is TransientError


def scripted_server(answers: dict[str, httpx.Response]) -> httpx.MockTransport:
    """An OpenCode server that answers each (method, route) with a fixed response."""

    def handle(request: httpx.Request) -> httpx.Response:
        route = "/".join("{id}" if p.startswith("ses_") else p for p in request.url.path.split("/"))
        key = f"{request.method} {route}"
        if key in answers:
            return answers[key]
        if key == "POST /session":
            return httpx.Response(200, json={"id": "ses_1", "title": "t"})
        return httpx.Response(200, json=True)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("answers", "error", "says"),
    [
        ({"POST /session": httpx.Response(401)}, AuthError, "requires a password"),
        ({"POST /session": httpx.Response(429, headers={"Retry-After": "3"})}, RateLimited, "HTTP 429"),
        ({"POST /session": httpx.Response(503, text="down")}, TransientError, "HTTP 503"),
        ({"POST /session": httpx.Response(400, json={"_tag": "BadRequest"})}, PermanentError, "HTTP 400"),
        ({"POST /session": httpx.Response(200, text="<html>")}, TransientError, "not JSON"),
        ({"POST /session/{id}/message": httpx.Response(404)}, TransientError, "HTTP 404"),
        ({"POST /session/{id}/message": httpx.Response(200, json={"parts": []})}, TransientError, "without"),
    ],
    ids=["401", "429", "503", "400", "html", "session-gone", "no-info"],
)
async def test_http_errors_of_the_server_itself(answers, error, says):
    a = OpenCodeAnalyzer(settings_for("http://opencode.test:4096"), transport=scripted_server(answers))
    try:
        with pytest.raises(error, match=says) as caught:
            await a.analyze(await request_for(budget=2))
    finally:
        await a.aclose()
    if error is RateLimited:
        assert caught.value.retry_after == 3.0


# --- the real CLI ----------------------------------------------------------------------------


def runner_env(redis_url: str, state_dir: Path, opencode_url: str, **extra: str) -> dict[str, str]:
    return cli_env(
        redis_url,
        state_dir,
        RUNNER_ANALYZER__BACKEND="opencode",
        OPENCODE_URL=opencode_url,
        RUNNER_ANALYZER__MODEL=f"{PROVIDER}/{MODEL}",
        RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS=str(ANSWER_BUDGET),
        RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_SECONDS=str(ANSWER_BUDGET - 15),
        RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_MAX_SECONDS=str(ANSWER_BUDGET - 15),
        RUNNER_RETRY__DELAY_SECONDS="0.01",
        **extra,
    )


def test_a_cycle_through_opencode_publishes_two_signals(real_redis, redis_server, opencode, llm, tmp_path):
    env = runner_env(redis_server.url, tmp_path, opencode.url)

    result = run_cli(["cycle", "--json", "--symbols", "ETH/USD,BTC/USD"], env, timeout=ANSWER_BUDGET + 30)

    assert result.code == 0, result.stderr
    doc = result.json()
    assert doc["status"] == "completed"
    published = [json.loads(fields["signal"]) for _, fields in real_redis.xrange("signals:raw")]
    assert sorted(s["symbol"] for s in published) == ["BTC/USD", "ETH/USD"]
    assert {s["analyzer"] for s in published} == {"opencode"}
    assert {s["model"] for s in published} == {f"{PROVIDER}/{MODEL}"}
    assert len(llm.chat_requests()) == 2
    assert ours(opencode) == []


def test_a_wrong_server_password_fails_fast_with_one_clear_line(
    real_redis, redis_server, locked_opencode, llm, tmp_path
):
    env = runner_env(
        redis_server.url, tmp_path, locked_opencode.url, OPENCODE_SERVER_PASSWORD="a-wrong-password"
    )

    began = time.monotonic()
    result = run_cli(["cycle", "--json", "--symbols", "ETH/USD,BTC/USD"], env)

    assert result.code == 3, (result.stdout, result.stderr)
    assert time.monotonic() - began < 15
    assert "Traceback" not in result.stderr
    assert "a-wrong-password" not in result.stdout + result.stderr
    assert SERVER_PASSWORD not in result.stdout + result.stderr
    # the cycle's outcome line says what is wrong, once (the JSON on stdout has it too)
    errors = [line for line in result.stderr.splitlines() if "OPENCODE_SERVER_PASSWORD" in line]
    assert len(errors) == 1, result.stderr
    assert "refused our credentials (HTTP 401)" in errors[0]
    assert result.json()["status"] == "failed"
    assert llm.chat_requests() == []
    assert real_redis.xlen("signals:raw") == 0


# --- the pipeline's stages through OpenCode, with the example agents ---------------------------

STAGE_TITLES = ("signal ", "score ", "advise ", "report ")


def pipeline_sessions(server: OpenCodeServer) -> list[dict[str, Any]]:
    """Sessions any stage of a cycle created (by their title) that still exist."""
    return [s for s in server.sessions() if s.get("title", "").startswith(STAGE_TITLES)]


def pipeline_env(redis_url: str, state_dir: Path, opencode_url: str, **extra: str) -> dict[str, str]:
    """Every stage on the opencode backend, each to its default (example) agent."""
    return runner_env(
        redis_url,
        state_dir,
        opencode_url,
        RUNNER_PIPELINE__SCORE__BACKEND="opencode",
        RUNNER_PIPELINE__ADVISE__BACKEND="opencode",
        RUNNER_PIPELINE__REPORT__BACKEND="opencode",
        RUNNER_RATE_LIMIT__REQUESTS_PER_MINUTE="6000",
        **extra,
    )


def stage_docs(client: Any, stream: str) -> list[dict[str, Any]]:
    return [json.loads(fields["doc"]) for _, fields in client.xrange(stream)]


def by_stage(stub: StubLLM) -> dict[str, list[Any]]:
    """The chat requests the model received, by the stage each asks for."""
    out: dict[str, list[Any]] = {}
    for request in stub.chat_requests():
        out.setdefault(stage_in(request.messages), []).append(request)
    return out


def system_text(request: Any) -> str:
    return "\n".join(text_of(m.get("content")) for m in request.messages if m.get("role") == "system")


def agent_prompt(name: str) -> str:
    """The first line of an example agent's prompt (after its front matter)."""
    body = (EXAMPLE_AGENTS / f"{name}.md").read_text().split("---", 2)[2]
    return body.strip().splitlines()[0]


def test_a_cycle_with_every_stage_on_opencode_publishes_the_whole_pipeline(
    real_redis, redis_server, opencode, llm, tmp_path
):
    env = pipeline_env(redis_server.url, tmp_path, opencode.url)

    result = run_cli(["cycle", "--json", "--symbols", "ETH/USD,BTC/USD"], env)

    assert result.code == 0, result.stderr
    doc = result.json()
    assert doc["status"] == "completed"
    assert [r["stages"] for r in doc["results"]] == [{"signal": "ok", "score": "ok", "advise": "ok"}] * 2
    assert doc["report_status"] == "ok"
    assert real_redis.xlen("signals:raw") == 2
    scores = stage_docs(real_redis, "signals:scored")
    advice = stage_docs(real_redis, "signals:advised")
    reports = stage_docs(real_redis, "reports:cycle")
    assert sorted(d["symbol"] for d in scores) == ["BTC/USD", "ETH/USD"]
    assert sorted(d["symbol"] for d in advice) == ["BTC/USD", "ETH/USD"]
    assert len(reports) == 1
    for stage_doc in (*scores, *advice, *reports):
        assert stage_doc["analyzer"] == "opencode"
        assert stage_doc["model"] == f"{PROVIDER}/{MODEL}"
        assert stage_doc["cost_usd"] == pytest.approx((120 * PRICE_IN + 40 * PRICE_OUT) / 1e6)
    assert {(d["score"], d["grade"]) for d in scores} == {(72, "B")}
    assert reports[0]["summary"] == "**stub report**: every symbol went through."
    # Each stage reached the model through its own example agent, with our prompt, and no tool
    # but the answer.
    asked = by_stage(llm)
    assert {stage: len(requests) for stage, requests in asked.items()} == {
        "signal": 2,
        "score": 2,
        "advise": 2,
        "report": 1,
    }
    for stage, agent, prompt in (
        ("score", "signal-scorer", SCORE_PROMPT),
        ("advise", "trade-advisor", ADVISE_PROMPT),
        ("report", "cycle-reporter", REPORT_PROMPT),
    ):
        for request in asked[stage]:
            assert agent_prompt(agent) in system_text(request), agent
            assert prompt in system_text(request)
            assert request.tools == ["StructuredOutput"]
    assert pipeline_sessions(opencode) == []


def test_a_stage_failing_on_opencode_skips_the_later_stages_and_invents_nothing(
    real_redis, redis_server, opencode, llm, tmp_path
):
    llm.per_stage["score"] = Mode("bad_confidence")  # a score of 150
    env = pipeline_env(redis_server.url, tmp_path, opencode.url)

    result = run_cli(["cycle", "--json", "--symbols", "ETH/USD,BTC/USD"], env)

    assert result.code == 3, result.stderr
    doc = result.json()
    for symbol_result in doc["results"]:
        assert symbol_result["stages"] == {"signal": "ok", "score": "failed", "advise": "skipped"}
        assert symbol_result["code"] == "invalid_output"
        assert symbol_result["stage_reasons"]["advise"] == "upstream score failed"
        assert "less than or equal to 100" in symbol_result["stage_reasons"]["score"]
    assert real_redis.xlen("signals:raw") == 2
    assert real_redis.xlen("signals:scored") == 0
    assert real_redis.xlen("signals:advised") == 0
    assert real_redis.hlen("signals:latest:advised") == 0
    assert "advise" not in by_stage(llm), "no advice is asked for after a failed score"
    [report] = stage_docs(real_redis, "reports:cycle")
    assert (report["counts"]["scores"], report["counts"]["advice"]) == (0, 0)
    assert pipeline_sessions(opencode) == []


async def stage_request(symbol: str = "ETH/USD") -> StageRequest:
    candles = await SyntheticSource().candles(symbol, MINUTE, 60)
    signal = Signal(
        id=f"{symbol}:2026-11-23T14:05",
        symbol=symbol,
        action="BUY",
        confidence=0.7,
        reasoning="uptrend",
        price=100.0,
        generated_at="2026-11-23T14:05:01.000Z",
        cycle_id="c1",
        instance_id="i1",
        analyzer="opencode",
        model=f"{PROVIDER}/{MODEL}",
        latency_ms=300,
        fencing_token=1,
    )
    return StageRequest(
        stage="score", symbol=symbol, candles=candles, scheduled_minute=MINUTE, timeout=10.0, signal=signal
    )


@pytest.mark.parametrize("tools", ["none", "agent"])
async def test_tools_agent_lets_the_agent_keep_its_own_tools(opencode, llm, tools):
    settings = Settings(
        analyzer={"opencode_url": opencode.url, "model": f"{PROVIDER}/{MODEL}"},
        pipeline={"score": {"backend": "opencode", "agent": READER_AGENT, "tools": tools}},
    )
    stages = build_stages(settings)
    try:
        answer = await stages.scorer.answer(await stage_request())
    finally:
        await stages.aclose()

    assert (answer.score, answer.grade) == (72, "B")
    [sent] = llm.chat_requests()
    assert "You are a signal scorer that may read files." in system_text(sent)
    if tools == "agent":  # no override: what the agent's own permissions grant
        assert {"read", "StructuredOutput"} <= set(sent.tools)
    else:
        assert sent.tools == ["StructuredOutput"]
    assert pipeline_sessions(opencode) == []


@pytest.mark.parametrize("tools", ["none", "agent"])
async def test_the_prompt_carries_a_tools_override_unless_the_stage_says_tools_agent(tools):
    sent: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/message"):
            sent.append(json.loads(request.content))
            info = {"structured": {"symbol": "ETH/USD", **SCORED}, "providerID": PROVIDER, "modelID": MODEL}
            return httpx.Response(200, json={"info": info, "parts": []})
        if request.method == "POST" and request.url.path == "/session":
            return httpx.Response(200, json={"id": "ses_1", "title": "t"})
        return httpx.Response(200, json=True)

    settings = Settings(
        analyzer={"opencode_url": "http://opencode.test:4096", "model": f"{PROVIDER}/{MODEL}"},
        pipeline={"score": {"backend": "opencode", "tools": tools}},
    )
    client = OpenCodeClient(
        settings,
        model=f"{PROVIDER}/{MODEL}",
        agent="signal-scorer",
        field="pipeline.score",
        transport=httpx.MockTransport(handle),
    )
    scorer = llm_stages.stage(client, "score", "signal-scorer", tools == "agent")
    try:
        await scorer.answer(await stage_request())
    finally:
        await scorer.aclose()

    [prompt] = sent
    assert prompt["agent"] == "signal-scorer"
    assert prompt["format"] == {"type": "json_schema", "schema": SCORE_SCHEMA}
    if tools == "agent":
        assert "tools" not in prompt
    else:
        assert prompt["tools"] == {"*": False, "StructuredOutput": True}


SCORED = {"score": 72, "grade": "B", "factors": ["trend"], "reasoning": "fine"}
