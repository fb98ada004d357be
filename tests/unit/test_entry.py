"""The entry point's start-up settings, and that every command collects garbage again."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

import runner.__main__ as entry
from runner import cli


@pytest.fixture
def collector() -> Iterator[None]:
    """Leave the interpreter's collector as it was found, whatever the test did to it."""
    was_enabled = gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def _record_start(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> dict[str, object]:
    seen: dict[str, object] = {}

    def fake_main() -> None:
        seen["collector_on"] = gc.isenabled()
        seen["plugins"] = os.environ.get("PYDANTIC_DISABLE_PLUGINS")

    monkeypatch.setattr(os, "environ", environ)
    monkeypatch.setattr(cli, "main", fake_main)
    entry.main()
    return seen


def test_modules_load_with_the_collector_off_and_pydantic_plugins_skipped(
    monkeypatch: pytest.MonkeyPatch, collector: None
) -> None:
    seen = _record_start(monkeypatch, {})
    assert seen == {"collector_on": False, "plugins": "__all__"}


def test_a_plugin_setting_of_the_user_is_kept(monkeypatch: pytest.MonkeyPatch, collector: None) -> None:
    seen = _record_start(monkeypatch, {"PYDANTIC_DISABLE_PLUGINS": "logfire"})
    assert seen["plugins"] == "logfire"


def test_a_command_runs_with_the_collector_on_and_start_up_frozen(collector: None) -> None:
    gc.disable()

    async def work() -> tuple[bool, int]:
        return gc.isenabled(), gc.get_freeze_count()

    enabled, frozen = cli.run_async(work)
    assert enabled
    assert frozen > 0


def test_the_collector_is_left_alone_when_the_command_line_is_called_from_python(collector: None) -> None:
    gc.enable()
    before = gc.get_freeze_count()

    async def work() -> tuple[bool, int]:
        return gc.isenabled(), gc.get_freeze_count()

    assert cli.run_async(work) == (True, before)


#: Modules a command that does not use them must not pay for at start-up.
HEAVY = ("psycopg", "runner.archive.postgres", "httpx", "prometheus_client")


def _imported_by(*args: str, **extra_env: str) -> set[str]:
    """The modules of ``HEAVY`` that ``runner <args>`` imported (run in a fresh interpreter)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        f"sys.argv = ['runner', *{list(args)!r}]\n"
        "import runner.__main__ as entry\n"
        "try:\n    entry.main()\nexcept SystemExit:\n    pass\n"
        f"print('imported:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "POSTGRES", "REDIS"))}
    env.update(extra_env)
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True, timeout=60
    )
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("imported:")]
    return {m for m in line.removeprefix("imported:").split(",") if m}


def test_help_imports_no_driver_nor_client() -> None:
    assert _imported_by("--help") == set()


def test_the_settings_of_an_archive_import_no_driver_until_it_is_used() -> None:
    seen = _imported_by("config", "--json", POSTGRES_URL="postgresql://runner:pw@127.0.0.1:1/archive")

    assert "psycopg" not in seen
