"""Fixtures of the reliability suite: the report collector, a Redis of our own per test (one
that may be frozen), the stub LLM.

``RELIABILITY_REPORT=path`` writes the markdown report at the end of the session;
``RELIABILITY_SOAK_CYCLES=N`` sets the soak's length (default 40).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer, drop_settings_variables, start_redis
from tests.reliability.report import SCENARIOS, Recorder, Report, Row, describe
from tests.reliability.support import stop_server
from tests.support.stub_llm import StubLLM, stub_llm_session  # noqa: F401 - a fixture, used by name

REPORT = Report()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(number): the reliability scenario a test belongs to")


def _row(item: pytest.Item) -> Row | None:
    marker = item.get_closest_marker("scenario")
    if marker is None:
        return None
    number = str(marker.args[0])
    assert number in SCENARIOS, f"unknown scenario {number}"
    function = getattr(item, "function", None)
    callspec = getattr(item, "callspec", None)
    return REPORT.row(
        item.nodeid,
        number,
        getattr(item, "originalname", item.name),
        callspec.id if callspec is not None else "",
        describe(function) if function else "",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    rep = yield
    row = _row(item)
    if row is None:
        return rep
    if rep.when in ("setup", "call"):
        row.duration_s += rep.duration  # setup too: module fixtures may run the real work
    if rep.when == "call" or (rep.when == "setup" and rep.outcome != "passed"):
        if hasattr(rep, "wasxfail"):
            row.outcome = "xfail" if rep.skipped else "failed (xpass)"
            row.reason = str(rep.wasxfail).removeprefix("reason: ")
        elif rep.when == "setup" and rep.failed:
            row.outcome = "error"
        else:
            row.outcome = rep.outcome
    return rep


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("RELIABILITY_REPORT")
    if target and REPORT.rows:
        path = Path(target)
        if not path.is_absolute():
            path = Path(session.config.rootpath) / path
        REPORT.write(path)


@pytest.fixture
def measure(request: pytest.FixtureRequest) -> Recorder:
    """Record figures for the report (the test must carry a ``scenario`` marker)."""
    row = _row(request.node)
    assert row is not None, "a test that records figures needs @pytest.mark.scenario(...)"
    return Recorder(row)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (it may be frozen or paused); always continued and
    stopped afterwards."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = start_redis(directory)
    try:
        yield server
    finally:
        stop_server(server)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """For in-process cycles: pydantic-settings reads os.environ, keep runner variables out."""
    drop_settings_variables(monkeypatch)


@pytest.fixture
def stub(stub_llm_session: StubLLM) -> StubLLM:  # noqa: F811 - the fixture imported above
    """The session's stub LLM, answering valid signals, with no recorded requests."""
    stub_llm_session.reset()
    return stub_llm_session


def soak_cycles() -> int:
    return int(os.environ.get("RELIABILITY_SOAK_CYCLES", "40"))
