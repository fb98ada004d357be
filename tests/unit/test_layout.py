"""The walls of the code base: Redis only behind runner/store, Lua only in store/scripts.py,
PostgreSQL only in archive/postgres.py."""

from __future__ import annotations

import ast
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[2] / "runner"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules_outside_store() -> list[Path]:
    return [p for p in RUNNER.rglob("*.py") if "store" not in p.relative_to(RUNNER).parts]


def test_no_module_outside_the_store_talks_to_redis() -> None:
    talkers = {
        str(p.relative_to(RUNNER)): sorted(
            m for m in imported_modules(p) if m == "redis" or m.startswith("redis.")
        )
        for p in modules_outside_store()
    }

    assert {k: v for k, v in talkers.items() if v} == {}


def test_every_lua_script_lives_in_the_scripts_module() -> None:
    holders = [
        str(p.relative_to(RUNNER))
        for p in RUNNER.rglob("*.py")
        if "redis.call(" in p.read_text(encoding="utf-8") and p.name != "scripts.py"
    ]

    assert holders == []


def test_only_the_archive_module_talks_to_postgresql() -> None:
    talkers = sorted(
        str(p.relative_to(RUNNER))
        for p in RUNNER.rglob("*.py")
        if any(m == "psycopg" or m.startswith("psycopg.") for m in imported_modules(p))
    )

    assert talkers == ["archive/postgres.py"]
