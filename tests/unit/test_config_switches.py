"""Settings given in the environment that are switches or nested sections, and the archive URL's
hosts: each bad value one line naming its variable."""

from __future__ import annotations

import pytest

from runner.config import load_settings
from runner.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("off", False), ("no", False), ("0", False), ("ON", True), ("1", True), ("true", True)],
)
def test_the_report_switch_takes_the_usual_words(
    monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool
) -> None:
    monkeypatch.setenv("RUNNER_PIPELINE__REPORT", value)

    assert load_settings().pipeline.report.enabled is enabled


def test_the_report_switch_takes_a_section_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_PIPELINE__REPORT", '{"enabled": true, "timeout_seconds": 4}')

    report = load_settings().pipeline.report
    assert (report.enabled, report.timeout_seconds) == (True, 4)


def test_a_report_switch_that_is_no_switch_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_PIPELINE__REPORT", "sometimes")

    with pytest.raises(ConfigError, match=r"^autonomous_runner\.pipeline\.report: must be true or false"):
        load_settings()


def test_a_nested_list_that_is_not_json_names_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_PIPELINE__STAGES", "signal,score")
    monkeypatch.setenv("RUNNER_PIPELINE__SCORE__BACKEND", "builtin")

    with pytest.raises(ConfigError) as info:
        load_settings()

    assert str(info.value).startswith(
        "autonomous_runner.pipeline.stages (RUNNER_PIPELINE__STAGES): must be JSON"
    )
    assert "(got 'signal,score')" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@db:5432/archive",
        "postgresql://u:pw@db/archive",
        "postgresql://u:pw@h1:5432,h2:5433/archive?target_session_attrs=read-write",
        "postgresql://u:pw@[::1]:5432/archive",
        "postgresql:///archive?host=/run/postgresql",
    ],
)
def test_archive_urls_libpq_takes_are_taken(url: str) -> None:
    assert load_settings(environ={"POSTGRES_URL": url}).archive.postgres_url is not None


@pytest.mark.parametrize("url", ["postgresql://u:pw@db:port/a", "postgresql://u:pw@h1:5432,h2:99999/a"])
def test_an_archive_url_with_a_bad_port_is_one_line_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"POSTGRES_URL": url})

    assert str(info.value).startswith("autonomous_runner.archive.postgres_url: has a bad port")
    assert "pw" not in str(info.value)
