"""``runner status``: everything an operator needs to know, read in one pipelined round trip
(after the scans for locks, heartbeats and shards), and Redis's eviction policy (one more). The
health verdict is ``runner.health``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from redis.exceptions import ResponseError

from runner import adaptive, breaker
from runner.config import Settings
from runner.store import replies
from runner.store.connection import Client, redis_errors, scan
from runner.store.keys import Keys
from runner.store.memory import read_policy
from runner.store.replies import as_float, json_object


async def read_status(client: Client, keys: Keys, settings: Settings, now: datetime) -> dict[str, Any]:
    """Collect the status document (the ``--json`` shape)."""
    async with redis_errors("reading status"):
        # On a cluster every key of the runner lives on one node (the prefix's hash tag).
        lock_keys = await scan(client, keys.lock_pattern, keys.fencing)
        hb_keys = await scan(client, keys.heartbeat_pattern, keys.fencing)
        bp_keys = await scan(client, keys.backpressure_pattern, keys.fencing)
        spend_key = keys.spend(now)
        hashes = [
            keys.breaker("llm_service"),
            keys.kill_switch,
            keys.paused,
            keys.stats,
            keys.latest,
            spend_key,
            keys.scored_latest,
            keys.advised_latest,
            keys.archive,
        ]
        lists = [keys.history, keys.latency]
        async with client.pipeline(transaction=False) as pipe:
            for key in [*lists, *hashes]:
                pipe.type(key)
            kinds = await pipe.execute()
        # A key of the wrong type reads as empty here; the next cycle resets it with a warning.
        expected = ["list"] * len(lists) + ["hash"] * len(hashes)
        readable = {
            k for k, kind, want in zip([*lists, *hashes], kinds, expected, strict=True) if kind == want
        }
        async with client.pipeline(transaction=False) as pipe:
            for key, size in zip(lists, (59, 199), strict=True):
                if key in readable:
                    pipe.lrange(key, 0, size)
                else:  # a keyed placeholder (a cluster pipeline routes by key), read as empty
                    pipe.exists(key)
            for key in hashes:
                if key in readable:
                    pipe.hgetall(key)
                else:
                    pipe.exists(key)
            for key in lock_keys:
                pipe.get(key)
                pipe.ttl(key)
            for key in hb_keys:
                pipe.hgetall(key)
                pipe.ttl(key)
            for key in bp_keys:
                pipe.hgetall(key)
            pipe.xlen(keys.stream)
            pipe.get(keys.last_cycle)
            pipe.get(keys.reports_latest)
            answers = await pipe.execute(raise_on_error=False)
        policy = await read_policy(client, keys.fencing, settings.redis.socket_timeout_seconds)
    it = iter(answers)
    history_raw, latency_raw = next(it), next(it)
    (
        breaker_raw,
        kill_raw,
        paused_raw,
        stats_raw,
        latest_raw,
        spend_raw,
        scored_raw,
        advised_raw,
        archive_raw,
    ) = (next(it) for _ in range(9))

    as_dict = replies.pairs
    history_items = history_raw if isinstance(history_raw, list) else []
    history = [h for h in (json_object(x) for x in history_items) if h is not None]
    ts = now.timestamp()
    breaker_state = replies.breaker_state(as_dict(breaker_raw), keys.breaker("llm_service"))
    cfg = settings.circuit_breaker.llm_service
    g = breaker.gate(breaker_state, ts, cfg)
    samples = adaptive.parse_samples(latency_raw if isinstance(latency_raw, list) else [])
    recent = adaptive.recent(samples, ts, settings.adaptive)
    plan = adaptive.plan(recent, settings.adaptive, settings.parallel, settings.timeouts)
    locks = []
    for key in lock_keys:
        value, ttl = next(it), next(it)
        owner = json_object(value) or {}
        locks.append(
            {
                "symbol": keys.symbol_of_lock(key),
                "owner": owner.get("instance_id"),
                "cycle_id": owner.get("cycle_id"),
                "pid": owner.get("pid"),
                "token": _token(owner.get("token")),
                "age_seconds": round(ts - float(owner.get("acquired_at") or ts), 1),
                "ttl_seconds": ttl if isinstance(ttl, int) else None,
            }
        )
    instances: list[dict[str, Any]] = []
    for key in hb_keys:
        fields, ttl = as_dict(next(it)), next(it)
        live = {c: e for c, e in ((c, as_float(e)) for c, e in fields.items()) if e is not None and e >= ts}
        instances.append(
            {
                "instance_id": key[len(keys.heartbeat_prefix) :],
                "cycles": sorted(live),
                "ttl_seconds": ttl if isinstance(ttl, int) else None,
            }
        )
    for lock in locks:
        alive = any(i["instance_id"] == lock["owner"] and lock["cycle_id"] in i["cycles"] for i in instances)
        lock["owner_alive"] = alive
    cooldown = {}
    for key in bp_keys:
        cooldown[keys.shard_of_backpressure(key)] = as_dict(next(it))
    stream_len = next(it)
    last_full = json_object(next(it))
    report = json_object(next(it))
    stats = _documents(as_dict(stats_raw))
    latest = _documents(as_dict(latest_raw))
    scored = _documents(as_dict(scored_raw))
    advised = _documents(as_dict(advised_raw))
    paused = {s: _or_reason(json_object(raw), raw) for s, raw in as_dict(paused_raw).items()}
    kill = as_dict(kill_raw)
    spend = as_dict(spend_raw)
    return {
        "now": now.isoformat(),
        # The full ``runner cycle --json`` document of the last cycle, else its summary.
        "last_cycle": last_full if last_full is not None else (history[0] if history else None),
        "history": history,
        "breaker": {
            "state": breaker_state.state.value,
            "failure_count": breaker_state.failure_count,
            "opened_at": breaker_state.opened_at,
            "success_count": breaker_state.success_count,
            "half_open_calls": breaker_state.half_open_calls,
            "next_probe_at": g.retry_at,
            "value": breaker.STATE_VALUE[breaker_state.state],
        },
        "breakers": {"llm_service": breaker_state.state.value},
        "kill_switch": {
            "on": kill.get("on") == "1",
            "reason": kill.get("reason"),
            "by": kill.get("by"),
            "at": as_float(kill.get("at")),
        },
        "cooldown": cooldown,
        "adaptive": {
            "concurrency": plan.concurrency,
            "symbol_timeout_seconds": plan.symbol_timeout,
            "p95_ms": plan.p95_ms,
            "p99_ms": plan.p99_ms,
            "high_latency": plan.high_latency,
            "would_skip": plan.skip,
            "samples": plan.samples,
        },
        "locks": locks,
        "instances": instances,
        "paused": paused,
        "symbols": stats,
        "latest": latest,
        "latest_scores": scored,
        "latest_advice": advised,
        "report": report,
        "stream_length": stream_len if isinstance(stream_len, int) else 0,
        "memory": policy.document(),
        "archive": archive_status(as_dict(archive_raw), configured=settings.archive.postgres_url is not None),
        "spend": {
            "usd": as_float(spend.get("usd")) or 0.0,
            "calls": int(as_float(spend.get("calls")) or 0),
            "budget_usd": settings.analyzer.daily_budget_usd,
        },
    }


def archive_status(fields: dict[str, str], *, configured: bool) -> dict[str, Any]:
    """The archive's progress as ``runner status`` shows it (``runner:archive``)."""
    gaps = {}
    for name, raw in fields.items():
        if name.startswith("gap:"):
            gap = json_object(raw)
            if gap is not None:
                gaps[name[len("gap:") :]] = gap
    return {
        "configured": configured,
        "result": fields.get("result"),
        "ok_at": as_float(fields.get("ok_at")),
        "error_at": as_float(fields.get("error_at")),
        "error": fields.get("error"),
        "cursors": {k[len("cursor:") :]: v for k, v in fields.items() if k.startswith("cursor:")},
        "gaps": gaps,
    }


def _token(value: Any) -> int | None:
    """A lock record's fencing token (written as a string: it has more digits than Lua keeps)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _or_reason(record: dict[str, Any] | None, raw: str) -> dict[str, Any]:
    """A paused symbol's record; a bare string (written by hand) is its reason."""
    return record if record is not None else {"reason": raw}


def _documents(by_symbol: dict[str, str]) -> dict[str, dict[str, Any]]:
    """A latest-document hash read as symbol -> document (unreadable entries left out)."""
    return {s: v for s, v in ((s, json_object(raw)) for s, raw in by_symbol.items()) if v is not None}


async def read_readiness(client: Client, keys: Keys, shard_key: str) -> tuple[str, int]:
    """What the readiness probe needs, in one round trip and no scan: the analyzer breaker's
    stored state and this shard's cooldown cycles left (a key of the wrong type reads as unset)."""
    async with redis_errors("the readiness check"), client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.breaker("llm_service"))
        pipe.hget(keys.backpressure(shard_key), "cooldown_remaining")
        breaker_raw, cooldown_raw = await pipe.execute(raise_on_error=False)
        for answer in (breaker_raw, cooldown_raw):
            if isinstance(answer, Exception) and not isinstance(answer, ResponseError):
                raise answer
    state = replies.breaker_state(replies.pairs(breaker_raw), keys.breaker("llm_service"))
    cooldown = as_float(cooldown_raw) if isinstance(cooldown_raw, str) else None
    return state.state.value, int(cooldown or 0)
