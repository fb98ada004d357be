"""Unit-test fixtures: no setting leaks in from the machine's environment."""

from __future__ import annotations

import os

import pytest

#: Well-known names the settings read besides ``RUNNER_<SECTION>__<KEY>``.
ALIASES = (
    "REDIS_URL",
    "INSTANCE_ID",
    "LOG_LEVEL",
    "MAX_SYMBOLS",
    "OPENROUTER_API_KEY",
    "OPENCODE_URL",
    "OPENCODE_SERVER_PASSWORD",
    "PUSHGATEWAY_URL",
    "KUBERNETES_SERVICE_HOST",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings reads ``os.environ`` itself: drop every runner variable for each test."""
    for name in list(os.environ):
        if name.startswith("RUNNER_") or name in ALIASES:
            monkeypatch.delenv(name, raising=False)
