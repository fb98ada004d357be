"""Whether Redis may evict the runner's keys once it is full: its ``maxmemory-policy``.

Locks, the cycle lease, heartbeats and the idempotency markers all carry a TTL, so every policy
but ``noeviction`` may evict them when ``maxmemory`` is reached (the ``volatile-*`` policies
evict only keys with a TTL: exactly those). An evicted lock lets two runs work on one symbol; an
evicted marker lets a re-run publish a signal twice. With ``noeviction`` a full Redis refuses
writes instead, and the cycle ends with one line (``RedisRefused``).

The policy is read at every start (``CONFIG GET maxmemory*`` sent with the cycle's first script,
in the same round trip) and by ``runner status``; nothing is cached across runs. A server that
refuses ``CONFIG`` (managed Redis, an ACL without it) is asked ``INFO memory`` instead: one
round trip more, only there. A server that refuses both leaves the policy unknown, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from runner.store.connection import Client, exchange

#: The settings ``maxmemory-policy`` and ``maxmemory`` (a pattern: one argument, every version).
CONFIG_COMMAND = ("CONFIG", "GET", "maxmemory*")
INFO_COMMAND = ("INFO", "memory")
SAFE_POLICY = "noeviction"


@dataclass(frozen=True)
class MemoryPolicy:
    """What the server said about its memory limit (None: it would not say)."""

    policy: str | None = None
    #: Bytes; 0: no limit.
    maxmemory: int | None = None
    #: Where it was read: ``config``, ``info`` or ``""`` (unknown).
    source: str = ""

    @property
    def evicts(self) -> bool:
        """Whether keys may be evicted: a policy other than noeviction, with a limit set."""
        return self.policy is not None and self.policy != SAFE_POLICY and self.maxmemory != 0

    def warning(self) -> str | None:
        """The one line to log and show when keys may be evicted."""
        if not self.evicts:
            return None
        limit = f", maxmemory {self.maxmemory} bytes" if self.maxmemory else ""
        return (
            f"Redis may evict keys when full (maxmemory-policy {self.policy}{limit}): locks, leases "
            "and idempotency markers can vanish, so two runs may work on one symbol or a signal be "
            "published twice; set maxmemory-policy noeviction"
        )

    def document(self) -> dict[str, Any]:
        """``runner status --json``'s ``memory``."""
        return {
            "maxmemory_policy": self.policy,
            "maxmemory": self.maxmemory,
            "read_from": self.source or None,
            "evicts": self.evicts,
            "warning": self.warning(),
        }


def from_config(reply: Any) -> MemoryPolicy | None:
    """``CONFIG GET maxmemory*`` (a flat list, or a dict from redis-py); None when refused."""
    if isinstance(reply, BaseException):
        return None
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    if not isinstance(reply, dict) or "maxmemory-policy" not in reply:
        return None
    return MemoryPolicy(str(reply["maxmemory-policy"]), _int(reply.get("maxmemory")), "config")


def from_info(reply: Any) -> MemoryPolicy | None:
    """``INFO memory`` (its text, or a dict from redis-py); None when refused."""
    if isinstance(reply, BaseException):
        return None
    if isinstance(reply, str):
        fields = dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)
    elif isinstance(reply, dict):
        fields = {str(k): str(v) for k, v in reply.items()}
    else:
        return None
    policy = fields.get("maxmemory_policy")
    if not policy:
        return None
    return MemoryPolicy(policy.strip(), _int(fields.get("maxmemory")), "info")


async def read_info(client: Client, slot_key: str, reply_timeout: float) -> MemoryPolicy:
    """The policy from ``INFO memory`` (when ``CONFIG`` was refused); unknown when that is too."""
    try:
        (reply,) = await exchange(client, [INFO_COMMAND], slot_key=slot_key, reply_timeout=reply_timeout)
    except (RedisError, OSError):
        return MemoryPolicy()
    return from_info(reply) or MemoryPolicy()


async def read_policy(client: Client, slot_key: str, reply_timeout: float) -> MemoryPolicy:
    """The policy of the node serving ``slot_key`` (``runner status``); unknown when it would not
    say. Lost connections raise as any Redis call does."""
    (reply,) = await exchange(client, [CONFIG_COMMAND], slot_key=slot_key, reply_timeout=reply_timeout)
    return from_config(reply) or await read_info(client, slot_key, reply_timeout)


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None
