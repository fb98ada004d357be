"""A real HTTP receiver for notifications: what Apprise's ``json://127.0.0.1:PORT/path`` posts to.

It records every message it accepted, and can be told to be down (nothing listens on its port),
slow (it holds each request until the test opens its gate, then drops it unanswered: the sender
has given up long before) or failing (it answers 500). Only accepted messages count as arrived.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def title(self) -> str:
        return str(self.body.get("title", ""))

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))

    @property
    def event(self) -> str:
        """The ``Event:`` line every runner message ends with."""
        for line in self.message.splitlines():
            if line.startswith("Event: "):
                return line.removeprefix("Event: ")
        return ""


@dataclass
class Receiver:
    """The receiver on its port; ``mode`` is up, slow, held or error (``down()``/``up()`` for down)."""

    port: int
    mode: str = "up"
    accepted: list[Received] = field(default_factory=list)
    #: Requests seen while slow or failing: not delivered.
    refused: list[Received] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    #: Set when a request is being held (slow mode), so a test can wait for it without sleeping.
    holding: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "hook", auth: str = "") -> str:
        return f"json://{auth + '@' if auth else ''}127.0.0.1:{self.port}/{path}"

    def events(self) -> list[str]:
        with self._lock:
            return [r.event for r in self.accepted]

    def of(self, event: str) -> list[Received]:
        with self._lock:
            return [r for r in self.accepted if r.event == event]

    def clear(self) -> None:
        with self._lock:
            self.accepted.clear()
            self.refused.clear()

    # Modes ------------------------------------------------------------------------------------

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"raw": raw.decode(errors="replace")}
                got = Received(self.path, dict(self.headers), body)
                mode = receiver.mode
                if mode in ("slow", "held"):
                    receiver.holding.set()
                    receiver.gate.wait(60)
                if mode == "slow":
                    with receiver._lock:
                        receiver.refused.append(got)
                    self.close_connection = True  # dropped unanswered
                    return
                if mode == "error":
                    with receiver._lock:
                        receiver.refused.append(got)
                    self.send_response(500)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.accepted.append(got)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def down(self) -> None:
        """Stop listening: connections to the port are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def up(self) -> None:
        """Listen again on the same port, accepting."""
        self.mode = "up"
        if self._server is None:
            self.start()

    def slow(self, answer: bool = False) -> None:
        """Hold every request until ``gate`` is set, then drop it (or, with ``answer``, accept it)."""
        self.gate.clear()
        self.holding.clear()
        self.mode = "held" if answer else "slow"

    def stop(self) -> None:
        self.gate.set()
        with contextlib.suppress(OSError):
            self.down()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
