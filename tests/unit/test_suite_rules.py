"""The rules the test suite keeps (docs/TESTING.md, "Rules the suite keeps"), checked on its source.

* No calendar: no test or benchmark pins a literal date as the scheduled time of a run
  (``RUNNER_SCHEDULED_AT``, ``scheduled_at``, or a job name ending in a minute number): the
  runner ignores a scheduled time more than an hour from now, so such a test breaks with time.
* Gates, not delays: every ``time.sleep`` / ``asyncio.sleep`` left under tests/ is listed below
  with the reason it cannot race the machine's speed; a new one fails this test until it is
  replaced by a gate or a condition wait, or listed here with its reason.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: (file, enclosing function) -> why this sleep is not a race against the wall clock.
ALLOWED_SLEEPS: dict[tuple[str, str], str] = {
    # Condition waits: the poll interval of a wait that ends as soon as the condition holds and
    # fails the test only after a generous timeout.
    ("tests/conftest.py", "wait_for_port"): "poll interval: until the server listens",
    ("tests/integration/helpers.py", "wait_until"): "poll interval of the suite's condition wait",
    ("tests/integration/test_opencode.py", "eventually"): "poll interval of an async condition wait",
    ("tests/integration/test_opencode.py", "settle"): "poll interval: until no OpenCode session is busy",
    ("tests/reliability/support.py", "Proc.wait"): "poll interval: reaps the run with wait4, samples its RSS",
    ("tests/reliability/support.py", "Proc.kill"): "poll interval: until the killed run is reaped",
    ("tests/reliability/test_soak.py", "drive"): "the soak's scheduler loop: polls its runs every 5 ms",
    ("tests/images/pod.py", "wait_for"): "poll interval: until a pod answers what the test waits for",
    ("tests/integration/web.py", "until"): "poll interval of the API tests' async condition wait",
    ("tests/support/topology.py", "eventually"): "poll interval: until Sentinel or the cluster agrees",
    ("tests/unit/test_delivery.py", "wait_until"): "poll interval: until the local receiver got a message",
    ("tests/support/scripted_stage.py", "ScriptedStage.answer"): (
        "poll interval: until the test creates the gate file"
    ),
    ("tests/support/scripted.py", "ScriptedAnalyzer.analyze"): (
        "the gate (a poll for the gate file) and SCRIPTED_DELAY, which only sets a lower bound on "
        "latency or shapes load in tests whose verdict holds whichever way a race goes"
    ),
    # Real timeouts of a second or two: waiting longer than they last can only be safe; a slow
    # machine makes the wait longer, never too short.
    ("tests/integration/test_cli_resilience.py", "test_breaker_opens_across_runs_then_probes_and_closes"): (
        "the breaker's 1 s recovery timeout"
    ),
    ("tests/integration/test_cli_resilience.py", "test_failed_probe_reopens_the_breaker"): (
        "the breaker's 1 s recovery timeout"
    ),
    (
        "tests/integration/test_cli_resilience.py",
        "test_a_lock_older_than_the_stale_threshold_is_taken_over_and_its_owner_fenced",
    ): "the 1 s stale-lock threshold (the old run is held by a gate meanwhile)",
    ("tests/reliability/test_soak.py", "test_soak"): "the 2 s heartbeat TTL of runs that have all ended",
    # Positioning: where the event falls shapes the case, the verdict holds wherever it falls.
    ("tests/reliability/test_redis_faults.py", "test_redis_frozen_just_before_the_deadline"): (
        "freezes Redis about 0.7 s before a 3 s deadline; the bound holds wherever the freeze falls"
    ),
    # Simulated work in in-process fakes, where only a lower bound or an interleaving matters.
    (
        "tests/integration/test_events.py",
        "test_reconnecting_with_the_last_id_misses_and_repeats_nothing_while_entries_keep_coming.writer",
    ): "paces a writer that runs through every reconnect; no gap and no repeat hold at any pace",
    ("tests/unit/test_replication.py", "test_tokens_keep_growing_when_a_failover_loses_the_counter"): (
        "lets the server's microsecond clock move past the last token: a slower machine moves it further"
    ),
    ("tests/reliability/test_clock.py", "_jumping_analyzer.handler"): (
        "an analysis of at least 0.3 s: latency above the 200 ms threshold on any machine"
    ),
    ("tests/unit/test_scheduler.py", "test_never_more_than_limit_in_flight.work"): (
        "uneven work; the peak and the results hold for any timing"
    ),
    ("tests/unit/test_scheduler.py", "test_fewer_items_than_the_limit_run_together.work"): (
        "both items start before either yields back, whatever the timing"
    ),
}

SCHEDULE_KEYS = {"RUNNER_SCHEDULED_AT", "scheduled_at", "RUNNER_JOB_NAME", "job_name"}
#: A date (2026-11-23), or the minutes-since-the-epoch tail of a CronJob's Job name.
PINNED = re.compile(r"\d{4}-\d{2}-\d{2}|-\d{7,}$")


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def sleeps(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(enclosing function, line) of every non-zero ``time.sleep`` / ``asyncio.sleep`` call."""
    bare = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in ("time", "asyncio")
        for alias in node.names
        if alias.name == "sleep"
    }

    def is_sleep(call: ast.Call) -> bool:
        f = call.func
        dotted = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.attr == "sleep"
        named = (dotted and f.value.id in ("time", "asyncio")) or (isinstance(f, ast.Name) and f.id in bare)
        zero = bool(call.args) and isinstance(call.args[0], ast.Constant) and call.args[0].value == 0
        return named and not zero

    def visit(node: ast.AST, scope: list[str]) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                yield from visit(child, [*scope, child.name])
            else:
                if isinstance(child, ast.Call) and is_sleep(child):
                    yield ".".join(scope) or "<module>", child.lineno
                yield from visit(child, scope)

    yield from visit(tree, [])


def pinned_schedules(tree: ast.AST) -> Iterator[int]:
    """Lines where a schedule setting gets a literal date (or an f-string starting with one)."""

    def literal(value: ast.AST | None) -> str:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
        if isinstance(value, ast.JoinedStr):
            return "".join(
                v.value for v in value.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
            )
        return ""

    for node in ast.walk(tree):
        pairs: list[tuple[str, ast.AST]] = []
        if isinstance(node, ast.Dict):
            pairs = [(literal(k), v) for k, v in zip(node.keys, node.values, strict=True)]
        elif isinstance(node, ast.Call):
            pairs = [(kw.arg or "", kw.value) for kw in node.keywords]
        elif isinstance(node, ast.Assign):
            pairs = [(literal(t.slice), node.value) for t in node.targets if isinstance(t, ast.Subscript)]
        for key, value in pairs:
            if key in SCHEDULE_KEYS and PINNED.search(literal(value)):
                yield node.lineno


def test_no_test_or_benchmark_pins_the_scheduled_time_to_a_date() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in python_files("tests", "bench")
        for line in pinned_schedules(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert found == [], (
        "a scheduled time pinned to a date stops being honoured an hour later; derive it from one "
        f"`now` taken in the test (tests.integration.helpers.scheduled_now): {found}"
    )


def test_every_sleep_in_the_tests_is_allowed_for_a_reason() -> None:
    found = {
        (str(path.relative_to(ROOT)), scope): line
        for path in python_files("tests")
        for scope, line in sleeps(ast.parse(path.read_text(encoding="utf-8")))
    }
    unlisted = sorted(
        f"{file}:{line} ({scope})"
        for (file, scope), line in found.items()
        if (file, scope) not in ALLOWED_SLEEPS
    )
    assert unlisted == [], (
        "a fixed delay is a race against the machine's speed: hold the run with a gate "
        "(tests.integration.helpers.Gate) or wait for a condition (wait_until), or list the sleep "
        f"in ALLOWED_SLEEPS with the reason it cannot race: {unlisted}"
    )
    stale = sorted(set(ALLOWED_SLEEPS) - set(found))
    assert stale == [], f"ALLOWED_SLEEPS names sleeps that are gone: {stale}"


def test_the_checks_see_what_they_are_for() -> None:
    source = """
import asyncio
import time
from time import sleep as nap

env = {"RUNNER_SCHEDULED_AT": "2026-11-23T14:05:00Z", "SCRIPTED_DELAY": "0.3"}
other = dict(RUNNER_JOB_NAME="runner-29471520")
env["RUNNER_SCHEDULED_AT"] = f"2000-01-01T00:{1:02d}:00Z"
fine = {"RUNNER_SCHEDULED_AT": scheduled_now(), "cycle_id": "20000101T000000000Z-dead00"}

class Waiter:
    def wait(self):
        time.sleep(1.5)

async def test_it():
    async def handler():
        await asyncio.sleep(0.3)
    await asyncio.sleep(0)
    nap(2)
"""
    tree = ast.parse(source)
    assert sorted(pinned_schedules(tree)) == [6, 7, 8]
    assert sorted(sleeps(tree), key=lambda s: s[1]) == [
        ("Waiter.wait", 13),
        ("test_it.handler", 17),
        ("test_it", 19),
    ]
