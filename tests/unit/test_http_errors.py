"""One mapping from HTTP statuses to errors, the same for every remote analyzer."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from runner.analyzers.base import AnalysisRequest
from runner.analyzers.http import error_for_status, retry_after_seconds
from runner.analyzers.openai import OpenAIAnalyzer
from runner.analyzers.opencode import OpenCodeAnalyzer
from runner.config import load_settings
from runner.errors import AuthError, Code, PermanentError, RateLimited, TransientError
from runner.market.synthetic import SyntheticSource

MINUTE = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (429, RateLimited, Code.RATE_LIMITED),
        (401, AuthError, Code.AUTH),
        (402, AuthError, Code.AUTH),
        (408, TransientError, Code.TRANSIENT),
        (500, TransientError, Code.TRANSIENT),
        (503, TransientError, Code.TRANSIENT),
        (400, PermanentError, Code.PERMANENT),
        (403, PermanentError, Code.PERMANENT),
        (404, PermanentError, Code.PERMANENT),
        (422, PermanentError, Code.PERMANENT),
    ],
)
def test_each_status_maps_to_one_error(status: int, kind: type[Exception], code: Code) -> None:
    error = error_for_status(status, f"HTTP {status}: nope", 7.0)

    assert type(error) is kind
    assert error.code is code
    assert str(error) == f"HTTP {status}: nope"


def test_a_vanished_resource_is_worth_retrying() -> None:
    assert type(error_for_status(404, "gone", vanished=True)) is TransientError


def test_retry_after_is_kept_where_it_means_something() -> None:
    limited = error_for_status(429, "slow down", 12.0)
    unavailable = error_for_status(503, "later", 3.0)

    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 12.0
    assert isinstance(unavailable, TransientError)
    assert unavailable.retry_after == 3.0


@pytest.mark.parametrize(
    ("raw", "seconds"), [("5", 5.0), ("0.5", 0.5), ("-3", 0.0), (None, None), ("", None)]
)
def test_retry_after_in_seconds(raw: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(raw) == seconds


def test_an_http_date_retry_after_counts_as_unknown() -> None:
    assert retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT") is None


async def request() -> AnalysisRequest:
    candles = await SyntheticSource().candles("ETH/USD", MINUTE, 60)
    return AnalysisRequest(symbol="ETH/USD", candles=candles, scheduled_minute=MINUTE, timeout=5.0)


def answer(status: int) -> httpx.MockTransport:
    return httpx.MockTransport(lambda r: httpx.Response(status, json={"error": {"message": "no credit"}}))


async def test_payment_required_fails_fast_on_both_remote_analyzers() -> None:
    """402 (credit exhausted) means every further call fails alike, whichever backend says it."""
    openai = OpenAIAnalyzer(
        load_settings(
            None, {"analyzer": {"backend": "openai", "model": "m", "base_url": "http://llm/v1"}}, {}
        ),
        transport=answer(402),
    )
    opencode = OpenCodeAnalyzer(
        load_settings(
            None,
            {"analyzer": {"backend": "opencode", "model": "p/m", "opencode_url": "http://opencode:4096"}},
            {},
        ),
        transport=answer(402),
    )
    try:
        for analyzer in (openai, opencode):
            with pytest.raises(AuthError) as caught:
                await analyzer.analyze(await request())
            assert "402" in str(caught.value)
    finally:
        await openai.aclose()
        await opencode.aclose()
