"""Whether a cycle may run: the guards, in the contract's order, and maintenance windows.

Every test here runs three times: with the machine's local time zone at UTC, at UTC+05:45 and at
UTC-10:00 (POSIX ``TZ`` strings, which need no time-zone database). The guards judge and report
in UTC whatever the local zone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from runner.adaptive import Backpressure, Sample, plan
from runner.breaker import BreakerState, Gate
from runner.config import Settings, load_settings
from runner.guards import Snapshot, decide, in_maintenance, parse_window
from runner.store.locks import LockResult
from tests.support.timezone import local_time_zone as local_zone

NOW = datetime(2026, 11, 23, 14, 5, 41, tzinfo=UTC)
TS = NOW.timestamp()


@pytest.fixture(autouse=True, params=["UTC0", "NPT-5:45", "HST10"], ids=["TZ=UTC", "TZ=+0545", "TZ=-1000"])
def local_time_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    with local_zone(request.param) as tz:
        yield tz


def make_settings(**overrides: Any) -> Settings:
    return load_settings(None, overrides, environ={})


def calm() -> Snapshot:
    """Nothing stands in the way."""
    return Snapshot(
        kill_switch={},
        breaker=BreakerState(),
        backpressure=Backpressure(),
        samples=[],
        paused={},
        lease=LockResult("runner:lease:0-1", "acquired", 1, json.dumps({"instance_id": "me"})),
    )


def everything_wrong() -> Snapshot:
    """Every guard would skip."""
    other = {"instance_id": "pod-b", "cycle_id": "c-42", "acquired_at": TS - 5}
    return Snapshot(
        kill_switch={"on": "1", "reason": "incident 7", "by": "ops", "at": str(TS - 100)},
        breaker=BreakerState(state="open", failure_count=5, opened_at=TS - 10),
        backpressure=Backpressure(cooldown_remaining=1),
        samples=[Sample(TS - i, 9500.0) for i in range(10)],
        paused={},
        lease=LockResult("runner:lease:0-1", "held", 0, json.dumps(other)),
        spend_usd=12.0,
    )


GUARDED = {"maintenance_windows": ["14:00-14:30"], "analyzer": {"daily_budget_usd": 10}}


def test_nothing_in_the_way_runs_with_the_plan() -> None:
    d = decide(calm(), make_settings(), NOW)

    assert d.skip_reason is None
    assert d.gate.allow
    assert d.plan.concurrency == 10


def test_each_run_has_the_local_time_zone_it_set(local_time_zone: str) -> None:
    # A guard that used local time would see another hour in two of the three runs.
    local_hour = datetime.fromtimestamp(TS).hour

    assert local_hour == {"UTC0": 14, "NPT-5:45": 19, "HST10": 4}[local_time_zone]


def test_a_skip_carries_the_plan_and_the_breaker_gate_it_was_judged_with() -> None:
    settings = make_settings()
    snap = replace(calm(), samples=[Sample(TS - i, 9500.0) for i in range(10)])

    d = decide(snap, settings, NOW)

    assert d.skip_reason == "high_latency"
    assert d.plan == plan([9500.0] * 10, settings.adaptive, settings.parallel, settings.timeouts)
    assert d.gate == Gate(allow=True)


#: Each guard alone, and the exact detail an operator reads in `runner status`.
DETAILS: list[tuple[dict[str, Any], dict[str, Any], str, str]] = [
    (
        {"kill_switch": {"on": "1", "reason": "incident 7", "by": "ops", "at": str(TS - 100)}},
        {},
        "kill_switch",
        "kill switch on since 2026-11-23T14:04:01Z by ops: incident 7",
    ),
    (
        {"kill_switch": {"on": "1", "at": "yesterday"}},
        {},
        "kill_switch",
        "kill switch on since ? by ?: no reason given",
    ),
    (
        {},
        {"maintenance_windows": ["14:00-14:30"]},
        "maintenance",
        "inside maintenance window 14:00-14:30 UTC",
    ),
    (
        {"backpressure": Backpressure(cooldown_remaining=2)},
        {},
        "cooldown",
        "backpressure cooldown, 2 cycle(s) left",
    ),
    (
        {"spend_usd": 5.0},
        {"analyzer": {"daily_budget_usd": 5}},
        "budget",
        "daily budget spent: $5.0000 of $5.00",
    ),
    (
        {"breaker": BreakerState(state="open", failure_count=5, opened_at=TS - 1)},
        {},
        "breaker_open",
        "circuit breaker open after 5 failures; next probe at 2026-11-23T14:06:40Z",
    ),
    (
        {"samples": [Sample(TS - i, 9500.0) for i in range(10)]},
        {},
        "high_latency",
        "p99 latency 9500 ms > 9000 ms over 10 recent samples",
    ),
    (
        {
            "lease": LockResult(
                "runner:lease:0-1",
                "held",
                0,
                json.dumps({"instance_id": "pod-b", "cycle_id": "c-42", "acquired_at": TS - 5}),
            )
        },
        {},
        "cycle_running",
        "cycle c-42 of pod-b running since 2026-11-23T14:05:36Z",
    ),
    (
        {"lease": LockResult("runner:lease:0-1", "held", 0, "not json")},
        {},
        "cycle_running",
        "cycle ? of ? running since ?",
    ),
]


@pytest.mark.parametrize(
    ("snapshot_changes", "settings", "reason", "detail"),
    DETAILS,
    ids=[f"{d[2]}-{i}" for i, d in enumerate(DETAILS)],
)
def test_each_guard_names_its_reason_and_says_why_in_utc(
    snapshot_changes: dict[str, Any], settings: dict[str, Any], reason: str, detail: str
) -> None:
    d = decide(replace(calm(), **snapshot_changes), make_settings(**settings), NOW)

    assert (d.skip_reason, d.detail) == (reason, detail)


#: (the skip expected now, then what lifts that guard: snapshot changes, settings or None)
LIFTS: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
    ("kill_switch", {"kill_switch": {}}, None),
    ("maintenance", {}, {"analyzer": {"daily_budget_usd": 10}}),  # same settings, no windows
    ("cooldown", {"backpressure": Backpressure()}, None),
    ("budget", {"spend_usd": 0.0}, None),
    ("breaker_open", {"breaker": BreakerState()}, None),
    ("high_latency", {"samples": []}, None),
    ("cycle_running", {"lease": calm().lease}, None),
]


def test_guards_apply_in_the_contracts_order() -> None:
    settings = make_settings(**GUARDED)
    snap = everything_wrong()

    for expected, snapshot_changes, new_settings in LIFTS:
        assert decide(snap, settings, NOW).skip_reason == expected
        snap = replace(snap, **snapshot_changes)
        if new_settings is not None:
            settings = make_settings(**new_settings)

    assert decide(snap, settings, NOW).skip_reason is None


def test_kill_switch_detail_says_who_and_why() -> None:
    snap = replace(calm(), kill_switch={"on": "1", "reason": "incident 7", "by": "ops", "at": str(TS)})

    d = decide(snap, make_settings(), NOW)

    assert d.skip_reason == "kill_switch"
    assert "ops" in d.detail
    assert "incident 7" in d.detail
    assert "2026-11-23T14:05:41Z" in d.detail


def test_kill_switch_off_does_not_skip() -> None:
    snap = replace(calm(), kill_switch={"on": "0", "reason": "cleared"})

    assert decide(snap, make_settings(), NOW).skip_reason is None


def test_kill_switch_with_garbage_time_still_skips() -> None:
    snap = replace(calm(), kill_switch={"on": "1", "at": "yesterday"})

    d = decide(snap, make_settings(), NOW)

    assert d.skip_reason == "kill_switch"
    assert "no reason given" in d.detail


def test_maintenance_window_skips_and_names_the_window() -> None:
    d = decide(calm(), make_settings(maintenance_windows=["03:00-04:00", "14:00-14:30"]), NOW)

    assert d.skip_reason == "maintenance"
    assert "14:00-14:30" in d.detail


def test_cooldown_skips_with_cycles_left() -> None:
    d = decide(replace(calm(), backpressure=Backpressure(cooldown_remaining=2)), make_settings(), NOW)

    assert d.skip_reason == "cooldown"
    assert "2" in d.detail


def test_budget_skips_only_when_spent() -> None:
    settings = make_settings(analyzer={"daily_budget_usd": 5})

    under = decide(replace(calm(), spend_usd=4.99), settings, NOW)
    spent = decide(replace(calm(), spend_usd=5.0), settings, NOW)
    unlimited = decide(replace(calm(), spend_usd=500.0), make_settings(), NOW)

    assert under.skip_reason is None
    assert spent.skip_reason == "budget"
    assert unlimited.skip_reason is None


def test_open_breaker_skips_until_recovery_then_probes() -> None:
    settings = make_settings()
    recovery = settings.circuit_breaker.llm_service.recovery_timeout_seconds
    fresh = replace(calm(), breaker=BreakerState(state="open", failure_count=5, opened_at=TS - 1))
    due = replace(calm(), breaker=BreakerState(state="open", failure_count=5, opened_at=TS - recovery))

    skipped = decide(fresh, settings, NOW)
    probing = decide(due, settings, NOW)

    assert skipped.skip_reason == "breaker_open"
    assert not skipped.gate.allow
    assert probing.skip_reason is None
    assert probing.gate.probes == settings.circuit_breaker.llm_service.half_open_max_calls


def test_high_p99_skips_but_only_with_recent_samples() -> None:
    settings = make_settings()
    slow_now = replace(calm(), samples=[Sample(TS - i, 9500.0) for i in range(10)])
    slow_long_ago = replace(calm(), samples=[Sample(TS - 3600 - i, 9500.0) for i in range(10)])

    assert decide(slow_now, settings, NOW).skip_reason == "high_latency"
    assert decide(slow_long_ago, settings, NOW).skip_reason is None


def test_high_p95_runs_slower_instead_of_skipping() -> None:
    samples = [Sample(TS - i, 8500.0) for i in range(10)]

    d = decide(replace(calm(), samples=samples), make_settings(), NOW)

    assert d.skip_reason is None
    assert d.plan.high_latency
    assert d.plan.concurrency == 5


def test_lease_held_by_another_run_skips_with_its_owner() -> None:
    other = {"instance_id": "pod-b", "cycle_id": "c-42", "acquired_at": TS - 5}
    snap = replace(calm(), lease=LockResult("runner:lease:0-1", "held", 0, json.dumps(other)))

    d = decide(snap, make_settings(), NOW)

    assert d.skip_reason == "cycle_running"
    assert "pod-b" in d.detail
    assert "c-42" in d.detail


@pytest.mark.parametrize("status", ["acquired", "taken_over"])
def test_lease_we_own_does_not_skip(status: str) -> None:
    snap = replace(calm(), lease=LockResult("runner:lease:0-1", status, 3, "{}"))

    assert decide(snap, make_settings(), NOW).skip_reason is None


def test_no_lease_read_does_not_skip() -> None:
    assert decide(replace(calm(), lease=None), make_settings(), NOW).skip_reason is None


# Maintenance windows ---------------------------------------------------------------------------


def at(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2026, 11, 23, hh, mm, ss, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "inside"),
    [
        (at(1, 59, 59), False),
        (at(2, 0), True),  # start inclusive
        (at(2, 15), True),
        (at(2, 29, 59), True),
        (at(2, 30), False),  # end exclusive
        (at(14, 0), False),
    ],
)
def test_window_within_a_day(moment: datetime, inside: bool) -> None:
    assert (in_maintenance(["02:00-02:30"], moment) == "02:00-02:30") is inside


@pytest.mark.parametrize(
    ("moment", "inside"),
    [
        (at(23, 49, 59), False),
        (at(23, 50), True),
        (at(23, 59, 59), True),
        (at(0, 0), True),
        (at(0, 9, 59), True),
        (at(0, 10), False),
        (at(12, 0), False),
    ],
)
def test_window_crossing_midnight(moment: datetime, inside: bool) -> None:
    assert (in_maintenance(["23:50-00:10"], moment) == "23:50-00:10") is inside


def test_a_window_that_ends_where_it_starts_covers_no_time() -> None:
    assert [in_maintenance(["02:00-02:00"], at(h, m)) for h, m in ((1, 59), (2, 0), (2, 1), (14, 0))] == [
        None,
        None,
        None,
        None,
    ]


def test_first_matching_window_is_named() -> None:
    windows = ["01:00-02:00", "13:00-15:00", "14:00-14:10"]

    assert in_maintenance(windows, at(14, 5)) == "13:00-15:00"
    assert in_maintenance(windows, at(16, 0)) is None
    assert in_maintenance([], at(14, 5)) is None


def test_parse_window() -> None:
    start, end = parse_window("23:50-00:10")

    assert (start.hour, start.minute, end.hour, end.minute) == (23, 50, 0, 10)


def test_window_is_judged_in_utc_whatever_the_timezone_of_now() -> None:
    two_fifteen_utc = at(2, 15).astimezone(timezone(timedelta(hours=2)))  # 04:15 at +02:00

    assert in_maintenance(["02:00-02:30"], two_fifteen_utc) == "02:00-02:30"
