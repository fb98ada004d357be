"""Redis round trips per cycle with every feature on, at 20, 200 and 2,000 symbols.

Every feature: the full pipeline (built-in signal, score, advice) and the report, outcomes scored
from matured signals, a daily budget, notifications to a local receiver (the counted cycle has one
to send: the shard recovers from a failing streak), the PostgreSQL archive, the metric totals
exported (a textfile), and a master with a replica, so that the end of the cycle asks it to
confirm what was published. Each cycle opens its own connection as a CronJob's process does
(``runner.factory.open_deps``, the command line's own path), on a server that already knows the
scripts (every minute's cycle finds them there).

A round trip is one packed send on any connection to any Redis node: a command, a pipeline or a
script call. Every ``send_packed_command`` of redis-py's asyncio connections is counted and named
(the script's constant in ``runner.store.scripts``, else the commands it carries), so the report
can say where each one goes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import statistics
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio.connection import AbstractConnection

from bench.figures import check, percentile
from bench.servers import Cluster, Postgres, Receiver, Server
from runner.analyzers.fake import FakeAnalyzer, hold
from runner.archive import postgres
from runner.config import Settings, load_settings
from runner.cycle import Exports, run_cycle
from runner.factory import open_deps
from runner.models import AdviceAnswer, Outcome, ScoreAnswer, SymbolStatus
from runner.pipeline.base import StageRequest
from runner.shards import Shard
from runner.store import scripts
from runner.store.keys import Keys

SIZES = (20, 200, 2000)

#: The runner's Lua scripts by their constant's name (PRELUDE is a part of each, not one).
SCRIPTS = {
    name: text
    for name, text in vars(scripts).items()
    if name.isupper() and isinstance(text, str) and name != "PRELUDE"
}

SCRIPT_NAMES = {
    hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest(): name for name, text in SCRIPTS.items()
}


def command_names(packed: bytes) -> list[str]:
    """The commands a packed send carries (RESP arrays of bulk strings), scripts by name."""
    names: list[str] = []
    i = 0
    while packed.startswith(b"*", i):
        end = packed.index(b"\r\n", i)
        count, i = int(packed[i + 1 : end]), end + 2
        args: list[bytes] = []
        for _ in range(count):
            end = packed.index(b"\r\n", i)
            length, i = int(packed[i + 1 : end]), end + 2
            if len(args) < 2:
                args.append(packed[i : i + length])
            i += length + 2
        name = args[0].decode().upper()
        if name in ("CLIENT", "CLUSTER", "SENTINEL") and len(args) > 1:
            name += " " + args[1].decode().upper()
        elif name == "EVALSHA" and len(args) > 1:
            name = SCRIPT_NAMES.get(args[1].decode(), "EVALSHA (unknown)")
        elif name == "EVAL" and len(args) > 1:
            sha = hashlib.sha1(args[1], usedforsecurity=False).hexdigest()
            name = SCRIPT_NAMES.get(sha, "EVAL (unknown)") + " (body)"
        names.append(name)
    return names


def label(names: list[str]) -> str:
    """One round trip's name: its command, or its commands in order (a pipeline)."""
    counts = collections.Counter(names)
    return "+".join(n if counts[n] == 1 else f"{n} x{counts[n]}" for n in dict.fromkeys(names))


@contextmanager
def counted() -> Iterator[list[str]]:
    """Every round trip sent inside the block, by name, on any redis-py asyncio connection."""
    sent: list[str] = []
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        raw = command.encode() if isinstance(command, str) else command
        sent.append(label(command_names(raw if isinstance(raw, bytes) else b"".join(raw))))
        await original(self, command, check_health)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


def minute_stamp(start: datetime, offset: int) -> str:
    """A scheduled minute ``offset`` minutes from ``start``'s (the runner honours one within the
    hour)."""
    return (start.replace(second=0, microsecond=0) + timedelta(minutes=offset)).strftime("%Y-%m-%dT%H:%M:00Z")


def names(n: int) -> list[str]:
    return [f"S{i:04d}/USD" for i in range(n)]


def every_feature(redis_url: str, pg_url: str, notify_url: str, shards: int) -> Settings:
    return load_settings(
        None,
        {
            "redis": {"url": redis_url},
            "shards": shards,
            "parallel": {"max_concurrent": 10},
            "heartbeat": {"interval_seconds": 30, "ttl_seconds": 60},
            "analyzer": {"daily_budget_usd": 100.0},
            "notify": {"urls": [notify_url]},
            "archive": {"postgres_url": pg_url},
        },
        environ={},
    )


def hold_advice(reasoning: str) -> AdviceAnswer:
    """The advice the bench's remote fakes answer: hold, nothing to size."""
    return AdviceAnswer(
        action="HOLD",
        entry=None,
        stop_loss=None,
        take_profit=None,
        position_size_pct=0.0,
        horizon_minutes=15,
        reasoning=reasoning,
        analyzer="bench",
    )


class Remote(FakeAnalyzer):
    """Instant remote stages (signal, score, advice): every call takes a rate-limit slot."""

    name = "bench"

    def __init__(self) -> None:
        super().__init__(hold, remote=True)

    async def answer(self, request: StageRequest) -> ScoreAnswer | AdviceAnswer:
        if request.stage == "score":
            return ScoreAnswer(score=50, grade="C", factors=["bench"], reasoning="bench", analyzer="bench")
        return hold_advice("bench")


async def cycle(
    settings: Settings, symbols: list[str], shard: Shard, stamp: str, metrics: str, remote: bool = False
) -> tuple[Outcome, list[str]]:
    """One cycle on a connection of its own, as one CronJob process runs it; its round trips."""
    settings = settings.model_copy(update={"scheduled_at": stamp})
    async with open_deps(settings) as deps:
        if remote:
            stages = Remote()
            deps.analyzer = stages
            deps.stages.scorer = deps.stages.advisor = stages  # type: ignore[assignment]
        with counted() as sent:
            outcome = await run_cycle(
                settings, deps, symbols=symbols, shard=shard, exports=Exports(metrics_file=metrics)
            )
    return outcome, sent


class Topology:
    """Where the cycles run: the runner's ``REDIS_URL``, its masters, a client for the bench."""

    def __init__(
        self, url: str, flush: Callable[[], None], masters: Callable[[], list[Any]], client: Callable[[], Any]
    ) -> None:
        self.url, self._flush, self.masters, self.client = url, flush, masters, client

    def flush(self) -> None:
        """Empty every master and load the runner's scripts on each, as every minute's cycle finds
        them after the first (a script's first call on a node costs its body: one round trip more,
        once per node, not per cycle)."""
        self._flush()
        for client in self.masters():
            for text in SCRIPTS.values():
                client.script_load(text)


def count_sizes(
    topology: Topology, pg_url: str, receiver: Receiver, shards: int, sizes: tuple[int, ...] = SIZES
) -> dict[int, dict[str, Any]]:
    """Round trips of one shard's counted cycle (each shard's, with ``shards`` > 1) per size."""
    out: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as scratch:
        metrics = os.path.join(scratch, "runner.prom")
        for n in sizes:
            topology.flush()
            settings = every_feature(topology.url, pg_url, receiver.url, shards)
            keys = Keys.for_settings(settings)
            start = datetime.now(UTC)
            per_shard = []
            for index in range(shards):
                shard = Shard(index, shards)
                # Six minutes earlier: its signals mature at the 5-minute horizon in the counted one.
                warm, _ = asyncio.run(cycle(settings, names(n), shard, minute_stamp(start, -6), metrics))
                assert warm.exit_code == 0, (warm.status, warm.warnings)
                # A failing streak the counted cycle ends: it has a notification (recovered) to send.
                r = topology.client()
                r.hset(
                    keys.failing(shard.key),
                    mapping={"count": "3", "since": repr(time.time() - 180), "why": "bench"},
                )
                outcomes_before = r.xlen(keys.outcomes_stream)
                sent_before = receiver.events.count("recovered")
                outcome, sent = asyncio.run(
                    cycle(settings, names(n), shard, minute_stamp(start, -1), metrics)
                )
                mine = len(outcome.results)
                assert outcome.exit_code == 0, (outcome.status, outcome.warnings)
                assert len(outcome.signals) == len(outcome.scores) == len(outcome.advice) == mine > 0
                assert outcome.report is not None, outcome.warnings
                assert not outcome.warnings, outcome.warnings
                assert all(res.status is SymbolStatus.OK for res in outcome.results)
                new_outcomes = r.xlen(keys.outcomes_stream) - outcomes_before
                assert new_outcomes > 0, "the counted cycle scored the warm cycle's signals"
                new_rows = archived(pg_url, [sig.id for sig in outcome.signals])
                assert new_rows == mine, "the counted cycle archived its signals"
                assert receiver.events.count("recovered") == sent_before + 1, receiver.events
                per_shard.append(
                    {
                        "count": len(sent),
                        "labels": sent,
                        "symbols": mine,
                        "outcomes": new_outcomes,
                        "archived": new_rows,
                    }
                )
            out[n] = {
                "count": max(s["count"] for s in per_shard),
                "per_shard": [s["count"] for s in per_shard],
                "labels": per_shard[0]["labels"],
                "outcomes": per_shard[0]["outcomes"],
                "archived": per_shard[0]["archived"],
            }
    return out


def count_remote(
    topology: Topology, pg_url: str, receiver: Receiver, sizes: tuple[int, ...]
) -> dict[int, int]:
    """The same cycle with instant remote stages: what the shared rate limit adds per call."""
    out: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as scratch:
        metrics = os.path.join(scratch, "runner.prom")
        for n in sizes:
            topology.flush()
            settings = every_feature(topology.url, pg_url, receiver.url, 1).model_copy(deep=True)
            settings.rate_limit.requests_per_minute = 1_000_000
            start = datetime.now(UTC)
            shard = Shard(0, 1)
            asyncio.run(cycle(settings, names(n), shard, minute_stamp(start, -6), metrics, remote=True))
            outcome, sent = asyncio.run(
                cycle(settings, names(n), shard, minute_stamp(start, -1), metrics, remote=True)
            )
            assert outcome.exit_code == 0, (outcome.status, outcome.warnings)
            assert len(outcome.advice) == n
            out[n] = len(sent)
    return out


def archived(pg_url: str, ids: list[str]) -> int:
    """How many of the signals ``ids`` the archive holds."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM archive.signals WHERE id = ANY(%s)", [ids]).fetchone()
        return int(row[0]) if row else 0


def breakdown(labels: list[str]) -> list[tuple[str, int]]:
    """Round trips by name, in the order the cycle first sent each."""
    return list(collections.Counter(labels).items())


def bench_round_trips(quick: bool) -> dict[str, Any]:
    """Every configuration's counts; starts and stops its own servers."""
    logging.getLogger("runner").setLevel(logging.ERROR)
    sizes = SIZES[:2] if quick else SIZES
    with contextlib.ExitStack() as servers:
        pg = Postgres()
        servers.callback(pg.stop)
        receiver = Receiver()
        servers.callback(receiver.stop)
        master = Server()
        servers.callback(master.stop)
        servers.callback(master.replica().stop)
        asyncio.run(postgres.migrate(pg.url, 60))
        single = Topology(master.url, master.flush, master.masters, master.client)
        results: dict[str, Any] = {
            "ping_ms": asyncio.run(ping_ms(master.url)),
            "one shard": count_sizes(single, pg.url, receiver, 1, sizes),
            "two shards": count_sizes(single, pg.url, receiver, 2, sizes),
            "remote": count_remote(single, pg.url, receiver, sizes[:2]),
        }
        cluster = Cluster()
        servers.callback(cluster.stop)
        results["cluster"] = count_sizes(
            Topology(cluster.url, cluster.flush, cluster.masters, cluster.client), pg.url, receiver, 1, sizes
        )
        return results


async def ping_ms(url: str, n: int = 2000) -> tuple[float, float]:
    """One round trip to the bench's Redis at this load: the median and p99 of ``n`` PINGs, in ms."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    took = []
    try:
        for _ in range(n):
            began = time.perf_counter()
            await client.ping()
            took.append((time.perf_counter() - began) * 1000)
    finally:
        await client.aclose()
    return statistics.median(took), percentile(took, 0.99)


# Report -----------------------------------------------------------------------------------------

GOAL = 10

#: What each round trip of a counted cycle does, by its name in ``labels``.
STEPS = {
    "CLUSTER SLOTS": "the cluster client learns the slots (once per process)",
    "COMMAND": "the cluster client reads the server's command table (once per process)",
    "HELLO": "a new connection: its RESP3 handshake",
    "BEGIN": "heartbeat, cycle lease and every guard's state",
    "CONFIG+BEGIN": (
        "the eviction policy (CONFIG GET maxmemory*) beside the start: heartbeat, cycle lease and "
        "every guard's state, one send"
    ),
    "ACQUIRE": "the symbols' locks and fencing tokens",
    "PUBLISH": "signals, scores and advice in coalesced batches as the chains end, then the report",
    "ROLE": "how many replicas the master has",
    "CLUSTER NODES": "how many replicas the slot's master has",
    "CONFIRM (body)+WAIT": "a replica confirms what the run published (CONFIRM and WAIT 1, one send)",
    "RECORD": "outcome, stats, outcomes scored, metric totals; lease and locks released",
    "ARCHIVE_READ": "what the archive lacks, before the PostgreSQL write",
    "ARCHIVE_FINISH": "the archive's cursors moved on, after the write",
    "NOTIFY_CLAIM": "notifications claimed in the outbox (every cycle with notify.urls)",
    "NOTIFY_SETTLE": "notifications settled after sending (only a cycle that sent one)",
}

#: The round trips a cycle needs whatever is configured (the rest come with a feature).
CORE = ("CLUSTER SLOTS", "COMMAND", "HELLO", "BEGIN", "CONFIG+BEGIN", "ACQUIRE", "PUBLISH", "RECORD")

CONFIGS = {
    "one shard": "every feature on, one server and a replica",
    "two shards": "the same, two shards (each shard's cycle)",
    "cluster": "the same on Redis Cluster (3 masters, a replica each)",
}


def flat(counts: dict[int, dict[str, Any]]) -> bool:
    """Flat: the counts at every size within one of each other."""
    values: list[int] = [c["count"] for c in counts.values()]
    return max(values) - min(values) <= 1


def rows(rt: dict[str, Any]) -> list[str]:
    """The report's rows: round trips per cycle by configuration, at every size measured."""
    out = []
    for key, what in CONFIGS.items():
        counts = rt[key]
        sizes = " / ".join(f"{n:,}" for n in counts)
        values = " / ".join(str(c["count"]) for c in counts.values())
        ok = flat(counts) and max(c["count"] for c in counts.values()) <= GOAL
        out.append(
            f"| Redis round trips per cycle, {what}, at {sizes} symbols | {values} | <= {GOAL}, flat | {check(ok)} |"
        )
    remote = rt["remote"]
    out.append(
        "| the same with remote stages (instant fakes; each call behind the shared rate limit), at "
        + " / ".join(f"{n:,}" for n in remote)
        + " symbols | "
        + " / ".join(str(c) for c in remote.values())
        + " | - (see below) | |"
    )
    return out


def section(rt: dict[str, Any]) -> list[str]:
    """The report's section: where each round trip goes, and the goal against what it costs."""
    single, cluster = rt["one shard"], rt["cluster"]
    n = max(single)
    steps = breakdown(single[n]["labels"])
    cluster_steps = dict(breakdown(cluster[max(cluster)]["labels"]))
    core = sum(c for name, c in steps if name in CORE)
    extra = sum(c for name, c in steps if name not in CORE)
    median, p99 = rt["ping_ms"]
    table = [
        "| round trip | one server + replica | Redis Cluster | what it does |",
        "|---|---|---|---|",
    ]
    names = list(dict.fromkeys([*(name for name, _ in steps), *cluster_steps]))
    order = {name: i for i, name in enumerate(STEPS)}
    names.sort(key=lambda name: order.get(name, len(order)))
    single_steps = dict(steps)
    for name in names:
        table.append(
            f"| {name} | {single_steps.get(name, 0) or '-'} | {cluster_steps.get(name, 0) or '-'} "
            f"| {STEPS.get(name, '')} |"
        )
    table.append(f"| **total** | **{single[n]['count']}** | **{cluster[max(cluster)]['count']}** | |")
    uneven = [what for key, what in CONFIGS.items() if not flat(rt[key])]
    flatness = (
        "Every configuration is flat in the number of symbols (the counts at every size within one "
        "of each other). "
        if not uneven
        else "Not flat in the number of symbols: " + "; ".join(uneven) + ". "
    )
    text = (
        flatness + f"With every feature on, a cycle on one "
        f"server with a replica takes {single[n]['count']} round trips at {n:,} symbols: {core} for the "
        f"cycle itself (a connection, the start, locks, the publish batches: signals and scores as the "
        f"chains end, the advice after the risk allocation, the report; record) and {extra} for the "
        f"features, each one step that needs the answer of the one before it: confirming with a replica "
        f"(the replica count, then CONFIRM with WAIT on one connection: WAIT must follow the writes, and "
        f"with no replica it would block for its whole timeout), the archive (what is new before the "
        f"PostgreSQL write, the cursors after it, only once PostgreSQL took the rows) and notifications "
        f"(the claim, from the state the record step wrote; the settle after sending, only when there "
        f"was something to send)."
    )
    worst = max(c["count"] for c in single.values())
    why = (
        f"The goal of at most {GOAL} is missed by {worst - GOAL} with every feature on. Reaching it "
        f"would take merging {worst - GOAL} of these steps into others, each merge trading something "
        "away, for instance: the replica count asked in the first step (it would miss a replica that arrives or "
        "leaves during the cycle), the archive's read done by the record script (every cycle's record "
        "would then read the streams), the report published with the advice (before the report knows "
        "what became of the advice). One round trip to the bench's Redis takes "
        f"{median:.2f} ms at this load (p99 {p99:.2f} ms, 2,000 PINGs): the excess costs about "
        f"{(worst - GOAL) * median:.1f} ms a cycle against a deadline of 50 s, so the steps stay as "
        "they are. "
        if worst > GOAL
        else ""
    )
    cluster_text = (
        "On Redis Cluster a cycle's process also pays redis-py's start on a cluster, once per process: "
        "the slots, the command table, and a connection to each node it talks to (the slots' node, "
        "the node asked for the command table, the master of the runner's hash tag); every key of the "
        "runner is in one slot, so nothing else is routed elsewhere."
    )
    remote = rt["remote"]
    per = {k: (v - single[k]["count"]) / (3 * k) for k, v in remote.items() if k in single}
    remote_text = (
        "With remote stages the count grows with the symbols, by design: every remote call first "
        "reserves its slot of the rate limit that every run and shard share (one script right before "
        "the call, so that the limit holds across processes), and each stage's document is published "
        "before the next stage calls on it. That is "
        + ", ".join(f"{v:.1f} round trips more per call at {k:,} symbols" for k, v in per.items())
        + " than with built-in stages; a remote call takes seconds, a round trip a fraction of a "
        "millisecond."
    )
    return [
        "## Redis round trips per cycle",
        "",
        *textwrap.wrap(text, 96),
        "",
        *table,
        "",
        *textwrap.wrap(why + cluster_text, 96),
        "",
        *textwrap.wrap(remote_text, 96),
        "",
    ]
