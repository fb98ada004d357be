"""The circuit breaker's pure transitions, probes and persistence format."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from runner.breaker import BreakerState, Event, Gate, claim_probes, gate, replay, transition
from runner.config import Breaker

CFG = Breaker(failure_threshold=3, recovery_timeout_seconds=60, half_open_max_calls=2, success_threshold=2)
T0 = 1_800_000_000.0


ONE_FAILURE = Breaker(
    failure_threshold=1, recovery_timeout_seconds=60, half_open_max_calls=3, success_threshold=2
)


def fail_times(s: BreakerState, n: int, now: float = T0) -> BreakerState:
    for i in range(n):
        s = transition(s, Event.FAILURE, now + i, CFG)
    return s


def opened(at: float = T0) -> BreakerState:
    return transition(BreakerState(failure_count=CFG.failure_threshold - 1), Event.FAILURE, at, CFG)


def half_open(at: float = T0 + 60) -> BreakerState:
    s, granted = claim_probes(opened(T0), 1, at, CFG)
    assert granted == 1
    return s


# Transition table ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "event", "expected_state"),
    [
        (BreakerState(), Event.SUCCESS, "closed"),
        (BreakerState(), Event.FAILURE, "closed"),
        (BreakerState(failure_count=1), Event.FAILURE, "closed"),
        (BreakerState(failure_count=2), Event.FAILURE, "open"),
        (BreakerState(failure_count=2), Event.SUCCESS, "closed"),
        (BreakerState(state="open", opened_at=T0, failure_count=3), Event.SUCCESS, "open"),
        (BreakerState(state="open", opened_at=T0, failure_count=3), Event.FAILURE, "open"),
        (BreakerState(state="open", opened_at=T0, failure_count=3), Event.RESET, "closed"),
        (BreakerState(state="half_open", half_open_at=T0, half_open_calls=1), Event.SUCCESS, "half_open"),
        (
            BreakerState(state="half_open", half_open_at=T0, half_open_calls=1, success_count=1),
            Event.SUCCESS,
            "closed",
        ),
        (BreakerState(state="half_open", half_open_at=T0, half_open_calls=1), Event.FAILURE, "open"),
        (BreakerState(state="half_open", half_open_at=T0), Event.RESET, "closed"),
    ],
)
def test_transition_table(start: BreakerState, event: Event, expected_state: str) -> None:
    assert transition(start, event, T0 + 100, CFG).state == expected_state


def test_closed_opens_after_failure_threshold_consecutive_failures() -> None:
    s = fail_times(BreakerState(), CFG.failure_threshold - 1)
    assert s.state == "closed"
    assert s.failure_count == CFG.failure_threshold - 1

    s = transition(s, Event.FAILURE, T0 + 50, CFG)

    assert s.state == "open"
    assert s.failure_count == CFG.failure_threshold
    assert s.opened_at == T0 + 50
    assert s.last_failure_at == T0 + 50


def test_success_resets_the_failure_count() -> None:
    s = fail_times(BreakerState(), CFG.failure_threshold - 1)

    s = transition(s, Event.SUCCESS, T0 + 10, CFG)
    assert s.failure_count == 0
    s = fail_times(s, CFG.failure_threshold - 1, T0 + 20)

    assert s.state == "closed"


def test_opening_starts_from_clean_half_open_counters_whatever_the_hash_held() -> None:
    s = BreakerState(failure_count=2, success_count=1, half_open_calls=2, version=4)

    after = transition(s, Event.FAILURE, T0, CFG)

    assert after == BreakerState(
        state="open", failure_count=3, opened_at=T0, last_failure_at=T0, since=T0, version=4
    )


def test_a_failure_below_the_threshold_is_counted_and_stamped() -> None:
    after = transition(BreakerState(failure_count=1, version=2), Event.FAILURE, T0, CFG)

    assert after == BreakerState(failure_count=2, last_failure_at=T0, version=2)


def test_closed_breaker_lets_every_call_through() -> None:
    g = gate(BreakerState(), T0, CFG)

    assert g.allow
    assert g.probes is None


def test_open_breaker_rejects_until_recovery_timeout() -> None:
    s = opened(T0)

    before = gate(s, T0 + CFG.recovery_timeout_seconds - 0.001, CFG)
    at = gate(s, T0 + CFG.recovery_timeout_seconds, CFG)

    assert before == Gate(allow=False, retry_at=T0 + CFG.recovery_timeout_seconds)
    assert at == Gate(allow=True, probes=CFG.half_open_max_calls)


def test_claim_on_an_open_breaker_before_recovery_grants_nothing() -> None:
    s = opened(T0)

    after, granted = claim_probes(s, 5, T0 + 1, CFG)

    assert granted == 0
    assert after == s


def test_claim_after_recovery_moves_to_half_open() -> None:
    now = T0 + CFG.recovery_timeout_seconds + 5

    s, granted = claim_probes(opened(T0), 1, now, CFG)

    assert granted == 1
    assert s.state == "half_open"
    assert s.half_open_at == now
    assert s.half_open_calls == 1
    assert s.success_count == 0


def test_claim_on_an_open_breaker_starts_half_open_from_clean_counters() -> None:
    leftover = BreakerState(state="open", failure_count=4, success_count=1, half_open_calls=2, opened_at=T0)
    now = T0 + CFG.recovery_timeout_seconds

    s, granted = claim_probes(leftover, 1, now, CFG)

    assert granted == 1
    assert s == BreakerState(
        state="half_open", failure_count=4, success_count=0, half_open_calls=1, opened_at=T0, half_open_at=now
    )


def test_claim_on_a_closed_breaker_grants_nothing_and_changes_nothing() -> None:
    s, granted = claim_probes(BreakerState(), 3, T0, CFG)

    assert granted == 0
    assert s == BreakerState()


def test_half_open_grants_at_most_max_calls_across_repeated_claims() -> None:
    now = T0 + CFG.recovery_timeout_seconds
    s, first = claim_probes(opened(T0), 1, now, CFG)
    s, second = claim_probes(s, 5, now + 1, CFG)
    s, third = claim_probes(s, 5, now + 2, CFG)

    assert (first, second, third) == (1, 1, 0)
    assert s.half_open_calls == CFG.half_open_max_calls
    assert gate(s, now + 2, CFG) == Gate(allow=False, retry_at=now + CFG.recovery_timeout_seconds)


def test_half_open_with_one_probe_out_grants_only_the_one_left_even_after_a_recovery_timeout() -> None:
    s = BreakerState(state="half_open", half_open_calls=1, opened_at=T0, half_open_at=T0 + 60)
    much_later = T0 + 60 + 10 * CFG.recovery_timeout_seconds

    assert gate(s, T0 + 61, CFG) == Gate(allow=True, probes=1)
    assert gate(s, much_later, CFG) == Gate(allow=True, probes=1)
    assert claim_probes(s, 5, much_later, CFG) == (replace(s, half_open_calls=2), 1)


def test_one_large_claim_is_capped_at_max_calls() -> None:
    s, granted = claim_probes(opened(T0), 10, T0 + CFG.recovery_timeout_seconds, CFG)

    assert granted == CFG.half_open_max_calls
    assert s.half_open_calls == CFG.half_open_max_calls


@given(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=12))
def test_repeated_claims_never_hand_out_more_than_max_calls(wanted: list[int]) -> None:
    s = opened(T0)
    now = T0 + CFG.recovery_timeout_seconds
    total = 0
    for i, w in enumerate(wanted):
        s, granted = claim_probes(s, w, now + i * 0.5, CFG)
        assert 0 <= granted <= w
        total += granted

    assert total == min(sum(wanted), CFG.half_open_max_calls)


def test_half_open_closes_after_success_threshold_successes() -> None:
    s = half_open()

    s = transition(s, Event.SUCCESS, T0 + 61, CFG)
    assert s.state == "half_open"
    assert s.success_count == 1
    s = transition(s, Event.SUCCESS, T0 + 62, CFG)

    assert s.state == "closed"
    assert (s.failure_count, s.success_count, s.half_open_calls) == (0, 0, 0)
    assert s.opened_at is None


#: Half-open with every counter in use, one success reported.
PROBING = BreakerState(
    state="half_open",
    failure_count=3,
    success_count=1,
    half_open_calls=2,
    opened_at=T0,
    half_open_at=T0 + 60,
    last_failure_at=T0,
    version=5,
)


def test_closing_from_half_open_forgets_everything_but_the_version() -> None:
    s = PROBING

    assert transition(s, Event.SUCCESS, T0 + 61, CFG) == BreakerState(version=5)


def test_a_failure_in_half_open_reopens_counting_and_stamping_it() -> None:
    s = PROBING

    after = transition(s, Event.FAILURE, T0 + 70, CFG)

    assert after == BreakerState(
        state="open",
        failure_count=4,
        opened_at=T0 + 70,
        half_open_at=T0 + 60,
        last_failure_at=T0 + 70,
        since=T0,  # the outage began when the breaker first opened, not at this probe's failure
        version=5,
    )


def test_a_second_failed_probe_keeps_the_start_of_the_outage_not_the_last_opening() -> None:
    reopened = replace(PROBING, since=T0 - 120)  # first opened at T0 - 120, reopened at T0

    after = transition(reopened, Event.FAILURE, T0 + 70, CFG)

    assert (after.opened_at, after.since, after.outage_since) == (T0 + 70, T0 - 120, T0 - 120)


def test_any_failure_in_half_open_reopens() -> None:
    s = transition(half_open(), Event.SUCCESS, T0 + 61, CFG)

    s = transition(s, Event.FAILURE, T0 + 70, CFG)

    assert s.state == "open"
    assert s.opened_at == T0 + 70
    assert s.success_count == 0
    assert s.half_open_calls == 0
    assert not gate(s, T0 + 70 + CFG.recovery_timeout_seconds - 1, CFG).allow
    assert gate(s, T0 + 70 + CFG.recovery_timeout_seconds, CFG).allow


def test_stale_half_open_allows_new_probes_after_another_recovery_timeout() -> None:
    start = T0 + CFG.recovery_timeout_seconds
    s, granted = claim_probes(opened(T0), CFG.half_open_max_calls, start, CFG)
    assert granted == CFG.half_open_max_calls

    # The probers never report back.
    too_soon = gate(s, start + CFG.recovery_timeout_seconds - 1, CFG)
    s_again, regranted = claim_probes(s, 1, start + CFG.recovery_timeout_seconds, CFG)

    assert too_soon == Gate(allow=False, retry_at=start + CFG.recovery_timeout_seconds)
    assert regranted == 1
    assert s_again.state == "half_open"
    assert s_again.half_open_at == start + CFG.recovery_timeout_seconds
    assert s_again.half_open_calls == 1


def test_a_breaker_that_could_never_close_is_a_configuration_error() -> None:
    with pytest.raises(ValidationError, match="success_threshold must be <= half_open_max_calls"):
        Breaker(failure_threshold=1, recovery_timeout_seconds=60, half_open_max_calls=1, success_threshold=2)


def test_re_granting_stale_probes_keeps_the_successes_already_reported() -> None:
    s = transition(BreakerState(), Event.FAILURE, T0, ONE_FAILURE)
    now = T0 + ONE_FAILURE.recovery_timeout_seconds
    s, granted = claim_probes(s, ONE_FAILURE.half_open_max_calls, now, ONE_FAILURE)
    assert granted == ONE_FAILURE.half_open_max_calls
    s = transition(s, Event.SUCCESS, now + 1, ONE_FAILURE)  # one prober reports, the others died
    later = now + ONE_FAILURE.recovery_timeout_seconds
    s, regranted = claim_probes(s, 1, later, ONE_FAILURE)
    assert regranted == 1
    assert s.success_count == 1
    s = transition(s, Event.SUCCESS, later + 1, ONE_FAILURE)
    assert s.state == "closed"


def test_late_results_on_an_open_breaker_only_touch_the_record() -> None:
    s = opened(T0)

    after_success = transition(s, Event.SUCCESS, T0 + 5, CFG)
    after_failure = transition(s, Event.FAILURE, T0 + 6, CFG)

    assert after_success == s
    assert after_failure.state == "open"
    assert after_failure.opened_at == T0  # a late failure does not push recovery back
    assert after_failure.failure_count == s.failure_count + 1
    assert after_failure.last_failure_at == T0 + 6


def test_reset_closes_and_keeps_the_version() -> None:
    s = replace(opened(T0), version=7)

    after = transition(s, Event.RESET, T0 + 1, CFG)

    assert after == BreakerState(version=7)


def test_replay_applies_events_in_order() -> None:
    events = [(Event.FAILURE, T0), (Event.SUCCESS, T0 + 1), (Event.FAILURE, T0 + 2)]

    s = replay(BreakerState(), events, CFG)

    assert s.state == "closed"
    assert s.failure_count == 1
    assert s.last_failure_at == T0 + 2


def test_replay_onto_a_fresher_state_can_open_the_breaker() -> None:
    fresher = BreakerState(failure_count=2, version=4)

    s = replay(fresher, [(Event.FAILURE, T0 + 3)], CFG)

    assert s.state == "open"
    assert s.opened_at == T0 + 3
    assert s.version == 4


def test_replay_of_nothing_is_the_same_state() -> None:
    s = opened(T0)

    assert replay(s, [], CFG) == s


# Persistence ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        BreakerState(),
        BreakerState(failure_count=2, last_failure_at=T0 + 0.25, version=3),
        BreakerState(state="open", failure_count=5, opened_at=T0, last_failure_at=T0, version=9),
        BreakerState(
            state="half_open", success_count=1, half_open_calls=2, opened_at=T0, half_open_at=T0 + 60.5
        ),
    ],
)
def test_fields_round_trip(state: BreakerState) -> None:
    fields = state.to_fields()

    assert all(isinstance(v, str) for v in fields.values())
    assert BreakerState.from_fields(fields) == state


def test_none_is_stored_as_an_empty_field() -> None:
    fields = BreakerState().to_fields()

    assert fields["opened_at"] == ""
    assert fields["state"] == "closed"
    assert fields["version"] == "0"


def test_empty_hash_is_a_closed_breaker() -> None:
    assert BreakerState.from_fields({}) == BreakerState()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"state": "open", "opened_at": str(T0)}, BreakerState(state="open", opened_at=T0)),
        ({"failure_count": "2", "version": "3"}, BreakerState(failure_count=2, version=3)),
        (
            {"state": "half_open", "success_count": "", "half_open_calls": "", "half_open_at": str(T0)},
            BreakerState(state="half_open", half_open_at=T0),
        ),
    ],
)
def test_a_partial_hash_takes_the_defaults_for_what_is_missing(
    fields: dict[str, str], expected: BreakerState
) -> None:
    assert BreakerState.from_fields(fields) == expected


def test_an_unknown_state_is_named_in_the_error() -> None:
    # The message reaches the operator in the "unreadable (...); treated as closed" warning.
    with pytest.raises(ValueError, match=r"^unknown breaker state 'melted'$"):
        BreakerState.from_fields({"state": "melted"})


@pytest.mark.parametrize(
    "fields",
    [
        {"state": "melted"},
        {"state": "open", "failure_count": "many"},
        {"state": "open", "opened_at": "yesterday"},
        {"state": "closed", "version": "v2"},
        {"state": "half_open", "half_open_calls": "1.5"},
    ],
)
def test_garbage_fields_raise_value_error(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"."):
        BreakerState.from_fields(fields)
