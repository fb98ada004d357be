"""Fixtures of the integration tests of ``runner serve``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer
from tests.integration.web import TOKEN, Served, start_serve

Starter = Callable[..., Served]


@pytest.fixture
def served(real_redis: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[Starter]:
    """Start ``runner serve --no-schedule`` processes against the test's (flushed) redis-server;
    each must exit 0 on SIGTERM, with no traceback and without ever logging the API token."""
    servers: list[Served] = []

    def start(**env: str) -> Served:
        server = start_serve(redis_server.url, tmp_path, **env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        result = server.stop()
        assert result.code == 0, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert TOKEN not in result.stderr
