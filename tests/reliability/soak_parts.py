"""Parts of the soak (scenario 19) beside the runs themselves.

* ``RoutedStub``: the stub LLM answering each run as that run's plan says (a run's stages talk to
  ``<stub>/<tag>/v1``), so that overlapping runs get their own faults;
* ``Watcher``: one SSE client of ``runner serve``'s ``/api/events`` that disconnects at random
  and resumes with ``Last-Event-ID``, counting every stream entry it is shown;
* ``Restartable``: a redis-server with an append-only file synced on every write, killed and
  started again on the same port;
* ``RssTrail``: a process's resident set size, sampled over time.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import RedisServer, start_redis
from tests.reliability.support import stop_server
from tests.support.stub_llm import Mode, Recorded, StubLLM, _Handler, _Server

#: The SSE events of the feed, in the cursor's order, and the stream each one serves.
FEED: tuple[tuple[str, str], ...] = (
    ("signal", "signals:raw"),
    ("score", "signals:scored"),
    ("advice", "signals:advised"),
    ("report", "reports:cycle"),
    ("cycle", "runner:cycles"),
)

_route = threading.local()


class RoutedStub(StubLLM):
    """The stub LLM with one plan per run: ``plans[tag][stage]`` is how ``stage`` of the run
    whose base URL is ``<url>/<tag>/v1`` is answered (a valid answer when the plan says
    nothing). Requests are counted per stage, not kept: a soak sends thousands."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.plans: dict[str, dict[str, Mode]] = {}
        self.asked: Counter[str] = Counter()

    def start(self) -> RoutedStub:
        stub = self

        class Handler(_Handler):
            owner = stub

            def do_POST(self) -> None:
                _route.tag = self.path.strip("/").split("/")[0]
                super().do_POST()

        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="stub-llm", daemon=True)
        self._thread.start()
        return self

    def base_url(self, tag: str) -> str:
        return f"{self.url}/{tag}/v1"

    def _record(self, rec: Recorded) -> None:
        return

    def _pick(self, symbol: str | None, stage: str = "signal") -> Mode:
        tag = getattr(_route, "tag", "")
        with self._lock:
            self.asked[stage] += 1
            return self.plans.get(tag, {}).get(stage) or Mode()


def entry_of(kind: str, cursor: str) -> str | None:
    """The stream entry id (``ms-seq``) an event of ``kind`` with SSE id ``cursor`` stands for:
    the cursor is the position just after the event, one ``ms-seq`` (hex) per stream."""
    parts = cursor.split(".")
    index = [k for k, _ in FEED].index(kind)
    if len(parts) != len(FEED) + 1 or parts[1 + index] == "0":
        return None
    ms, _, seq = parts[1 + index].partition("-")
    return f"{int(ms, 16)}-{int(seq or '0', 16)}"


class Watcher(threading.Thread):
    """An SSE client that reads ``/api/events``, hangs up at random (after a random number of
    events, or when its socket has been quiet for a random while), waits a random moment and
    reconnects with the ``Last-Event-ID`` of the last event it read in full."""

    def __init__(self, number: int, port: int, rng: random.Random, stopping: threading.Event) -> None:
        super().__init__(name=f"sse-{number}", daemon=True)
        self.port = port
        self.rng = rng
        self.stopping = stopping
        self.last_id: str | None = None
        #: (event kind, stream entry id) -> times shown.
        self.seen: Counter[tuple[str, str]] = Counter()
        self.connects = 0
        self.resets = 0
        self.snapshots = 0
        self.refused = 0
        self.unreadable: list[str] = []
        self.started = threading.Event()
        self._conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._session()
            except (OSError, http.client.HTTPException):
                pass  # the server went away mid-read, or the quiet timeout: resume from last_id
            finally:
                if self._conn is not None:
                    self._conn.close()
            self.stopping.wait(self.rng.uniform(0, 0.3))

    def _session(self) -> None:
        quiet = self.rng.uniform(0.5, 3.0)
        budget = self.rng.randint(1, 60)
        self._conn = conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=quiet)
        headers = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        conn.request("GET", "/api/events", headers=headers)
        response = conn.getresponse()
        self.connects += 1
        if response.status != 200:
            self.refused += 1
            response.read()
            return
        fields: dict[str, str] = {}
        while not self.stopping.is_set() and budget > 0:
            raw = response.readline()
            if not raw:
                return
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            event, ident = fields.get("event", "message"), fields.get("id")
            fields = {}
            if event == "reset":
                self.resets += 1
            elif event == "snapshot":
                self.snapshots += 1
                self.started.set()
            elif event == "shutdown":
                return
            elif ident is not None:
                entry = entry_of(event, ident) if event in dict(FEED) else None
                if entry is None:
                    self.unreadable.append(f"{event} {ident}")
                else:
                    self.seen[(event, entry)] += 1
                    budget -= 1
            if ident is not None:
                self.last_id = ident

    def hang_up(self) -> None:
        """Close the current connection from outside (the reader's next read fails)."""
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


class Restartable:
    """A redis-server of our own with ``--appendfsync always``: every write a client saw
    acknowledged is on disk, so a SIGKILL loses nothing; ``kill`` and ``start`` keep the port."""

    EXTRA = ("--appendonly", "yes", "--appendfsync", "always")

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.server: RedisServer | None = start_redis(directory, None, *self.EXTRA)
        self.port = self.server.port
        self.restarts = 0
        self.down_s = 0.0
        self._down_at: float | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def down(self) -> bool:
        return self.server is None

    def kill(self) -> None:
        assert self.server is not None
        self.server.process.send_signal(signal.SIGKILL)
        self.server.process.wait(10)
        self.server = None
        self._down_at = time.monotonic()

    def start(self) -> None:
        assert self.server is None
        self.server = start_redis(self.directory, self.port, *self.EXTRA)
        self.restarts += 1
        self.down_s += time.monotonic() - (self._down_at or time.monotonic())

    def stop(self) -> None:
        if self.server is not None:
            stop_server(self.server)
            self.server = None


class RssTrail:
    """Samples a process's VmRSS (at most every ``every`` s) while it runs."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[int] = []
        self._last = 0.0

    def sample(self) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        with (
            contextlib.suppress(OSError, ValueError, IndexError),
            open(f"/proc/{self.pid}/status", encoding="ascii", errors="replace") as fh,
        ):
            for line in fh:
                if line.startswith("VmRSS:"):
                    self.samples.append(int(line.split()[1]))
                    return

    def quarters_mb(self) -> tuple[float, float]:
        """Peak RSS of the first and of the last quarter of the samples, in MB."""
        if not self.samples:
            return 0.0, 0.0
        q = max(len(self.samples) // 4, 1)
        return round(max(self.samples[:q]) / 1024, 1), round(max(self.samples[-q:]) / 1024, 1)


def feed_entries(client: Any) -> set[tuple[str, str]]:
    """Every (event kind, entry id) the feed serves from what the streams hold now."""
    return {(kind, str(entry)) for kind, stream in FEED for entry, _ in client.xrange(stream)}
