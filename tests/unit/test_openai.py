"""The OpenAI-compatible analyzer against a mocked API (respx): every error class, structured
output, fallback models, usage and cost, and secrets kept out of errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from runner.analyzers.base import AnalysisRequest
from runner.analyzers.openai import OpenAIAnalyzer
from runner.config import load_settings
from runner.errors import AuthError, ConfigError, InvalidOutput, PermanentError, RateLimited, TransientError
from runner.market.synthetic import SyntheticSource

URL = "https://openrouter.ai/api/v1/chat/completions"
KEY = "sk-or-secret-value-123"
MINUTE = datetime(2026, 11, 23, 14, 5, tzinfo=UTC)


def settings(**analyzer: Any) -> Any:
    cfg = {"backend": "openai", "model": "vendor/model-a", "api_key": KEY, **analyzer}
    return load_settings(None, {"analyzer": cfg}, environ={})


async def request(symbol: str = "ETH/USD") -> AnalysisRequest:
    candles = await SyntheticSource().candles(symbol, MINUTE, 60)
    return AnalysisRequest(symbol=symbol, candles=candles, scheduled_minute=MINUTE, timeout=5.0)


def completion(content: Any, model: str = "vendor/model-a", **extra: Any) -> dict[str, Any]:
    text = content if isinstance(content, str) else json.dumps(content)
    return {
        "id": "gen-1",
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 812, "completion_tokens": 64, "cost": 0.00042},
        **extra,
    }


GOOD = {"symbol": "ETH/USD", "action": "BUY", "confidence": 0.72, "reasoning": "uptrend", "price": 3120.5}


@respx.mock
async def test_valid_structured_answer_becomes_an_analysis_with_provenance() -> None:
    route = respx.post(URL).mock(
        return_value=httpx.Response(200, json=completion(GOOD, model="vendor/model-a-0613"))
    )
    analyzer = OpenAIAnalyzer(settings(temperature=0.2, max_tokens=300))
    result = await analyzer.analyze(await request())
    await analyzer.aclose()

    assert (result.action, result.confidence, result.price) == ("BUY", 0.72, 3120.5)
    assert result.model == "vendor/model-a-0613"
    assert result.requested_model == "vendor/model-a"
    assert (result.tokens_in, result.tokens_out, result.cost_usd) == (812, 64, 0.00042)
    assert result.prompt_hash
    assert len(result.prompt_hash) == 16
    sent = json.loads(route.calls.last.request.content)
    assert sent["model"] == "vendor/model-a"
    assert sent["temperature"] == 0.2
    assert sent["max_tokens"] == 300
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["strict"] is True
    assert sent["response_format"]["json_schema"]["schema"]["properties"]["action"]["enum"] == [
        "BUY",
        "SELL",
        "HOLD",
    ]
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    assert "<market_data" in sent["messages"][1]["content"]


@respx.mock
async def test_a_fenced_json_answer_is_accepted() -> None:
    respx.post(URL).mock(
        return_value=httpx.Response(200, json=completion("```json\n" + json.dumps(GOOD) + "\n```"))
    )
    result = await OpenAIAnalyzer(settings()).analyze(await request())
    assert result.action == "BUY"


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (429, {"Retry-After": "7"}, RateLimited, 7.0),
        (503, {"Retry-After": "3"}, TransientError, 3.0),
        (500, {}, TransientError, None),
        (502, {}, TransientError, None),
        (408, {}, TransientError, None),
        (401, {}, AuthError, None),
        (402, {}, AuthError, None),
        (400, {}, PermanentError, None),
        (403, {}, PermanentError, None),
    ],
)
@respx.mock
async def test_http_errors_map_to_their_class(
    status: int, headers: dict[str, str], error: type, retry_after: float | None
) -> None:
    respx.post(URL).mock(
        return_value=httpx.Response(status, headers=headers, json={"error": {"message": "nope"}})
    )
    with pytest.raises(error) as info:
        await OpenAIAnalyzer(settings()).analyze(await request())
    assert f"HTTP {status}" in str(info.value)
    if retry_after is not None:
        assert info.value.retry_after == retry_after
    assert KEY not in str(info.value)


@respx.mock
async def test_auth_errors_are_not_retried_on_fallback_models() -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(401, json={"error": {"message": "bad key"}}))
    with pytest.raises(AuthError):
        await OpenAIAnalyzer(settings(fallback_models=["vendor/model-b"])).analyze(await request())
    assert route.call_count == 1


@respx.mock
async def test_connection_errors_and_timeouts_are_transient() -> None:
    respx.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransientError, match="cannot reach"):
        await OpenAIAnalyzer(settings()).analyze(await request())
    respx.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(TransientError, match="no answer"):
        await OpenAIAnalyzer(settings()).analyze(await request())


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"error": {"code": 502, "message": "upstream provider failed"}}, TransientError),
        ({"error": {"code": 401, "message": "key revoked"}}, AuthError),
        ({"error": "something broke"}, TransientError),
        (
            {"choices": [{"finish_reason": "error", "message": {"content": ""}}]},
            TransientError,
        ),
        (
            {
                "choices": [
                    {"error": {"code": 500, "message": "mid-stream failure"}, "message": {"content": ""}}
                ]
            },
            TransientError,
        ),
    ],
)
@respx.mock
async def test_an_http_200_carrying_an_error_is_an_error(body: dict[str, Any], error: type) -> None:
    respx.post(URL).mock(return_value=httpx.Response(200, json=body))
    with pytest.raises(error):
        await OpenAIAnalyzer(settings()).analyze(await request())


@pytest.mark.parametrize(
    "content",
    [
        '{"symbol": "ETH/USD", "action": "BUY", "confid',  # truncated
        json.dumps({**GOOD, "confidence": 1.5}),
        json.dumps({**GOOD, "confidence": -0.1}),
        json.dumps({**GOOD, "confidence": "high"}),
        json.dumps({**GOOD, "symbol": "BTC/USD"}),
        json.dumps({**GOOD, "action": "STRONG_BUY"}),
        json.dumps({k: v for k, v in GOOD.items() if k != "reasoning"}),
        json.dumps({**GOOD, "reasoning": "x" * 5000}),
        json.dumps([GOOD]),
        "",
        "I think you should buy.",
    ],
)
@respx.mock
async def test_invalid_answers_are_invalid_output_never_hold(content: str) -> None:
    respx.post(URL).mock(return_value=httpx.Response(200, json=completion(content)))
    with pytest.raises(InvalidOutput):
        await OpenAIAnalyzer(settings()).analyze(await request())


@respx.mock
async def test_a_refusal_is_invalid_output() -> None:
    body = completion("")
    body["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "I cannot help"}
    respx.post(URL).mock(return_value=httpx.Response(200, json=body))
    with pytest.raises(InvalidOutput, match="refused"):
        await OpenAIAnalyzer(settings()).analyze(await request())


@respx.mock
async def test_fallback_model_answers_when_the_first_is_down() -> None:
    def answer(req: httpx.Request) -> httpx.Response:
        model = json.loads(req.content)["model"]
        if model == "vendor/model-a":
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        return httpx.Response(200, json=completion(GOOD, model=model))

    route = respx.post(URL).mock(side_effect=answer)
    result = await OpenAIAnalyzer(settings(fallback_models=["vendor/model-b"])).analyze(await request())
    assert result.model == "vendor/model-b"
    assert result.requested_model == "vendor/model-a"
    assert [json.loads(c.request.content)["model"] for c in route.calls] == [
        "vendor/model-a",
        "vendor/model-b",
    ]


@respx.mock
async def test_any_compatible_server_by_base_url_without_a_key() -> None:
    route = respx.post("http://127.0.0.1:9999/v1/chat/completions").mock(
        return_value=httpx.Response(200, json=completion(GOOD))
    )
    cfg = load_settings(
        None,
        {"analyzer": {"backend": "openai", "model": "local", "base_url": "http://127.0.0.1:9999/v1"}},
        environ={},
    )
    result = await OpenAIAnalyzer(cfg).analyze(await request())
    assert result.action == "BUY"
    assert "authorization" not in route.calls.last.request.headers
    assert "usage" not in json.loads(route.calls.last.request.content)


def test_configuration_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="OPENROUTER_API_KEY"):
        OpenAIAnalyzer(load_settings(None, {"analyzer": {"backend": "openai", "model": "m"}}, environ={}))
    with pytest.raises(ConfigError, match=r"analyzer\.model"):
        OpenAIAnalyzer(load_settings(None, {"analyzer": {"backend": "openai", "api_key": KEY}}, environ={}))
