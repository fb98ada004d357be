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
from hypothesis import HealthCheck, settings

from runner.config import ENV_ALIASES

ROOT = Path(__file__).resolve().parent.parent

# Hypothesis's per-example deadline and its too-slow health check time the machine: on a loaded
# one a fine example fails them. A hang is still caught by pytest-timeout.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


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


# PostgreSQL ---------------------------------------------------------------------------------------

#: The superuser of the test server (it owns every database the tests create).
PG_ADMIN, PG_ADMIN_PASSWORD = "archive_admin", "admin-secret-7f3a"


def postgres_binaries() -> Path:
    """The directory of Debian's PostgreSQL server binaries (the newest version installed)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    pytest.fail(
        "PostgreSQL is not installed; `.ci/run` installs it (apt-get install postgresql)", pytrace=False
    )


@dataclass
class PostgresServer:
    """A PostgreSQL server of our own on a free loopback port, run by an unprivileged user (the
    server refuses to run as root): ``postgres`` through ``runuser`` when the tests run as root."""

    bin: Path
    data: Path
    port: int
    #: The command prefix that runs a server binary as the unprivileged user.
    as_user: list[str]

    def url(self, database: str = "postgres", user: str = PG_ADMIN, password: str = PG_ADMIN_PASSWORD) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def ctl(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections (``pg_ctl -w``)."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self.ctl("-w", "-t", "60", "-l", str(self.data / "server.log"), "-o", options, "start")

    def stop(self) -> None:
        self.ctl("-w", "-m", "fast", "stop")

    def running(self) -> bool:
        result = subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "status"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0

    def pid(self) -> int:
        """The postmaster's process id (the first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text(encoding="utf-8").splitlines()[0])

    def sql(self, statement: str, database: str = "postgres", params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser; returns its rows."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []


def _unprivileged() -> tuple[list[str], int | None, int | None]:
    """How to run the server's binaries: as ourselves, or as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return [], None, None
    import pwd

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root and no `postgres` user to run PostgreSQL as", pytrace=False)
    return [require_binary("runuser"), "-u", "postgres", "--"], user.pw_uid, user.pw_gid


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (each test makes its own database on it)."""
    bin_dir = postgres_binaries()
    as_user, uid, gid = _unprivileged()
    root = Path(tempfile.mkdtemp(prefix="runner-pg-"))
    data = root / "data"
    data.mkdir()
    pwfile = root / "pw"
    pwfile.write_text(PG_ADMIN_PASSWORD + "\n", encoding="utf-8")
    if uid is not None:
        for path in (root, data, pwfile):
            os.chown(path, uid, gid or -1)
    os.chmod(root, 0o700)
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_ADMIN,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
    )
    server = PostgresServer(bin_dir, data, free_port(), as_user)
    server.start()
    yield server
    if server.running():
        server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> PostgresServer:
    """The session's server, running (a test that stopped it has it started again)."""
    if not postgres_server.running():
        postgres_server.start()
    return postgres_server


@pytest.fixture
def pg_database(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of this test's own, dropped after it; yields its name."""
    import re
    import secrets

    name = "t_" + re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:40] + "_" + secrets.token_hex(3)
    postgres.sql(f'CREATE DATABASE "{name}"')
    yield name
    if not postgres.running():
        postgres.start()
    postgres.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
