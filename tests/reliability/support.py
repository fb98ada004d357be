"""Helpers of the reliability suite.

* ``spawn``: the real ``runner`` CLI as a subprocess whose output goes to files and whose exit is
  reaped with ``os.wait4``, so its wall time and peak RSS are measured;
* ``frozen``: SIGSTOP a redis-server of our own, always SIGCONT on the way out;
* fault servers the stub LLM does not offer: a proxy that resets the first connections, a raw
  socket server that sends headers and then only whitespace, a black hole.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, CliResult, RedisServer
from tests.integration.helpers import env_for

#: Short settings for reliability runs (on top of tests.integration.helpers.FAST).
QUICK: dict[str, str] = {
    "RUNNER_RATE_LIMIT__REQUESTS_PER_MINUTE": "100000",
}


def runner_env(redis_url: str | None, state_dir: Path, **extra: str) -> dict[str, str]:
    """``env_for`` (FAST timeouts, scripted analyzer, this minute) plus ``QUICK``."""
    return env_for(redis_url, state_dir, **{**QUICK, **extra})


def stub_env(redis_url: str | None, state_dir: Path, stub_url: str, **extra: str) -> dict[str, str]:
    """A runner environment whose ``openai`` backend talks to a stub at ``stub_url``."""
    return runner_env(
        redis_url,
        state_dir,
        RUNNER_ANALYZER__BACKEND="openai",
        RUNNER_ANALYZER__MODEL="stub-model",
        RUNNER_ANALYZER__BASE_URL=f"{stub_url}/v1",
        RUNNER_ANALYZER__PLUGIN="",
        **extra,
    )


@dataclass
class Proc:
    """A runner process started by ``spawn``."""

    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    started: float
    ended: float | None = None
    #: Peak RSS of the runner itself (VmHWM of its own address space, sampled from /proc while
    #: it runs). ``wait4``'s ru_maxrss is kept too, but on Linux it also counts the high-water mark
    #: of the address space the child was forked from (the test process), so it cannot show the
    #: runner's own growth.
    peak_rss_kb: int | None = None
    maxrss_kb: int | None = None
    signals: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def code(self) -> int | None:
        return self.popen.returncode

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def sample(self) -> None:
        """Read the process's own peak RSS (VmHWM) while it is alive."""
        try:
            with open(f"/proc/{self.popen.pid}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        self.peak_rss_kb = max(self.peak_rss_kb or 0, int(line.split()[1]))
                        return
        except (OSError, ValueError, IndexError):
            return

    def poll(self) -> bool:
        """Reap the process if it has exited (sampling its peak RSS while it has not); True once
        it has."""
        if self.popen.returncode is not None:
            return True
        self.sample()
        try:
            pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
        except ChildProcessError:
            self.popen.returncode = -1
            self.ended = time.monotonic()
            return True
        if pid == 0:
            return False
        self.ended = time.monotonic()
        self.maxrss_kb = int(usage.ru_maxrss)
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        return True

    def wait(self, timeout: float) -> CliResult:
        """Wait for the exit (killing the process after ``timeout`` and failing the test)."""
        end = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > end:
                self.kill()
                raise AssertionError(f"runner did not exit within {timeout}s; stderr:\n{self.stderr[-3000:]}")
            time.sleep(0.005)
        return self.result()

    def send(self, sig: signal.Signals) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)
                self.signals.append(sig.name)

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.send(signal.SIGKILL)
        end = time.monotonic() + 10
        while not self.poll() and time.monotonic() < end:
            time.sleep(0.005)

    @property
    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")

    def result(self) -> CliResult:
        assert self.popen.returncode is not None, "still running"
        return CliResult(self.popen.returncode, self.stdout, self.stderr)

    def json(self) -> Any:
        return json.loads(self.stdout)


_counter = iter(range(1_000_000))


def spawn(args: list[str], env: dict[str, str], directory: Path) -> Proc:
    """Start ``python -m runner ARGS`` with stdout and stderr in files under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    n = next(_counter)
    out, err = directory / f"run{n}.out", directory / f"run{n}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        popen = subprocess.Popen(
            [sys.executable, "-m", "runner", *args],
            env=env,
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
    return Proc(popen, out, err, time.monotonic())


def run(args: list[str], env: dict[str, str], directory: Path, timeout: float = 60) -> Proc:
    """``spawn`` and wait."""
    proc = spawn(args, env, directory)
    proc.wait(timeout)
    return proc


def reap_all(procs: list[Proc]) -> None:
    """Kill and reap whatever is still running (test clean-up)."""
    for p in procs:
        if not p.poll():
            p.kill()


# --- a Redis of our own -----------------------------------------------------------------------


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """SIGSTOP the server for the block; SIGCONT however the block ends."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        thaw(server)


def thaw(server: RedisServer) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.process.pid, signal.SIGCONT)


def stop_server(server: RedisServer) -> None:
    """SIGCONT (a stopped process ignores SIGTERM until continued), then stop."""
    thaw(server)
    server.stop()


# --- fault servers ------------------------------------------------------------------------------


class _Listener:
    """A loopback TCP listener with an accept thread; subclasses handle each connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> _Listener:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self.conns.append(conn)
            t = threading.Thread(target=self._guard, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _guard(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.handle(conn)

    def handle(self, conn: socket.socket) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(2)
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()
        for t in self.threads:
            t.join(2)
        self.sock.close()


def read_request(conn: socket.socket, timeout: float = 5.0) -> bytes:
    """Read one HTTP request (headers and a Content-Length body)."""
    conn.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class ResettingProxy(_Listener):
    """Resets (RST) the first ``resets`` connections after reading their request, then forwards
    every later connection to ``target_port`` (the stub LLM)."""

    def __init__(self, target_port: int, resets: int) -> None:
        super().__init__()
        self.target_port = target_port
        self.resets_left = resets
        self.reset_count = 0
        self._lock = threading.Lock()

    def handle(self, conn: socket.socket) -> None:
        with self._lock:
            reset = self.resets_left > 0
            if reset:
                self.resets_left -= 1
                self.reset_count += 1
        if reset:
            read_request(conn)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
        self.conns.append(upstream)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        self.threads.append(back)
        back.start()
        pump(conn, upstream)


class WhitespaceServer(_Listener):
    """Answers every request with 200 headers (a long Content-Length) and then only a blank
    every ``every`` seconds: a response that never completes, yet never goes quiet."""

    def __init__(self, every: float = 0.2) -> None:
        super().__init__()
        self.every = every
        self.requests = 0

    def handle(self, conn: socket.socket) -> None:
        read_request(conn)
        self.requests += 1
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
        while not self.stopping.wait(self.every):
            conn.sendall(b" ")


class BlackHole(_Listener):
    """Accepts connections and never answers."""

    def handle(self, conn: socket.socket) -> None:
        self.stopping.wait()


@contextlib.contextmanager
def serving(server: _Listener) -> Iterator[Any]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def bad_lines(stderr: str) -> list[str]:
    """Lines that betray a crash: tracebacks and Python exception reprs."""
    return [line for line in stderr.splitlines() if "Traceback" in line or line.startswith("  File ")]
