"""One symbol's chain of stages and its result (pure): the publish outcome folded into each stage,
the first stage that did not succeed deciding the symbol's status, and what the result carries."""

from __future__ import annotations

import asyncio

import pytest

from runner.chains import Chain, StageRecord, not_started
from runner.errors import Code
from runner.models import SymbolStatus
from runner.store.publish import Pending, Publication, PublishResult, Target
from tests.unit.test_builtin_stages import advised, scored
from tests.unit.test_pipeline_stages import signal

STAGES = ("signal", "score", "advise")
OK, FAILED, SKIPPED = SymbolStatus.OK, SymbolStatus.FAILED, SymbolStatus.SKIPPED


PENDING = Pending(
    doc_id="ETH/USD:2026-01-01T00:00:00Z",
    symbol="ETH/USD",
    doc="{}",
    lock_key="runner:lock:ETH/USD",
    lock_value="owner",
    target=Target(stream="signals:raw", latest="signals:latest", channel="signals", maxlen=100),
)


def fate(result: PublishResult | None) -> Publication:
    """A finished publish (``None``: one still under way)."""
    future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
    if result is not None:
        future.set_result(result)
    return Publication(PENDING, future)


def ok(
    attempts: int = 1, ms: int = 10, published: PublishResult | None = PublishResult.PUBLISHED
) -> StageRecord:
    return StageRecord(OK, Code.OK, None, attempts, ms, publishing=fate(published) if published else None)


def chain(**records: StageRecord) -> Chain:
    c = Chain("ETH/USD", STAGES, began=100.0, ended=101.25)
    c.signal, c.score, c.advice = signal(), scored("ETH/USD", 70), advised("ETH/USD", "BUY", 5)
    for stage, record in records.items():
        c.record(stage, record)
    return c


# A stage's publish outcome ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("published", "status", "code", "reason"),
    [
        (PublishResult.PUBLISHED, OK, Code.OK, None),
        (PublishResult.DUPLICATE, OK, Code.DUPLICATE, "already published this minute"),
        (PublishResult.SKIPPED, SKIPPED, Code.OK, "upstream not published"),
        (PublishResult.FENCED, FAILED, Code.FENCED, "not published (fenced)"),
        (PublishResult.ERROR, FAILED, Code.PUBLISH_FAILED, "not published (error)"),
        (None, FAILED, Code.PUBLISH_FAILED, "not published (error)"),  # never finished: not published
    ],
)
async def test_a_stage_takes_the_fate_of_its_document(
    published: PublishResult | None, status: SymbolStatus, code: Code, reason: str | None
) -> None:
    record = StageRecord(OK, Code.OK, None, 2, 30, outage=True, symbol_fault=True, publishing=fate(published))

    got = record.settled()

    assert (got.status, got.code, got.reason) == (status, code, reason)
    assert (got.attempts, got.duration_ms, got.outage, got.symbol_fault) == (2, 30, True, True)


async def test_a_cancelled_publish_is_not_published() -> None:
    publishing = fate(None)
    publishing.written.cancel()

    got = StageRecord(OK, Code.OK, publishing=publishing).settled()

    assert (got.status, got.code, got.reason) == (FAILED, Code.PUBLISH_FAILED, "not published (error)")


async def test_a_failed_stage_or_one_without_a_document_keeps_its_own_record() -> None:
    failed = StageRecord(FAILED, Code.TIMEOUT, "timeout", publishing=fate(PublishResult.ERROR))
    undocumented = StageRecord(OK, Code.OK)

    assert failed.settled() is failed
    assert undocumented.settled() is undocumented


def test_a_stage_not_started_says_why_in_its_code() -> None:
    assert not_started(Code.DEADLINE) == StageRecord(SymbolStatus.NOT_STARTED, Code.DEADLINE, "deadline")
    assert not_started(Code.PAUSED, SymbolStatus.PAUSED) == StageRecord(
        SymbolStatus.PAUSED, Code.PAUSED, "paused"
    )


def test_recording_a_stage_ends_the_current_one_and_the_next_stages_follow_in_order() -> None:
    c = Chain("ETH/USD", STAGES, current="score")
    record = StageRecord(OK, Code.OK)

    assert c.record("score", record) is record
    assert (c.current, c.records) == (None, {"score": record})
    assert c.next_stages("signal") == ("score", "advise")
    assert c.next_stages("advise") == ()


# The symbol's result -------------------------------------------------------------------------------


async def test_a_chain_whose_every_stage_was_published_is_ok_with_its_documents() -> None:
    c = chain(signal=ok(1, 40), score=ok(3, 25), advise=ok(2, 5))

    got = c.settle(now=500.0)

    assert (got.status, got.code, got.reason, got.outage, got.symbol_fault) == (
        OK,
        Code.OK,
        None,
        False,
        False,
    )
    assert (got.attempts, got.duration_ms) == (3, 1250)  # the most attempts of any stage; 101.25 - 100
    assert got.stages == {"signal": OK, "score": OK, "advise": OK}
    assert (got.stage_reasons, got.timings) == ({}, {"signal": 40, "score": 25, "advise": 5})
    assert (got.signal, got.score, got.advice) == (c.signal, c.score, c.advice)


async def test_a_failed_later_stage_decides_the_status_and_skips_the_rest() -> None:
    failure = StageRecord(FAILED, Code.INVALID_OUTPUT, "invalid_output: no score", 2, 7, symbol_fault=True)
    c = chain(signal=ok(), score=failure)

    got = c.settle(now=500.0)

    assert (got.status, got.code, got.reason) == (
        FAILED,
        Code.INVALID_OUTPUT,
        "score: invalid_output: no score",
    )
    assert (got.symbol_fault, got.outage, got.attempts) == (True, False, 2)
    assert got.stages == {"signal": OK, "score": FAILED, "advise": SKIPPED}
    assert got.stage_reasons == {"score": "invalid_output: no score", "advise": "upstream score failed"}
    assert (got.signal, got.score, got.advice) == (c.signal, None, None), "only what was published"
    assert got.timings == {"signal": 10, "score": 7}


async def test_a_failed_signal_is_reported_without_a_stage_prefix_and_with_its_outage() -> None:
    c = chain(signal=StageRecord(SymbolStatus.TIMEOUT, Code.TIMEOUT, "timeout: 10s", 1, 10_000, outage=True))

    got = c.settle(now=500.0)

    assert (got.status, got.code, got.reason, got.outage) == (
        SymbolStatus.TIMEOUT,
        Code.TIMEOUT,
        "timeout: 10s",
        True,
    )
    assert got.stages == {"signal": SymbolStatus.TIMEOUT, "score": SKIPPED, "advise": SKIPPED}
    assert got.stage_reasons == {
        "signal": "timeout: 10s",
        "score": "upstream signal timeout",
        "advise": "upstream signal timeout",
    }
    assert (got.signal, got.score, got.advice) == (None, None, None)


async def test_a_stage_failed_without_a_reason_is_explained_by_its_code() -> None:
    got = chain(signal=ok(), score=StageRecord(FAILED, Code.ERROR)).settle(now=500.0)

    assert got.stage_reasons["score"] == "error"


async def test_a_document_not_published_fails_the_symbol_with_the_publish_code() -> None:
    c = chain(signal=ok(), score=ok(published=PublishResult.FENCED))

    got = c.settle(now=500.0)

    assert (got.status, got.code, got.reason) == (FAILED, Code.FENCED, "score: not published (fenced)")
    assert got.stage_reasons == {"score": "not published (fenced)", "advise": "upstream score failed"}
    assert (got.signal, got.score) == (c.signal, None)


async def test_a_duplicate_is_ok_with_nothing_to_redo() -> None:
    c = chain(signal=ok(published=PublishResult.DUPLICATE))

    got = c.settle(now=500.0)

    assert (got.status, got.code, got.reason) == (OK, Code.DUPLICATE, "already published this minute")
    assert got.stages == {"signal": OK, "score": SKIPPED, "advise": SKIPPED}
    assert got.stage_reasons == {
        "signal": "already published this minute",
        "score": "upstream signal duplicate",
        "advise": "upstream signal duplicate",
    }
    assert got.signal is None, "published by the earlier run, not by this one"


async def test_a_document_whose_predecessor_was_not_published_skips_the_symbol() -> None:
    c = chain(signal=ok(), score=ok(published=PublishResult.SKIPPED), advise=ok(attempts=0))

    got = c.settle(now=500.0)

    assert (got.status, got.code, got.reason) == (SKIPPED, Code.OK, "score: upstream not published")
    assert got.stages == {"signal": OK, "score": SKIPPED, "advise": SKIPPED}
    assert got.stage_reasons == {"score": "upstream not published", "advise": "upstream score skipped"}
    assert got.timings == {"signal": 10, "score": 10}, "a stage that made no attempt has no timing"


async def test_the_duration_runs_to_now_while_the_chain_is_unfinished_and_never_below_zero() -> None:
    unfinished = Chain("ETH/USD", STAGES, began=10.0)
    unstarted = Chain("ETH/USD", STAGES, ended=20.0)
    backwards = Chain("ETH/USD", STAGES, began=30.0, ended=29.0)

    assert unfinished.settle(now=12.5).duration_ms == 2500
    assert unstarted.settle(now=19.0).duration_ms == 1000
    assert backwards.settle(now=40.0).duration_ms == 0
    assert unstarted.settle(now=19.0).attempts == 0


async def test_a_duplicate_after_a_published_stage_keeps_what_this_run_published() -> None:
    c = chain(signal=ok(), score=ok(published=PublishResult.DUPLICATE))

    got = c.settle(now=500.0)

    assert (got.status, got.code, got.reason) == (OK, Code.DUPLICATE, "already published this minute")
    assert (got.signal, got.score, got.advice) == (c.signal, None, None)
    assert got.stage_reasons == {
        "score": "already published this minute",
        "advise": "upstream score duplicate",
    }


async def test_a_document_no_replica_confirmed_is_unconfirmed_with_its_note() -> None:
    publishing = fate(PublishResult.PUBLISHED)
    publishing.confirmed, publishing.note = False, "no replica acknowledged within 0.5 s"

    got = StageRecord(OK, Code.OK, publishing=publishing).settled()

    assert (got.status, got.code) == (SymbolStatus.UNCONFIRMED, Code.UNCONFIRMED)
    assert got.reason == "unconfirmed: no replica acknowledged within 0.5 s"


async def test_a_lost_reply_whose_marker_was_read_back_is_published() -> None:
    landed = fate(PublishResult.ERROR)
    landed.landed = True
    unknown = fate(PublishResult.ERROR)
    unknown.note = "its publish got no answer and could not be read back (timeout)"

    assert StageRecord(OK, Code.OK, publishing=landed).settled().status is OK
    got = StageRecord(OK, Code.OK, publishing=unknown).settled()
    assert (got.status, got.code) == (FAILED, Code.PUBLISH_FAILED)
    assert (
        got.reason == "not published (error): its publish got no answer and could not be read back (timeout)"
    )


async def test_an_unconfirmed_stage_names_its_reason_and_the_next_stages_go_on() -> None:
    score = ok()
    assert score.publishing is not None
    score.publishing.confirmed = False  # no note: the default reason
    c = chain(signal=ok(), score=score, advise=ok())

    got = c.settle(now=500.0)

    assert got.stages == {"signal": OK, "score": SymbolStatus.UNCONFIRMED, "advise": OK}
    assert got.stage_reasons == {"score": "unconfirmed: no replica confirmed it"}
