"""`GET /api/events` of a real `runner serve --no-schedule` against a real redis-server: the SSE
contract under reconnects, trims, many clients, slow clients, Redis restarts and SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from runner.serve import WEB_READ_SLOTS
from tests.conftest import RedisServer, start_redis
from tests.integration.web import STREAMS, TOKEN, add, gated, start_serve, until
from tests.support.sse import Message, SseClient, stalled_socket

pytestmark = pytest.mark.integration

KINDS = list(STREAMS)


def doc_for(kind: str, n: int, symbol: str = "ETH/USD") -> dict[str, Any]:
    return {"n": n, "kind": kind, "symbol": symbol, "generated_at": f"2026-11-23T14:05:{n % 60:02d}.000Z"}


def write_mixed(client: redis.Redis, start: int, count: int) -> list[tuple[str, int]]:
    """``count`` documents over every stream, in a fixed interleaving; (kind, n) of each."""
    written = []
    for n in range(start, start + count):
        kind = KINDS[(n * 7) % len(KINDS)]
        add(client, kind, doc_for(kind, n))
        written.append((kind, n))
    return written


def delivered(messages: list[Message]) -> list[tuple[str, int]]:
    return [(m.event or "", m.json()["n"]) for m in messages]


def per_stream(items: list[tuple[str, int]]) -> dict[str, list[int]]:
    """Each stream's documents in order. Within a stream the feed keeps the order they were added;
    across streams, the order the one reader read them in."""
    out: dict[str, list[int]] = {}
    for kind, n in items:
        out.setdefault(kind, []).append(n)
    return out


async def test_a_new_client_gets_the_snapshot_then_every_event_in_order(
    served: Any, real_redis: redis.Redis
) -> None:
    latest = {"id": "ETH/USD:2026-11-23T14:05", "symbol": "ETH/USD", "action": "BUY", "confidence": 0.7}
    real_redis.hset("signals:latest", "ETH/USD", json.dumps(latest))
    real_redis.hset("signals:latest:scored", "ETH/USD", json.dumps({"symbol": "ETH/USD", "score": 71}))
    real_redis.hset("signals:latest:advised", "ETH/USD", json.dumps({"symbol": "ETH/USD", "action": "BUY"}))
    real_redis.set("reports:latest", json.dumps({"id": "report:2026-11-23T14:05:0/1", "summary": "fine"}))
    add(real_redis, "cycle", {"cycle_id": "c-1", "status": "completed", "started_at": "2026-11-23T14:05:00Z"})
    server = served(RUNNER_API__SSE_PING_SECONDS="0.2")

    client = await SseClient.open(server.port)
    try:
        assert client.status == 200
        assert client.headers["content-type"].startswith("text/event-stream")
        assert client.headers["x-accel-buffering"] == "no"
        assert client.headers["cache-control"] == "no-store"
        snapshot = await client.next_event()
        written = write_mixed(real_redis, 0, 40)
        events = await client.events(40)
        comments = 0
        while comments < 2:  # a comment ping keeps the stream alive while nothing happens
            message = await client.next()
            comments += message.comment == "ping"
    finally:
        await client.close()

    assert snapshot.event == "snapshot"
    state = snapshot.json()
    assert state["symbols"]["ETH/USD"]["signal"] == latest
    assert state["symbols"]["ETH/USD"]["score"]["score"] == 71
    assert state["symbols"]["ETH/USD"]["advice"]["action"] == "BUY"
    assert state["report"]["summary"] == "fine"
    assert [c["cycle_id"] for c in state["cycles"]] == ["c-1"]
    assert per_stream(delivered(events)) == per_stream(written)
    assert len(events) == len(written)
    ids = [snapshot.id, *(e.id for e in events)]
    assert None not in ids
    assert len(set(ids)) == len(ids)


async def test_reconnecting_with_the_last_id_misses_and_repeats_nothing_while_entries_keep_coming(
    served: Any, real_redis: redis.Redis
) -> None:
    server = served()
    written: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def writer() -> None:
        # Entries keep arriving through every connect and disconnect below.
        n = 1000
        while not stop.is_set():
            written.extend(write_mixed(real_redis, n, 3))
            n += 3
            await asyncio.sleep(0.01)

    got: list[Message] = []
    first = await SseClient.open(server.port)
    snapshot = await first.next_event()
    task = asyncio.create_task(writer())
    try:
        got += await first.events(20)
        await first.close()
        written += write_mixed(real_redis, 0, 15)  # while nobody is connected
        second = await SseClient.open(server.port, headers={"Last-Event-ID": got[-1].id or ""})
        got += await second.events(25)
        await second.close()
        written += write_mixed(real_redis, 100, 15)
        third = await SseClient.open(server.port, path=f"/api/events?last_event_id={got[-1].id}")
        got += await third.events(25)
        stop.set()
        await task
        total = len(written)
        while len(got) < total:
            got.append(await third.next_event())
        await third.close()
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert snapshot.event == "snapshot"
    assert "snapshot" not in [m.event for m in got]  # each reconnect resumed: no snapshot again
    assert per_stream(delivered(got)) == per_stream(written)
    assert len(got) == len(written)


async def test_a_cursor_older_than_the_streams_hold_gets_reset_then_the_snapshot(
    served: Any, real_redis: redis.Redis
) -> None:
    server = served()
    add(real_redis, "signal", doc_for("signal", 0))
    client = await SseClient.open(server.port)
    await client.next_event()  # the snapshot
    write_mixed(real_redis, 1, 1)
    old = (await client.next_event()).id
    await client.close()
    for n in range(2, 40):
        add(real_redis, "signal", doc_for("signal", n))
    real_redis.xtrim("signals:raw", maxlen=5, approximate=False)

    trimmed = await SseClient.open(server.port, headers={"Last-Event-ID": old or ""})
    reset, snapshot = await trimmed.events(2)
    add(real_redis, "signal", doc_for("signal", 99))
    live = await trimmed.next_event()
    await trimmed.close()
    unknown = await SseClient.open(server.port, headers={"Last-Event-ID": "not-a-cursor"})
    unknown_first, unknown_second = await unknown.events(2)
    await unknown.close()
    # A cursor whose entries are all still held resumes as usual, after any trim.
    recent = await SseClient.open(server.port, headers={"Last-Event-ID": snapshot.id or ""})
    add(real_redis, "signal", doc_for("signal", 100))
    resumed = await recent.next_event()
    await recent.close()

    assert reset.event == "reset"
    assert "no longer held" in reset.json()["reason"]
    assert snapshot.event == "snapshot"
    assert snapshot.json()["symbols"] == {}  # the latest hash was never written in this test
    assert (live.event, live.json()["n"]) == ("signal", 99)
    assert (unknown_first.event, unknown_second.event) == ("reset", "snapshot")
    assert (resumed.event, resumed.json()["n"]) == ("signal", 99)


def redis_connections_of_others(client: redis.Redis) -> int:
    """Connections to the Redis server other than this test's own."""
    me = client.client_id()
    return sum(1 for c in client.client_list() if int(c["id"]) != me)


async def test_two_hundred_clients_share_one_reader_and_a_constant_number_of_redis_connections(
    served: Any, real_redis: redis.Redis
) -> None:
    server = served()
    first = await SseClient.open(server.port)
    await first.next_event()
    with_one = redis_connections_of_others(real_redis)

    clients = [first, *await asyncio.gather(*(SseClient.open(server.port) for _ in range(199)))]
    try:
        snapshots = await asyncio.gather(*(c.next_event() for c in clients[1:]))
        await until(lambda: server.feed()["clients"] == 200, what="200 clients subscribed")
        with_two_hundred = redis_connections_of_others(real_redis)
        add(real_redis, "signal", doc_for("signal", 7))
        got = await asyncio.gather(*(c.next_event() for c in clients))
    finally:
        for c in clients:
            await c.close()

    assert {s.event for s in snapshots} == {"snapshot"}
    assert {(m.event, m.json()["n"]) for m in got} == {("signal", 7)}
    # One blocking reader, plus at most the fixed slots for reads made for clients.
    assert with_one <= 1 + WEB_READ_SLOTS
    assert with_two_hundred <= 1 + WEB_READ_SLOTS


async def test_a_slow_client_is_dropped_and_the_others_are_not_delayed(
    served: Any, real_redis: redis.Redis
) -> None:
    server = served(RUNNER_API__SSE_CLIENT_QUEUE="64")
    readers = [await SseClient.open(server.port) for _ in range(3)]
    for r in readers:
        await r.next_event()
    slow = stalled_socket(server.port)
    await until(lambda: server.feed()["clients"] == 4, what="the stalled client subscribed")
    received: list[list[int]] = [[] for _ in readers]

    async def read(i: int) -> None:
        while True:
            received[i].append((await readers[i].next_event()).json()["n"])

    tasks = [asyncio.create_task(read(i)) for i in range(len(readers))]
    padding = "x" * 2000  # big documents fill the stalled socket's buffers sooner
    written = 0
    try:
        for _ in range(60):  # at most 60 x 200 documents, about 24 MB: far more than any buffer
            for n in range(written, written + 200):
                real_redis.xadd(
                    "signals:raw", {"symbol": "ETH/USD", "signal": json.dumps({"n": n, "pad": padding})}
                )
            written += 200
            # The readers get every batch while the stalled client reads nothing at all.
            await until(lambda n=written: all(len(r) == n for r in received), what=f"{written} events read")
            if server.feed()["dropped_clients"]:
                break
        feed = server.feed()
    finally:
        for t in tasks:
            t.cancel()
        for r in readers:
            await r.close()

    assert feed["dropped_clients"] == 1
    assert feed["clients"] == 3
    assert all(r == list(range(written)) for r in received)
    # The stalled client's connection was closed: reading it now ends after what was sent.
    slow.settimeout(30)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := slow.recv(1 << 20):
            data += chunk
    slow.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert len(data) < written * len(padding)


async def test_clients_stay_connected_through_a_redis_restart_and_miss_nothing_after_it(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    port = socket_port()
    first_redis = start_redis(directory, port)
    client = first_redis.client()
    server = start_serve(first_redis.url, tmp_path, RUNNER_API__SSE_PING_SECONDS="0.2")
    clients: list[SseClient] = []
    restarted: RedisServer | None = None
    try:
        clients = [await SseClient.open(server.port) for _ in range(5)]
        for c in clients:
            await c.next_event()
        add(client, "signal", doc_for("signal", 1))
        before = [await c.next_event() for c in clients]
        first_redis.stop()
        await until(lambda: server.feed()["reader"] == "retrying", what="the reader noticed the outage")
        for c in clients:  # still connected: pings keep coming
            pings = 0
            while pings < 2:
                pings += (await c.next()).comment == "ping"
        during = await SseClient.open(server.port)  # a client arriving during the outage waits
        restarted = start_redis(directory, port)
        client = restarted.client()
        await until(lambda: server.feed()["reader"] == "reading", what="the reader reading again")
        add(client, "signal", doc_for("signal", 2))
        add(client, "score", doc_for("score", 3))
        after = [await c.events(2) for c in clients]
        waited = await during.next_event(within=60)
        resumed = await SseClient.open(server.port, headers={"Last-Event-ID": before[0].id or ""})
        caught_up = await resumed.events(2)
        clients += [during, resumed]
    finally:
        for c in clients:
            await c.close()
        result = server.stop()
        (restarted or first_redis).stop()

    assert result.code == 0, result.stderr
    assert {m.json()["n"] for m in before} == {1}
    assert all([(m.event, m.json()["n"]) for m in got] == [("signal", 2), ("score", 3)] for got in after)
    assert waited.event == "snapshot"
    assert [(m.event, m.json()["n"]) for m in caught_up] == [("signal", 2), ("score", 3)]


def socket_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_ends_every_stream_with_a_last_event_and_exits_0(
    real_redis: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    server = start_serve(redis_server.url, tmp_path)
    clients = [await SseClient.open(server.port) for _ in range(3)]
    for c in clients:
        await c.next_event()

    server.proc.send_signal(signal.SIGTERM)
    endings = [await c.read_to_end() for c in clients]
    for c in clients:
        await c.close()
    result = server.stop()

    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    for messages in endings:
        events = [m for m in messages if m.event]
        assert events[-1].event == "shutdown"
        assert "shutting down" in events[-1].json()["reason"]


async def test_sigterm_lets_the_running_cycle_finish_and_publish_before_the_streams_close(
    real_redis: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    server = start_serve(
        redis_server.url,
        tmp_path,
        scripted=True,
        RUNNER_API_TOKEN=TOKEN,
        RUNNER_GRACEFUL_SHUTDOWN__TIMEOUT_SECONDS="30",
        **gated(gate, started),
    )
    client = await SseClient.open(server.port)
    await client.next_event()
    answers: list[Any] = []
    poster = threading.Thread(target=lambda: answers.append(server.post("/api/cycles", {}, token=TOKEN)))
    try:
        poster.start()
        await until(lambda: started.exists() and len(started.read_text().split()) == 2, what="both started")
        server.proc.send_signal(signal.SIGTERM)  # while the cycle runs
        gate.write_text("go")
        messages = await client.read_to_end()
        await asyncio.to_thread(poster.join, 60)
    finally:
        gate.write_text("go")
        await client.close()
        result = server.stop()

    assert result.code == 0, result.stderr
    assert answers[0].status == 200
    assert answers[0].body["status"] == "completed"
    # Everything the cycle published (each stage of both symbols, the report, the cycle itself)
    # reached the stream before its last event.
    kinds = [m.event for m in messages if m.event]
    assert kinds[-1] == "shutdown"
    assert Counter(kinds[:-1]) == {"signal": 2, "score": 2, "advice": 2, "report": 1, "cycle": 1}
    assert real_redis.xlen("signals:raw") == 2
