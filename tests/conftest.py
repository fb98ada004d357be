"""Shared fixtures: a real redis-server on a free loopback port, fakeredis with Lua, and a helper
that runs the real ``runner`` CLI as a subprocess.

A missing server binary fails the test run; it is never a silent skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from runner.config import ENV_ALIASES

ROOT = Path(__file__).resolve().parent.parent


def _forget_apprise_thread_pools() -> None:
    """A process forked after Apprise sent something (mutmut forks its workers from the process that
    ran the suite once) inherits Apprise's per-process thread pools without their threads: what it
    hands them never runs, and the test waits until it is killed. The child makes its own."""
    module = sys.modules.get("apprise.apprise")
    for name in ("_shared_executor", "_coordinator_executor"):
        if module is not None and hasattr(module, name):
            setattr(module, name, None)


os.register_at_fork(after_in_child=_forget_apprise_thread_pools)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed; `.ci/run` installs it (apt-get install {name})", pytrace=False)
    return path


@dataclass
class RedisServer:
    """A redis-server process of our own."""

    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_redis(directory: Path, port: int | None = None, *extra: str) -> RedisServer:
    binary = require_binary("redis-server")
    port = port or free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--daemonize",
            "no",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return RedisServer(port, proc, directory)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="runner-redis-"))
    server = start_redis(directory)
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def real_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A sync client of the real server, flushed before each test."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture(params=["fakeredis", "redis-server"])
async def any_redis(request: pytest.FixtureRequest) -> Any:
    """An async client of fakeredis (with Lua), then of the real server, flushed: what the Lua
    scripts do must not depend on which one runs them."""
    if request.param == "fakeredis":
        import fakeredis

        client = fakeredis.FakeAsyncRedis(decode_responses=True)
    else:
        import redis.asyncio as aioredis

        server = request.getfixturevalue("redis_server")
        client = aioredis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
        await client.flushall()
    yield client
    await client.aclose()


def settings_variable(name: str) -> bool:
    """Whether the runner's settings read the environment variable ``name``."""
    return name.startswith("RUNNER_") or name in ENV_ALIASES or name == "KUBERNETES_SERVICE_HOST"


def drop_settings_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings reads ``os.environ`` itself: keep the machine's runner variables out."""
    for name in list(os.environ):
        if settings_variable(name):
            monkeypatch.delenv(name, raising=False)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def cli_env(redis_url: str | None, state_dir: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a runner subprocess."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not settings_variable(k) and not k.startswith(("REDIS_", "SCRIPTED_", "OPENROUTER", "OPENCODE"))
    }
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["RUNNER_STATE_DIR"] = str(state_dir)
    # As in-process tests (filterwarnings = error): a deprecated call fails the run.
    env["PYTHONWARNINGS"] = "error::DeprecationWarning"
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def embedded_client(state_dir: Path) -> redis.Redis:
    """A client of the embedded Redis kept in ``state_dir`` (its unix socket)."""
    sock = str(state_dir / "redis.sock")
    return redis.Redis(unix_socket_path=sock, decode_responses=True, socket_timeout=2)


def embedded_running(state_dir: Path) -> bool:
    """Whether an embedded redis-server answers in ``state_dir``."""
    if not (state_dir / "redis.sock").exists():
        return False
    client = embedded_client(state_dir)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@pytest.fixture
def embedded_dir(tmp_path: Path) -> Iterator[Path]:
    """A state directory for the embedded Redis; a server left running after the test fails it."""
    directory = tmp_path / "state"
    yield directory
    if embedded_running(directory):
        with contextlib.suppress(redis.RedisError, OSError):
            embedded_client(directory).shutdown(nosave=True)
        pytest.fail("an embedded redis-server was left running after the runs")


SCRIPTED = {"RUNNER_ANALYZER__BACKEND": "plugin", "RUNNER_ANALYZER__PLUGIN": "tests.support.scripted:make"}


@dataclass
class Pushgateway:
    """A prometheus-pushgateway of our own, persisting nothing."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """Every sample the gateway serves: name -> {sorted label items: value}."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:  # noqa: S310 - loopback
            text = response.read().decode()
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def wipe(self) -> None:
        import urllib.request

        request = urllib.request.Request(f"{self.url}/api/v1/admin/wipe", method="PUT")  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=5):  # noqa: S310 - loopback
            pass


@pytest.fixture(scope="session")
def pushgateway_server() -> Iterator[Pushgateway]:
    binary = require_binary("prometheus-pushgateway")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=", "--web.enable-admin-api"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    yield Pushgateway(port, proc)
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def pushgateway(pushgateway_server: Pushgateway) -> Pushgateway:
    """The session's gateway, emptied before each test."""
    pushgateway_server.wipe()
    return pushgateway_server


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A real HTTP receiver of notifications on a free loopback port (``tests/support/receiver.py``)."""
    from tests.support.receiver import Receiver

    server = Receiver(free_port())
    server.start()
    yield server
    server.stop()
