"""The pure transition logic: which changes between a cycle's start and end are told, under
which id, and what the message says."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from runner import notify
from runner.breaker import BreakerState, Event, State, claim_probes, transition
from runner.config import Breaker
from runner.errors import Code
from runner.models import CycleStatus, Outcome, SymbolResult, SymbolStatus
from runner.notify import Facts, Seen, Streak, detect

T0 = datetime(2026, 11, 23, 14, 5, 7, tzinfo=UTC).timestamp()
CFG = Breaker(failure_threshold=2, recovery_timeout_seconds=60, half_open_max_calls=2, success_threshold=1)
SEEN = Seen(
    now=T0 + 30,
    instance_id="pod-a",
    shard="0/1",
    cycle_id="c-1",
    day="2026-11-23",
    budget_usd=1.0,
    failing_cycles=3,
    failures="transient on ETH/USD (503 service unavailable)",
)
CLOSED = BreakerState()
OPEN = transition(transition(CLOSED, Event.FAILURE, T0, CFG), Event.FAILURE, T0 + 1, CFG)


def paused_record(at: float = T0, reason: str = "invalid_output: confidence 7 is not in [0, 1]") -> str:
    return json.dumps(
        {"since": at, "reason": reason, "code": "invalid_output", "failures": 3, "cycle_id": "c-0"}
    )


def kill(at: str = f"{T0:.3f}", reason: str = "exchange maintenance") -> dict[str, str]:
    return {"on": "1", "reason": reason, "by": "alice", "at": at}


def events(notices: list[notify.Notice]) -> list[str]:
    return [n.event.value for n in notices]


def outcome(status: CycleStatus, results: list[SymbolResult] | None = None, at: float = T0) -> Outcome:
    return Outcome(
        cycle_id="c-1",
        instance_id="pod-a",
        shard="0/1",
        status=status,
        exit_code=3 if status is CycleStatus.FAILED else 0,
        started_at=datetime.fromtimestamp(at, UTC),
        scheduled_minute="2026-11-23T14:05",
        duration_ms=10,
        results=results or [],
    )


def failed(
    symbol: str, code: Code = Code.TRANSIENT, reason: str = "transient: 503 service unavailable"
) -> SymbolResult:
    return SymbolResult(symbol=symbol, status=SymbolStatus.FAILED, code=code, reason=reason, attempts=1)


# Nothing changed ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "facts",
    [
        Facts(),
        Facts(breaker=OPEN, paused={"ETH/USD": paused_record()}, kill_switch=kill(), spend_usd=2.0),
        Facts(streak=Streak(count=5, since=T0)),
    ],
)
def test_no_change_tells_nothing(facts: Facts) -> None:
    assert detect(facts, facts, SEEN) == []


# The breaker ---------------------------------------------------------------------------------------


def test_a_breaker_that_opens_is_told_once_with_how_to_close_it() -> None:
    (notice,) = detect(Facts(breaker=CLOSED), Facts(breaker=OPEN), SEEN)

    assert notice.event is notify.Event.BREAKER_OPENED
    assert notice.id == f"breaker_opened:{T0 + 1:.3f}"
    assert notice.title == "autonomous-runner: circuit breaker opened"
    assert notice.kind == "failure"
    assert "after 2 failures in a row" in notice.body
    assert "Since: 2026-11-23 14:05:08 UTC" in notice.body
    assert "Why: transient on ETH/USD (503 service unavailable)" in notice.body
    assert "`runner breaker reset`" in notice.body
    assert "Seen by: shard 0/1, instance pod-a, cycle c-1" in notice.body


def test_failed_probes_of_one_outage_tell_nothing_new() -> None:
    half_open, _ = claim_probes(OPEN, 1, T0 + 61, CFG)
    reopened = transition(half_open, Event.FAILURE, T0 + 62, CFG)

    assert reopened.state is State.OPEN
    assert reopened.opened_at == T0 + 62
    assert detect(Facts(breaker=OPEN), Facts(breaker=half_open), SEEN) == []
    assert detect(Facts(breaker=half_open), Facts(breaker=reopened), SEEN) == []


def test_an_outage_saved_before_since_existed_keeps_its_start_through_failed_probes() -> None:
    legacy = BreakerState(state="open", failure_count=5, opened_at=T0)
    half_open, _ = claim_probes(legacy, 1, T0 + 61, CFG)
    reopened = transition(half_open, Event.FAILURE, T0 + 62, CFG)

    assert detect(Facts(breaker=legacy), Facts(breaker=reopened), SEEN) == []


def test_a_closing_breaker_is_told_with_the_outage_it_ends() -> None:
    half_open, _ = claim_probes(OPEN, 1, T0 + 61, CFG)
    closed = transition(half_open, Event.SUCCESS, T0 + 62, CFG)

    (notice,) = detect(Facts(breaker=half_open), Facts(breaker=closed), SEEN)

    assert notice.event is notify.Event.BREAKER_CLOSED
    assert notice.id == f"breaker_closed:{T0 + 1:.3f}"
    assert notice.kind == "success"
    assert "it had been open since 2026-11-23 14:05:08 UTC" in notice.body
    assert "probe calls to the analyzer succeeded" in notice.body


def test_runs_that_see_one_opening_name_it_the_same_way() -> None:
    # Run A opened it; run B started before, recorded after and added a failure of its own.
    seen_by_b = replace(SEEN, instance_id="pod-b", cycle_id="c-2", failures="")
    after_b = transition(OPEN, Event.FAILURE, T0 + 5, CFG)

    (a,) = detect(Facts(breaker=CLOSED), Facts(breaker=OPEN), SEEN)
    (b,) = detect(Facts(breaker=CLOSED), Facts(breaker=after_b), seen_by_b)

    assert a.id == b.id
    assert "failures counted by other runs" in b.body


def test_a_breaker_reset_by_hand_has_the_id_a_cycle_would_give_it() -> None:
    by_hand = notify.breaker_closed(OPEN, Seen(now=T0 + 9, instance_id="ops", command="runner breaker reset"))

    (seen_by_cycle,) = detect(Facts(breaker=OPEN), Facts(breaker=BreakerState(version=9)), SEEN)

    assert by_hand.id == seen_by_cycle.id
    assert "closed by hand" in by_hand.body
    assert "Seen by: `runner breaker reset` on ops" in by_hand.body


def test_a_breaker_closed_and_opened_again_within_one_cycle_tells_both() -> None:
    second = replace(OPEN, since=T0 + 40, opened_at=T0 + 40)

    assert events(detect(Facts(breaker=OPEN), Facts(breaker=second), SEEN)) == [
        "breaker_closed",
        "breaker_opened",
    ]


# Paused symbols ------------------------------------------------------------------------------------


def test_a_paused_symbol_is_told_with_its_reason_and_the_resume_command() -> None:
    (notice,) = detect(Facts(), Facts(paused={"ETH/USD": paused_record()}), SEEN)

    assert notice.event is notify.Event.SYMBOL_PAUSED
    assert notice.id == f"symbol_paused:ETH/USD:{T0:.3f}"
    assert notice.title == "autonomous-runner: ETH/USD paused"
    assert "after 3 failures of its own in a row" in notice.body
    assert "Why: invalid_output: confidence 7 is not in [0, 1]" in notice.body
    assert "To undo: `runner resume ETH/USD`" in notice.body
    assert "Since: 2026-11-23 14:05:07 UTC" in notice.body


def test_a_resumed_symbol_has_the_id_its_command_gives_it() -> None:
    record = paused_record()
    by_command = notify.symbol_resumed("ETH/USD", record, Seen(now=T0 + 9, instance_id="ops", command="x"))

    (seen_by_cycle,) = detect(Facts(paused={"ETH/USD": record}), Facts(), SEEN)

    assert seen_by_cycle.event is notify.Event.SYMBOL_RESUMED
    assert seen_by_cycle.id == by_command.id == f"symbol_resumed:ETH/USD:{T0:.3f}"
    assert "it had been paused since 2026-11-23 14:05:07 UTC" in by_command.body


def test_a_symbol_resumed_and_paused_again_within_one_cycle_tells_both() -> None:
    before = Facts(paused={"ETH/USD": paused_record(T0)})
    after = Facts(paused={"ETH/USD": paused_record(T0 + 20)})

    assert events(detect(before, after, SEEN)) == ["symbol_resumed", "symbol_paused"]


def test_a_paused_record_written_by_hand_is_still_told() -> None:
    (notice,) = detect(Facts(), Facts(paused={"ETH/USD": "bad data feed"}), SEEN)

    assert notice.event is notify.Event.SYMBOL_PAUSED
    assert "Why: bad data feed" in notice.body


# The kill switch -----------------------------------------------------------------------------------


def test_the_kill_switch_turned_on_and_off_is_told_with_the_ids_of_the_commands() -> None:
    fields = kill()
    command = Seen(now=T0 + 9, instance_id="ops", command="runner kill-switch on")

    (on,) = detect(Facts(), Facts(kill_switch=fields), SEEN)
    (off,) = detect(Facts(kill_switch=fields), Facts(), SEEN)

    assert on.id == notify.kill_switch_on(fields, command).id == f"kill_switch_on:{T0:.3f}"
    assert off.id == notify.kill_switch_off(fields, command).id == f"kill_switch_off:{T0:.3f}"
    assert "Why: exchange maintenance (by alice)" in on.body
    assert "To undo: `runner kill-switch off`" in on.body
    assert "it had been on since 2026-11-23 14:05:07 UTC" in off.body
    assert on.kind == "warning"


# The budget ----------------------------------------------------------------------------------------


def test_the_budget_running_out_is_told_once_a_day() -> None:
    (notice,) = detect(Facts(spend_usd=0.9), Facts(spend_usd=1.02), SEEN)

    assert notice.id == "budget_exhausted:2026-11-23"
    assert "$1.0200 of $1.00 on 2026-11-23 (UTC)" in notice.body
    assert "RUNNER_ANALYZER__DAILY_BUDGET_USD" in notice.body
    assert detect(Facts(spend_usd=1.02), Facts(spend_usd=1.5), SEEN) == []
    assert detect(Facts(spend_usd=0.5), Facts(spend_usd=0.9), SEEN) == []
    assert detect(Facts(spend_usd=0.9), Facts(spend_usd=5.0), replace(SEEN, budget_usd=None)) == []


# The failed-cycle streak ---------------------------------------------------------------------------


def test_the_streak_counts_failed_cycles_and_ignores_skipped_ones() -> None:
    streak = Streak()
    history = []
    for i, status in enumerate([CycleStatus.FAILED, CycleStatus.SKIPPED, CycleStatus.FAILED]):
        new = notify.next_streak(streak, outcome(status, [failed("ETH/USD")], at=T0 + 60 * i))
        streak = new if new is not None else streak
        history.append(streak.count)

    assert history == [1, 1, 2]
    assert streak.since == T0
    assert streak.why == "transient on ETH/USD (503 service unavailable)"
    assert notify.next_streak(streak, outcome(CycleStatus.PARTIAL)) == Streak()
    assert notify.next_streak(streak, outcome(CycleStatus.COMPLETED)) == Streak()


def test_cycles_failing_is_told_when_the_streak_reaches_the_threshold_and_not_after() -> None:
    two, three, four = (Streak(count=n, since=T0, why="permanent on ETH/USD") for n in (2, 3, 4))

    (notice,) = detect(Facts(streak=two), Facts(streak=three), SEEN)

    assert notice.event is notify.Event.CYCLES_FAILING
    assert notice.id == f"cycles_failing:0/1:{T0:.3f}"
    assert "3 cycles of shard 0/1 failed in a row" in notice.body
    assert "Why: permanent on ETH/USD" in notice.body
    assert "`runner status`" in notice.body
    assert detect(Facts(streak=three), Facts(streak=four), SEEN) == []
    assert detect(Facts(), Facts(streak=two), SEEN) == []


def test_recovered_is_told_only_after_a_streak_that_was_told() -> None:
    four = Streak(count=4, since=T0)

    (notice,) = detect(Facts(streak=four), Facts(streak=Streak()), SEEN)

    assert notice.event is notify.Event.RECOVERED
    assert notice.id == f"recovered:0/1:{T0:.3f}"
    assert "succeed again after 4 failed cycles in a row" in notice.body
    assert detect(Facts(streak=Streak(count=2, since=T0)), Facts(), SEEN) == []


def test_an_operator_command_has_no_streak() -> None:
    command = Seen(now=T0, instance_id="ops", command="runner resume ETH/USD")

    assert detect(Facts(streak=Streak(count=9, since=T0)), Facts(), command) == []


def test_the_streak_fields_round_trip_and_garbage_raises() -> None:
    streak = Streak(count=3, since=T0 + 0.125, why="transient on ETH/USD")

    assert Streak.from_fields(streak.to_fields()) == streak
    assert Streak.from_fields({}) == Streak()
    with pytest.raises(ValueError, match=r"."):
        Streak.from_fields({"count": "many"})
    # The message reaches the operator in the "unreadable (...); reset" warning.
    with pytest.raises(ValueError, match=r"^a negative count$"):
        Streak.from_fields({"count": "-1"})


# Messages ------------------------------------------------------------------------------------------


def test_the_failure_summary_groups_symbols_by_error_class() -> None:
    result = outcome(
        CycleStatus.FAILED,
        [
            failed("ETH/USD"),
            failed("BTC/USD"),
            failed("SOL/USD", Code.TIMEOUT, "timeout: analysis took longer than 10.0s"),
            SymbolResult(symbol="AVAX/USD", status=SymbolStatus.PAUSED, code=Code.PAUSED, reason="paused"),
        ],
    )

    assert notify.failure_summary(result) == (
        "transient on ETH/USD, BTC/USD (503 service unavailable); "
        "timeout on SOL/USD (analysis took longer than 10.0s)"
    )


def test_every_message_says_what_since_when_why_and_how_to_undo() -> None:
    notices = [
        *detect(Facts(), Facts(breaker=OPEN, paused={"ETH/USD": paused_record()}, kill_switch=kill()), SEEN),
        *detect(Facts(spend_usd=0.5, streak=Streak(2, T0)), Facts(spend_usd=1.5, streak=Streak(3, T0)), SEEN),
    ]

    assert len(notices) == 5
    for n in notices:
        lines = n.body.splitlines()
        assert [line.split(":")[0] for line in lines[1:]] == ["Since", "Why", "To undo", "Seen by", "Event"]
        assert lines[-1] == f"Event: {n.event.value}"


def test_a_masked_notice_hides_what_the_mask_hides() -> None:
    notice = notify.kill_switch_on(kill(reason="key sk-or-12345678 leaked"), SEEN)

    masked = notice.masked(lambda text: text.replace("sk-or-12345678", "***"))

    assert "sk-or-12345678" not in masked.body
    assert "key *** leaked" in masked.body
    assert masked.id == notice.id


# Every message word for word: what a person reads, with each fallback a stored value may need ------

SEEN_BY = "Seen by: shard 0/1, instance pod-a, cycle c-1"
PAUSED_RECORD = json.dumps(
    {"since": T0, "reason": "confidence 7 is not in [0, 1]", "code": "invalid_output", "failures": 4}
)
STREAK = Streak(count=3, since=T0, why="permanent on ETH/USD (401 unauthorized)")
RESET = Seen(now=T0 + 90, instance_id="ops", command="runner breaker reset")

#: What each builder says: its event, id, title and body, line by line.
MESSAGES = {
    "breaker_opened": (
        lambda: notify.breaker_opened(OPEN, SEEN),
        [
            "breaker_opened",
            f"breaker_opened:{T0 + 1:.3f}",
            "autonomous-runner: circuit breaker opened",
            "The analyzer's circuit breaker opened after 2 failures in a row: cycles skip, and probe the "
            "analyzer again 60 s after it opened.",
            "Since: 2026-11-23 14:05:08 UTC",
            "Why: transient on ETH/USD (503 service unavailable)",
            "To undo: `runner breaker reset` closes it by hand; it also closes by itself once probe calls "
            "succeed",
            SEEN_BY,
            "Event: breaker_opened",
        ],
    ),
    "breaker_closed": (
        lambda: notify.breaker_closed(OPEN, SEEN),
        [
            "breaker_closed",
            f"breaker_closed:{T0 + 1:.3f}",
            "autonomous-runner: circuit breaker closed",
            "The analyzer's circuit breaker closed: cycles run again.",
            "Since: 2026-11-23 14:05:37 UTC (it had been open since 2026-11-23 14:05:08 UTC)",
            "Why: probe calls to the analyzer succeeded",
            "To undo: nothing to undo; it opens again if the analyzer keeps failing",
            SEEN_BY,
            "Event: breaker_closed",
        ],
    ),
    "breaker_reset": (
        lambda: notify.breaker_closed(OPEN, RESET),
        [
            "breaker_closed",
            f"breaker_closed:{T0 + 1:.3f}",
            "autonomous-runner: circuit breaker closed",
            "The analyzer's circuit breaker closed: cycles run again.",
            "Since: 2026-11-23 14:06:37 UTC (it had been open since 2026-11-23 14:05:08 UTC)",
            "Why: closed by hand",
            "To undo: nothing to undo; it opens again if the analyzer keeps failing",
            "Seen by: `runner breaker reset` on ops",
            "Event: breaker_closed",
        ],
    ),
    "symbol_paused": (
        lambda: notify.symbol_paused("ETH/USD", PAUSED_RECORD, replace(SEEN, pause_after=5)),
        [
            "symbol_paused",
            f"symbol_paused:ETH/USD:{T0:.3f}",
            "autonomous-runner: ETH/USD paused",
            "ETH/USD is paused after 4 failures of its own in a row: cycles skip it.",
            "Since: 2026-11-23 14:05:07 UTC",
            "Why: invalid_output: confidence 7 is not in [0, 1]",
            "To undo: `runner resume ETH/USD`",
            SEEN_BY,
            "Event: symbol_paused",
        ],
    ),
    "symbol_resumed": (
        lambda: notify.symbol_resumed("ETH/USD", PAUSED_RECORD, SEEN),
        [
            "symbol_resumed",
            f"symbol_resumed:ETH/USD:{T0:.3f}",
            "autonomous-runner: ETH/USD resumed",
            "ETH/USD is no longer paused: cycles analyze it again.",
            "Since: 2026-11-23 14:05:37 UTC (it had been paused since 2026-11-23 14:05:07 UTC)",
            "Why: resumed by hand; it was paused for: confidence 7 is not in [0, 1]",
            "To undo: nothing to undo; it is paused again after 3 failures of its own",
            SEEN_BY,
            "Event: symbol_resumed",
        ],
    ),
    "kill_switch_on": (
        lambda: notify.kill_switch_on(kill(), SEEN),
        [
            "kill_switch_on",
            f"kill_switch_on:{T0:.3f}",
            "autonomous-runner: kill switch ON",
            "The kill switch is on: every cycle skips until it is turned off.",
            "Since: 2026-11-23 14:05:07 UTC",
            "Why: exchange maintenance (by alice)",
            "To undo: `runner kill-switch off`",
            SEEN_BY,
            "Event: kill_switch_on",
        ],
    ),
    "kill_switch_off": (
        lambda: notify.kill_switch_off(kill(), SEEN),
        [
            "kill_switch_off",
            f"kill_switch_off:{T0:.3f}",
            "autonomous-runner: kill switch off",
            "The kill switch is off: cycles run again.",
            "Since: 2026-11-23 14:05:37 UTC (it had been on since 2026-11-23 14:05:07 UTC)",
            "Why: turned off; it was on for: exchange maintenance (by alice)",
            'To undo: `runner kill-switch on --reason "..."` halts every cycle again',
            SEEN_BY,
            "Event: kill_switch_off",
        ],
    ),
    "budget_exhausted": (
        lambda: notify.budget_exhausted(1.02, SEEN),
        [
            "budget_exhausted",
            "budget_exhausted:2026-11-23",
            "autonomous-runner: daily budget spent",
            "The analyzer's daily budget is spent: $1.0200 of $1.00 on 2026-11-23 (UTC). Cycles skip until "
            "00:00 UTC.",
            "Since: 2026-11-23 14:05:37 UTC",
            "Why: the cost of today's analyzer calls; last cycle: transient on ETH/USD (503 service "
            "unavailable)",
            "To undo: raise analyzer.daily_budget_usd (RUNNER_ANALYZER__DAILY_BUDGET_USD), or wait for "
            "00:00 UTC",
            SEEN_BY,
            "Event: budget_exhausted",
        ],
    ),
    "cycles_failing": (
        lambda: notify.cycles_failing("0/1", STREAK, SEEN),
        [
            "cycles_failing",
            f"cycles_failing:0/1:{T0:.3f}",
            "autonomous-runner: cycles failing (shard 0/1)",
            "3 cycles of shard 0/1 failed in a row: no symbol produced a signal.",
            "Since: 2026-11-23 14:05:07 UTC",
            "Why: permanent on ETH/USD (401 unauthorized)",
            "To undo: see `runner status` for each symbol's last error; cycles recover by themselves once "
            "the cause is gone (`runner breaker reset` if the breaker is open)",
            SEEN_BY,
            "Event: cycles_failing",
        ],
    ),
    "recovered": (
        lambda: notify.recovered("0/1", STREAK, SEEN),
        [
            "recovered",
            f"recovered:0/1:{T0:.3f}",
            "autonomous-runner: cycles recovered (shard 0/1)",
            "Cycles of shard 0/1 succeed again after 3 failed cycles in a row.",
            "Since: 2026-11-23 14:05:37 UTC (failing since 2026-11-23 14:05:07 UTC)",
            "Why: cycle c-1 ran and did not fail",
            "To undo: nothing to undo",
            SEEN_BY,
            "Event: recovered",
        ],
    ),
    "test": (
        lambda: notify.test_notice("pod-a", T0),
        [
            "test",
            f"test:{T0:.3f}",
            "autonomous-runner: test notification",
            "A test message from `runner notify test` on pod-a at 2026-11-23 14:05:07 UTC: notifications "
            "reach this address.",
        ],
    ),
}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_every_message_word_for_word(name: str) -> None:
    build, expected = MESSAGES[name]

    notice = build()

    assert [notice.event.value, notice.id, notice.title, *notice.body.splitlines()] == expected


def test_a_paused_record_without_its_details_falls_back_on_the_settings_and_the_cycle() -> None:
    record = json.dumps({"cycle_id": "c-0"})
    seen = replace(SEEN, pause_after=5)

    paused = notify.symbol_paused("ETH/USD", record, seen)
    resumed = notify.symbol_resumed("ETH/USD", record, seen)

    assert paused.id == "symbol_paused:ETH/USD:c-0"
    assert paused.body.splitlines()[:3] == [
        "ETH/USD is paused after 5 failures of its own in a row: cycles skip it.",
        "Since: an unknown time",
        "Why: no reason recorded",
    ]
    assert resumed.id == "symbol_resumed:ETH/USD:c-0"
    assert resumed.body.splitlines()[1:4] == [
        "Since: 2026-11-23 14:05:37 UTC (it had been paused since an unknown time)",
        "Why: resumed by hand",
        "To undo: nothing to undo; it is paused again after 5 failures of its own",
    ]


@pytest.mark.parametrize(
    ("raw", "why"), [("bad data feed", "bad data feed"), ("42", "42"), ("[1, 2]", "[1, 2]")]
)
def test_a_paused_record_that_is_not_a_json_object_is_its_own_reason(raw: str, why: str) -> None:
    paused = notify.symbol_paused("ETH/USD", raw, SEEN)
    resumed = notify.symbol_resumed("ETH/USD", raw, SEEN)

    assert paused.id == "symbol_paused:ETH/USD:?"
    assert paused.body.splitlines()[2] == f"Why: {why}"
    assert resumed.id == "symbol_resumed:ETH/USD:?"
    assert resumed.body.splitlines()[2] == f"Why: resumed by hand; it was paused for: {why}"


def test_a_kill_switch_set_by_hand_without_its_details_still_reads_well() -> None:
    bare = {"on": "1"}

    on = notify.kill_switch_on(bare, SEEN)
    off = notify.kill_switch_off(bare, SEEN)

    assert on.id == "kill_switch_on:?"
    assert on.body.splitlines()[1:3] == ["Since: an unknown time", "Why: no reason given (by ?)"]
    assert off.id == "kill_switch_off:?"
    assert off.body.splitlines()[1:3] == [
        "Since: 2026-11-23 14:05:37 UTC (it had been on since an unknown time)",
        "Why: turned off; it was on for: no reason given (by ?)",
    ]


def test_a_budget_spent_in_a_cycle_without_failures_gives_the_cost_alone_as_why() -> None:
    notice = notify.budget_exhausted(1.02, replace(SEEN, failures=""))

    assert notice.body.splitlines()[2] == "Why: the cost of today's analyzer calls"


def test_a_streak_without_its_reason_says_what_the_cycle_knows() -> None:
    bare = Streak(count=3, since=None)

    assert notify.cycles_failing("0/1", bare, SEEN).body.splitlines()[1:3] == [
        "Since: an unknown time",
        "Why: transient on ETH/USD (503 service unavailable)",
    ]
    assert notify.cycles_failing("0/1", bare, replace(SEEN, failures="")).body.splitlines()[2] == (
        "Why: every symbol failed"
    )
    assert notify.cycles_failing("0/1", bare, SEEN).id == "cycles_failing:0/1:?"
    assert notify.recovered("0/1", bare, replace(SEEN, cycle_id=None)).body.splitlines()[2] == (
        "Why: cycle ? ran and did not fail"
    )


# The boundaries of each transition --------------------------------------------------------------


def test_spending_exactly_the_budget_is_told_and_starting_at_it_is_not() -> None:
    assert events(detect(Facts(spend_usd=0.9), Facts(spend_usd=1.0), SEEN)) == ["budget_exhausted"]
    assert detect(Facts(spend_usd=1.0), Facts(spend_usd=1.2), SEEN) == []


def test_a_kill_switch_turned_off_and_on_again_within_one_cycle_tells_both() -> None:
    again = kill(at=f"{T0 + 20:.3f}", reason="second maintenance")

    told = detect(Facts(kill_switch=kill()), Facts(kill_switch=again), SEEN)

    assert [(n.event.value, n.id) for n in told] == [
        ("kill_switch_off", f"kill_switch_off:{T0:.3f}"),
        ("kill_switch_on", f"kill_switch_on:{T0 + 20:.3f}"),
    ]


def test_a_kill_switch_whose_flag_alone_changes_is_told() -> None:
    on, off = kill(), {**kill(), "on": "0"}

    assert events(detect(Facts(kill_switch=on), Facts(kill_switch=off), SEEN)) == ["kill_switch_off"]
    assert events(detect(Facts(kill_switch=off), Facts(kill_switch=on), SEEN)) == ["kill_switch_on"]


def test_a_streak_of_exactly_the_threshold_recovers_and_a_skipped_cycle_tells_nothing() -> None:
    three = Streak(count=3, since=T0)

    assert events(detect(Facts(streak=three), Facts(streak=Streak()), SEEN)) == ["recovered"]
    assert detect(Facts(streak=three), Facts(streak=three), SEEN) == []


def test_a_new_streak_right_after_a_told_one_tells_the_recovery_and_the_new_failures() -> None:
    old, new = Streak(count=4, since=T0), Streak(count=3, since=T0 + 600)

    told = detect(Facts(streak=old), Facts(streak=new), SEEN)

    assert [(n.event.value, n.id) for n in told] == [
        ("recovered", f"recovered:0/1:{T0:.3f}"),
        ("cycles_failing", f"cycles_failing:0/1:{T0 + 600:.3f}"),
    ]


def test_an_opening_no_run_of_this_cycle_caused_says_so() -> None:
    notice = notify.breaker_opened(OPEN, replace(SEEN, failures=""))

    assert notice.body.splitlines()[2] == "Why: failures counted by other runs"


# The failure summary's limits and a stored time that is no time ------------------------------------


def test_the_failure_summary_names_the_three_largest_classes_and_five_symbols_of_each() -> None:
    results = [
        *(failed(f"T{i}/USD") for i in range(6)),
        *(failed(f"O{i}/USD", Code.TIMEOUT, "timeout: slow") for i in range(5)),
        *(failed(f"A{i}/USD", Code.AUTH, "auth: 401 unauthorized") for i in range(2)),
        failed("P/USD", Code.PERMANENT, "permanent: 404"),
    ]

    assert notify.failure_summary(outcome(CycleStatus.FAILED, results)) == (
        "transient on T0/USD, T1/USD, T2/USD, T3/USD, T4/USD and 1 more (503 service unavailable); "
        "timeout on O0/USD, O1/USD, O2/USD, O3/USD, O4/USD (slow); "
        "auth on A0/USD, A1/USD (401 unauthorized)"
    )


def test_the_failure_summary_without_a_reason_names_the_class_alone_and_cuts_a_long_one() -> None:
    bare = SymbolResult(symbol="ETH/USD", status=SymbolStatus.RATE_LIMITED, code=Code.RATE_LIMITED)
    long = failed("BTC/USD", Code.ERROR, "error:" + "x" * 100 + "y" * 100)  # no space after the class

    assert notify.failure_summary(outcome(CycleStatus.FAILED, [bare])) == "rate_limited on ETH/USD"
    assert notify.failure_summary(outcome(CycleStatus.FAILED, [long])) == (
        f"error on BTC/USD ({'x' * 100}{'y' * 60})"
    )


@pytest.mark.parametrize("epoch", [1e20, float("nan"), None])
def test_a_time_that_is_no_time_reads_as_unknown(epoch: float | None) -> None:
    assert notify.when(epoch) == "an unknown time"


def test_a_masked_notice_masks_its_title_too() -> None:
    notice = notify.symbol_paused("ETH/USD", paused_record(), SEEN)

    masked = notice.masked(lambda text: text.replace("ETH/USD", "***"))

    assert "ETH/USD" in notice.title
    assert masked.title == notice.title.replace("ETH/USD", "***")


def test_a_run_without_a_shard_is_named_by_its_instance_and_cycle() -> None:
    assert Seen(now=T0, instance_id="pod-a", cycle_id="c-1").where() == "instance pod-a, cycle c-1"


def test_a_streak_stored_with_a_start_but_no_count_starts_afresh() -> None:
    stale = Streak(count=0, since=T0 - 600)

    after = notify.next_streak(stale, outcome(CycleStatus.FAILED, [failed("ETH/USD")]))

    assert after is not None
    assert (after.count, after.since) == (1, T0)
