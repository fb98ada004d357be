"""The event stream of ``runner serve``: delivery from XADD to each client, with 1 and 1,000
clients, the server's RSS and the Redis connections it holds.

One real ``runner serve --no-schedule`` (uvicorn) against the bench's redis-server. The clients
are httpx streams (HTTP/1.1, one connection each) on one asyncio loop in the bench's process that
only note when an event's bytes arrive. Each client count is measured in several rounds, each with connections of its own;
the report gives the median of the rounds and their range.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis

from bench.figures import check, percentile
from bench.servers import Server, proc_status_kb

#: Messages whose delivery is timed in one round, per client count (each waits until every
#: client has it), and how many rounds.
MESSAGES = {1: 300, 1000: 100}
MESSAGES_QUICK = {1: 100, 1000: 40}
ROUNDS, ROUNDS_QUICK = 3, 1

HEADING = "## runner serve: the event stream"


class _Scanner:
    """What one client reads: it notes when each event's bytes arrive (its ``"sent"`` time against
    now) and nothing else, so that the figures are the server's and the transport's, not the
    bench's parsing."""

    def __init__(self, board: _Board) -> None:
        self.board = board
        self.tail = b""
        self.subscribed = False

    def feed(self, data: bytes) -> None:
        now = time.time()
        text = self.tail + data
        if not self.subscribed and b"event: snapshot" in text:
            self.subscribed = True
            self.board.subscribed()
        start = 0
        while (at := text.find(b'"sent": ', start)) >= 0:
            end = text.find(b"}", at)
            if end < 0:
                break
            self.board.delivered(now - float(text[at + 8 : end]))
            start = end
        self.tail = text[start:][-64:]


async def _client(client: httpx.AsyncClient, url: str, board: _Board, opened: asyncio.Event) -> None:
    """One event-stream client: an httpx stream whose raw chunks go to a ``_Scanner``."""
    scanner = _Scanner(board)
    async with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
        response.raise_for_status()
        opened.set()
        async for data in response.aiter_raw():
            scanner.feed(data)


class _Bare(asyncio.Protocol):
    """One event-stream client as cheap as a client can be: a socket that writes the request and
    hands what arrives to a ``_Scanner``. What the server itself takes, with little of the
    bench's own work in the figure."""

    def __init__(self, board: _Board) -> None:
        self.scanner = _Scanner(board)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"GET /api/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        self.scanner.feed(data)


class _Board:
    """What the receivers saw, and when a round is complete."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.latencies: list[float] = []
        self.ready = asyncio.Event()
        self.count = 0

    def subscribed(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.ready.set()

    def delivered(self, latency: float) -> None:
        self.latencies.append(latency)
        if len(self.latencies) % self.expected == 0:
            self.ready.set()


async def delivery(
    server: Server, port: int, pid: int, clients: int, messages: int, bare: bool = False
) -> dict[str, Any]:
    """Open ``clients`` streams, time ``messages`` entries from XADD to each client, and read the
    server's RSS and Redis connections while the streams are still open."""
    board = _Board(clients)
    url = f"http://127.0.0.1:{port}/api/events"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, read=None)) as client:
        tasks: list[asyncio.Task[None]] = []
        transports: list[asyncio.BaseTransport] = []
        loop = asyncio.get_running_loop()
        for start in range(0, clients, 100):  # in waves, as browsers arrive, not one SYN flood
            size = min(100, clients - start)
            if bare:
                opened = await asyncio.gather(
                    *(loop.create_connection(lambda: _Bare(board), "127.0.0.1", port) for _ in range(size))
                )
                transports += [t for t, _ in opened]
                continue
            wave = [asyncio.Event() for _ in range(size)]
            tasks += [asyncio.create_task(_client(client, url, board, event)) for event in wave]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in wave)), 120)
        try:
            await asyncio.wait_for(board.ready.wait(), 120)  # every client has its snapshot
            writer = aioredis.Redis.from_url(server.url, decode_responses=True, client_name="bench")
            try:
                for k in range(messages):
                    board.ready.clear()
                    doc = {
                        "id": f"BENCH/USD:{k}",
                        "symbol": "BENCH/USD",
                        "action": "HOLD",
                        "sent": time.time(),
                    }
                    await writer.xadd("signals:raw", {"symbol": "BENCH/USD", "signal": json.dumps(doc)})
                    await asyncio.wait_for(board.ready.wait(), 120)
            finally:
                await writer.aclose()
            rss_mb = proc_status_kb(pid, "VmRSS") / 1024
            connections = await asyncio.to_thread(redis_connections, server)
        finally:
            for transport in transports:
                transport.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {"latencies": board.latencies, "rss_mb": rss_mb, "redis_connections": connections}


def redis_connections(server: Server) -> int:
    """Connections to the bench's Redis that are not the bench's own."""
    client = redis.Redis(port=server.port, decode_responses=True, client_name="bench")
    try:
        return sum(1 for c in client.client_list() if c.get("name") != "bench")
    finally:
        client.close()


def stream_clients(port: int) -> int:
    """How many event-stream clients the server counts (``/health/detailed``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/detailed", timeout=10) as response:
        return int(json.loads(response.read())["events"]["clients"])


def measure_round(
    server: Server, port: int, pid: int, clients: int, messages: int, bare: bool = False
) -> dict[str, Any]:
    """One round: ``clients`` fresh streams, ``messages`` deliveries timed, RSS and connections."""
    server.flush()
    got = asyncio.run(delivery(server, port, pid, clients, messages, bare))
    while stream_clients(port):  # the closed streams are gone before the next round
        time.sleep(0.05)
    lat = got["latencies"]
    return {
        "deliveries": len(lat),
        "p50_ms": percentile(lat, 0.50) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
        "max_ms": max(lat) * 1000,
        "rss_mb": got["rss_mb"],
        "redis_connections": got["redis_connections"],
    }


def bench_sse(server: Server, env: dict[str, str], quick: bool) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))  # 1,000 sockets each side
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loads = [os.getloadavg()[0]]
    rounds = ROUNDS_QUICK if quick else ROUNDS
    out: dict[str, Any] = {"rounds": rounds}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "serve", "--no-schedule", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            for _ in range(600):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    time.sleep(0.05)
            for clients, messages in (MESSAGES_QUICK if quick else MESSAGES).items():
                runs = []
                for _ in range(rounds):
                    runs.append(measure_round(server, port, proc.pid, clients, messages))
                    loads.append(os.getloadavg()[0])
                out[str(clients)] = summary(clients, messages, runs)
            # The same 1,000 clients as bare sockets: how much of the figure is the server's own.
            clients = max(MESSAGES)
            messages = (MESSAGES_QUICK if quick else MESSAGES)[clients]
            runs = [
                measure_round(server, port, proc.pid, clients, messages, bare=True) for _ in range(rounds)
            ]
            loads.append(os.getloadavg()[0])
            out["bare"] = summary(clients, messages, runs)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    out["load"] = statistics.median(loads)
    out["load_range"] = (min(loads), max(loads))
    return out


def summary(clients: int, messages: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one client count: the median of each figure and its range."""
    out: dict[str, Any] = {"clients": clients, "messages": messages, "rounds": runs}
    for key in ("p50_ms", "p99_ms", "max_ms", "rss_mb"):
        values = [r[key] for r in runs]
        out[key] = statistics.median(values)
        out[f"{key}_range"] = (min(values), max(values))
    out["deliveries"] = sum(r["deliveries"] for r in runs)
    out["redis_connections"] = max(r["redis_connections"] for r in runs)
    return out


def _range(fig: dict[str, Any], key: str, fmt: str) -> str:
    lo, hi = fig[f"{key}_range"]
    return "" if len(fig["rounds"]) < 2 else f" ({lo:{fmt}}-{hi:{fmt}})"


def section(sse: dict[str, Any]) -> list[str]:
    """The report's section on the event stream."""
    one, many = sse["1"], sse["1000"]
    constant = one["redis_connections"] == many["redis_connections"]
    lo, hi = sse["load_range"]
    intro = (
        "One `runner serve --no-schedule` and its clients on this machine: the bench's own client "
        f"process shares its two cores, whose load average was {sse['load']:.1f} ({lo:.1f}-{hi:.1f}) "
        "while it measured. Every figure is from XADD to the moment the event's bytes reach a client; "
        f"each is the median of {sse['rounds']} round(s) with fresh connections (their range in "
        "brackets). The goals are the 1,000 clients' (issue 16); one client is held to the same."
    )
    how = (
        "**How**: the bench starts `runner serve --no-schedule` against its redis-server, opens the "
        "clients (httpx streams, one HTTP/1.1 connection each, on one asyncio loop; each only notes "
        f"when an event's bytes arrive; opened in waves of 100) and waits until each has its snapshot; then, {many['messages']} times per "
        f"round ({one['messages']} times for the one client), it XADDs a signal carrying its send time "
        "to `signals:raw` and waits until every client has it. RSS is the server's VmRSS at that "
        "point; the connections are CLIENT LIST less the bench's own."
    )
    rows = []
    for label, fig in (("1 client", one), ("1,000 clients", many)):
        rows.append(
            f"| delivery, {label}: p50 / p99 ({fig['deliveries']:,} deliveries; slowest {fig['max_ms']:.0f} ms) "
            f"| {fig['p50_ms']:.1f} ms{_range(fig, 'p50_ms', '.1f')} / {fig['p99_ms']:.1f} ms"
            f"{_range(fig, 'p99_ms', '.1f')} | p99 < 250 ms | {check(fig['p99_ms'] < 250)} |"
        )
    bare = sse.get("bare")
    if bare:
        rows.append(
            f"| the same 1,000 clients as bare sockets (no httpx: what the server and the loopback take) "
            f"| {bare['p50_ms']:.1f} ms{_range(bare, 'p50_ms', '.1f')} / {bare['p99_ms']:.1f} ms"
            f"{_range(bare, 'p99_ms', '.1f')} | - | |"
        )
    for label, fig in (("1 client", one), ("1,000 clients", many)):
        rows.append(
            f"| RSS of the server with {label} | {fig['rss_mb']:.0f} MB{_range(fig, 'rss_mb', '.0f')} "
            f"| < 250 MB | {check(fig['rss_mb'] < 250)} |"
        )
    why: list[str] = []
    if bare and many["p99_ms"] >= 250:
        share = bare["p99_ms"] / many["p99_ms"]
        why = [
            *textwrap.wrap(
                f"The goal for 1,000 clients is missed as httpx clients see it: p99 "
                f"{many['p99_ms']:.0f} ms. The same clients as bare sockets see p99 {bare['p99_ms']:.0f} ms "
                f"({share:.0%} of it): the rest is the bench's own 1,000 httpx streams, every event "
                "passing through httpx and httpcore once per client in the bench's one process, on the "
                "same two cores as the server and at a load average of "
                f"{sse['load']:.1f}. One process reading 1,000 streams is not what 1,000 browsers are; "
                + (
                    "the server alone meets the goal."
                    if bare["p99_ms"] < 250
                    else "the server alone misses it too, by "
                    f"{bare['p99_ms'] - 250:.0f} ms on this machine at this load."
                ),
                96,
            ),
            "",
        ]
    return [
        HEADING,
        "",
        *textwrap.wrap(intro, 96),
        "",
        "| what | measured | goal | |",
        "|---|---|---|---|",
        *rows,
        f"| Redis connections the server holds with 1 and with 1,000 clients | {one['redis_connections']} and "
        f"{many['redis_connections']} | constant | {check(constant)} |",
        "",
        *why,
        *textwrap.wrap(how, 96),
        "",
    ]


def replace_section(text: str, heading: str, lines: list[str]) -> str:
    """``text`` with the section under ``heading`` replaced by ``lines`` (appended if absent)."""
    start = text.find(heading)
    body = "\n".join(lines)
    if start < 0:
        return text.rstrip("\n") + "\n\n" + body
    end = text.find("\n## ", start + len(heading))
    return text[:start] + body + (text[end + 1 :] if end >= 0 else "")
