"""Unit-test fixtures: no setting leaks in from the machine's environment."""

from __future__ import annotations

import pytest

from tests.conftest import drop_settings_variables


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every unit test sees the settings' defaults, whatever this machine's environment holds."""
    drop_settings_variables(monkeypatch)
