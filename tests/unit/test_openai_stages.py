"""The score, advise and report stages on the ``openai`` backend against a mocked API (respx):
what each request carries, what a valid answer publishes, and that an invalid answer, a server
error or a refused key fails its stage, skips the later ones and publishes nothing in their place.

The signal comes from a scripted analyzer; every later stage goes through the real
``factory.build_stages`` and ``ChatClient`` to ``https://openrouter.ai`` (mocked), in a real cycle
on fakeredis.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import fakeredis
import httpx
import pytest
import respx

from runner.analyzers.fake import FakeAnalyzer
from runner.clock import SystemClock
from runner.config import Settings, load_settings
from runner.cycle import Deps, run_cycle
from runner.errors import Code
from runner.factory import build_stages
from runner.market.synthetic import SyntheticSource
from runner.models import Analysis, Outcome, SymbolStatus
from runner.pipeline import prompts
from runner.store.keys import Keys

URL = "https://openrouter.ai/api/v1/chat/completions"
KEY = "sk-or-stage-secret-456"
SYMBOLS = ["ETH/USD", "BTC/USD"]
KEYS = Keys()
#: The JSON-schema name each stage's request carries, and the stage it belongs to.
SCHEMA_STAGE = {"trading_score": "score", "trading_advise": "advise", "trading_report": "report"}

Answer = Callable[[str], Any]


def settings(**overrides: Any) -> Settings:
    """Every stage after the signal on the openai backend; a fast rate limit, quick retries."""
    pipeline: dict[str, Any] = {
        "score": {"backend": "openai"},
        "advise": {"backend": "openai", "model": "vendor/advisor"},
        "report": {"backend": "openai"},
    }
    base: dict[str, Any] = {
        "instance_id": "unit-runner",
        "analyzer": {"model": "vendor/model-a", "api_key": KEY},
        "pipeline": pipeline,
        "rate_limit": {"requests_per_minute": 60000},
        "retry": {"delay_seconds": 0.001, "max_attempts": 3},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load_settings(None, base, environ={})


def signal(request: Any) -> Analysis:
    return Analysis(
        symbol=request.symbol,
        action="BUY",
        confidence=0.7,
        reasoning="scripted uptrend",
        price=100.0,
        analyzer="fake",
    )


def completion(doc: Any) -> httpx.Response:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    body = {
        "id": "gen-1",
        "model": "vendor/served",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 50, "cost": 0.0002},
    }
    return httpx.Response(200, json=body)


def score_doc(symbol: str, **change: Any) -> dict[str, Any]:
    doc = {"symbol": symbol, "score": 72, "grade": "B", "factors": ["trend agrees"], "reasoning": "solid"}
    return {**doc, **change}


def advice_doc(symbol: str, **change: Any) -> dict[str, Any]:
    doc = {
        "symbol": symbol,
        "action": "BUY",
        "entry": 100.0,
        "stop_loss": 95.0,
        "take_profit": 110.0,
        "position_size_pct": 5.0,
        "horizon_minutes": 30,
        "reasoning": "buy the trend",
    }
    return {**doc, **change}


def report_doc(summary: str = "**Two buys**, both graded B.") -> dict[str, Any]:
    return {"summary": summary}


class API:
    """The mocked chat-completions API: answers each stage's request with that stage's answer."""

    def __init__(self, **answers: Answer) -> None:
        self.answers: dict[str, Answer] = {
            "score": lambda symbol: completion(score_doc(symbol)),
            "advise": lambda symbol: completion(advice_doc(symbol)),
            "report": lambda symbol: completion(report_doc()),
            **answers,
        }
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.route = respx.post(URL).mock(side_effect=self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        stage = SCHEMA_STAGE[body["response_format"]["json_schema"]["name"]]
        self.requests.append((stage, body))
        user = body["messages"][1]["content"]
        symbol = next((s for s in SYMBOLS if f'"symbol": "{s}"' in user), "")
        answer = self.answers[stage](symbol)
        return answer if isinstance(answer, httpx.Response) else completion(answer)

    def sent(self, stage: str) -> list[dict[str, Any]]:
        return [body for s, body in self.requests if s == stage]


async def cycle(config: Settings | None = None, symbols: list[str] | None = None) -> tuple[Outcome, Any]:
    config = config or settings()
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    stages = build_stages(config)
    deps = Deps(
        redis=redis,
        analyzer=FakeAnalyzer(signal),
        market=SyntheticSource(),
        clock=SystemClock(),
        stages=stages,
    )
    try:
        outcome = await run_cycle(config, deps, symbols=symbols or list(SYMBOLS))
    finally:
        await stages.aclose()
    return outcome, redis


async def docs(redis: Any, stream: str) -> list[dict[str, Any]]:
    """The documents of a stage's stream (entries are ``symbol`` and ``doc``; a report's ``shard``
    and ``doc``)."""
    out = []
    for _, fields in await redis.xrange(stream):
        assert set(fields) == {"shard" if stream == KEYS.reports_stream else "symbol", "doc"}, fields
        out.append(json.loads(fields["doc"]))
    return out


def results(outcome: Outcome) -> dict[str, Any]:
    return {r.symbol: r for r in outcome.results}


# What each stage sends ------------------------------------------------------------------------


@respx.mock
async def test_each_stage_sends_its_prompt_a_strict_schema_and_the_earlier_documents_as_data() -> None:
    api = API()

    outcome, _ = await cycle(symbols=["ETH/USD"])

    assert outcome.exit_code == 0, outcome.results
    [score], [advise], [report] = api.sent("score"), api.sent("advise"), api.sent("report")
    for body, system, schema, name in (
        (score, prompts.SCORE_PROMPT, prompts.SCORE_SCHEMA, "trading_score"),
        (advise, prompts.ADVISE_PROMPT, prompts.ADVICE_SCHEMA, "trading_advise"),
        (report, prompts.REPORT_PROMPT, prompts.REPORT_SCHEMA, "trading_report"),
    ):
        assert body["messages"][0] == {"role": "system", "content": system}
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": schema},
        }
    assert score["model"] == "vendor/model-a"  # analyzer.model unless the stage names one
    assert advise["model"] == "vendor/advisor"
    assert report["model"] == "vendor/model-a"

    signal_doc = outcome.signals[0]
    score_text = score["messages"][1]["content"]
    assert score_text.startswith("Score the signal for ETH/USD")
    assert '<market_data symbol="ETH/USD"' in score_text
    sent_signal = between(score_text, "<signal>", "</signal>")
    assert sent_signal["id"] == signal_doc.id
    assert (sent_signal["action"], sent_signal["confidence"]) == ("BUY", 0.7)
    # Bookkeeping the model needs not see stays out of the data.
    assert not {"fencing_token", "instance_id", "cycle_id", "prompt_hash"} & set(sent_signal)
    assert "<score>" not in score_text

    advise_text = advise["messages"][1]["content"]
    assert advise_text.startswith("Advise a trade for ETH/USD")
    assert between(advise_text, "<signal>", "</signal>")["id"] == signal_doc.id
    sent_score = between(advise_text, "<score>", "</score>")
    assert (sent_score["score"], sent_score["grade"], sent_score["stage"]) == (72, "B", "score")

    report_text = report["messages"][1]["content"]
    assert report_text.startswith(f"Summarize cycle {outcome.cycle_id}")
    cycle_data = report_text.split("<cycle>\n", 1)[1].split("\n</cycle>", 1)[0].splitlines()
    assert json.loads(cycle_data[0]) == {"status": {"ETH/USD": "ok"}}
    stages_sent = [json.loads(line).get("stage", "signal") for line in cycle_data[1:]]
    assert stages_sent == ["signal", "score", "advise"]
    assert KEY not in json.dumps(api.requests)


def between(text: str, start: str, end: str) -> dict[str, Any]:
    """The JSON document between two markers, each on a line of its own."""
    inner = text.split(start + "\n", 1)[1].split("\n" + end, 1)[0]
    doc: dict[str, Any] = json.loads(inner)
    return doc


@respx.mock
async def test_valid_answers_are_published_with_their_provenance() -> None:
    API()

    outcome, redis = await cycle()

    assert outcome.exit_code == 0
    assert {r.symbol: r.stages for r in outcome.results} == {
        s: {"signal": SymbolStatus.OK, "score": SymbolStatus.OK, "advise": SymbolStatus.OK} for s in SYMBOLS
    }
    scores = await docs(redis, KEYS.scored_stream)
    advice = await docs(redis, KEYS.advised_stream)
    reports = await docs(redis, KEYS.reports_stream)
    assert sorted(d["symbol"] for d in scores) == sorted(SYMBOLS)
    assert sorted(d["symbol"] for d in advice) == sorted(SYMBOLS)
    assert len(reports) == 1
    for doc in scores + advice:
        assert doc["analyzer"] == "openai"
        assert doc["model"] == "vendor/served"  # the model that answered
        assert (doc["tokens_in"], doc["tokens_out"], doc["cost_usd"]) == (300, 50, 0.0002)
        assert doc["cycle_id"] == outcome.cycle_id
        assert doc["fencing_token"] > 0
    assert {(d["score"], d["grade"]) for d in scores} == {(72, "B")}
    assert {(d["action"], d["stop_loss"], d["position_size_pct"]) for d in advice} == {("BUY", 95.0, 5.0)}
    assert reports[0]["summary"] == "**Two buys**, both graded B."
    assert reports[0]["counts"]["advice"] == 2
    latest = await redis.hgetall(KEYS.scored_latest)
    assert set(latest) == set(SYMBOLS)
    assert json.loads(await redis.get(KEYS.reports_latest))["id"] == reports[0]["id"]


@respx.mock
async def test_the_advice_a_model_sizes_is_cut_by_the_risk_limits_in_code() -> None:
    API(advise=lambda symbol: completion(advice_doc(symbol, position_size_pct=80.0)))

    outcome, redis = await cycle(settings(risk={"max_position_size_pct": 10, "max_total_exposure_pct": 15}))

    advice = {d["symbol"]: d for d in await docs(redis, KEYS.advised_stream)}
    assert sorted(d["position_size_pct"] for d in advice.values()) == [5.0, 10.0]
    assert all("max_position_size_pct" in d["limited_by"] for d in advice.values())
    assert any("max_total_exposure_pct" in d["limited_by"] for d in advice.values())
    assert outcome.exit_code == 0


# Invalid answers --------------------------------------------------------------------------------

#: case -> (the stage, what the model answers for a symbol, what the stage's reason says)
INVALID: dict[str, tuple[str, Answer, str]] = {
    "wrong-symbol": ("score", lambda s: score_doc("SOL/USD"), "answer is about 'SOL/USD', asked for"),
    "score-out-of-range": (
        "score",
        lambda s: score_doc(s, score=150, grade="A"),
        "less than or equal to 100",
    ),
    "grade-mismatch": (
        "score",
        lambda s: score_doc(s, score=72, grade="A"),
        "grade A does not match score 72",
    ),
    "not-json": ("score", lambda s: '{"symbol": "ETH/USD", "sco', "not JSON"),
    "stop-on-the-wrong-side": (
        "advise",
        lambda s: advice_doc(s, stop_loss=105.0),
        "a BUY's stop_loss 105.0 must be below its entry 100.0",
    ),
    "sell-stop-below": (
        "advise",
        lambda s: advice_doc(s, action="SELL", stop_loss=95.0, take_profit=90.0),
        "a SELL's stop_loss 95.0 must be above its entry 100.0",
    ),
    "hold-with-a-size": (
        "advise",
        lambda s: advice_doc(s, action="HOLD", position_size_pct=5.0),
        "a HOLD takes no position",
    ),
    "advice-about-another-symbol": ("advise", lambda s: advice_doc("SOL/USD"), "asked for"),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
@respx.mock
async def test_an_invalid_stage_answer_is_invalid_output_and_skips_the_later_stages(case: str) -> None:
    stage, answer, says = INVALID[case]
    api = API(**{stage: answer})

    outcome, redis = await cycle()

    assert outcome.exit_code == 3  # no symbol went through every stage
    for symbol in SYMBOLS:
        result = results(outcome)[symbol]
        assert result.status is SymbolStatus.FAILED
        assert result.code is Code.INVALID_OUTPUT
        assert result.stages[stage] is SymbolStatus.FAILED
        assert result.stage_reasons[stage].startswith("invalid_output: ")
        assert says in result.stage_reasons[stage]
        assert result.stages["signal"] is SymbolStatus.OK
        if stage == "score":
            assert result.stages["advise"] is SymbolStatus.SKIPPED
            assert result.stage_reasons["advise"] == "upstream score failed"
    # An invalid answer is not retried, and nothing is defaulted in its place.
    assert len(api.sent(stage)) == len(SYMBOLS)
    if stage == "score":
        assert api.sent("advise") == []
    assert await redis.xlen(KEYS.stream) == len(SYMBOLS)  # the signals were published
    if stage == "score":
        assert await redis.xlen(KEYS.scored_stream) == 0
        assert outcome.scores == []
    assert await redis.xlen(KEYS.advised_stream) == 0
    assert await redis.hlen(KEYS.advised_latest) == 0
    assert outcome.advice == []
    # The report still runs, and says what failed without inventing what did not happen.
    [report] = await docs(redis, KEYS.reports_stream)
    assert report["counts"]["advice"] == 0
    assert report["counts"]["failed"] == len(SYMBOLS)
    assert report["top"] == []


@respx.mock
async def test_an_invalid_answer_for_one_symbol_costs_that_symbol_only() -> None:
    API(score=lambda s: score_doc(s, score=150) if s == "BTC/USD" else score_doc(s))

    outcome, redis = await cycle()

    assert outcome.exit_code == 1
    assert results(outcome)["ETH/USD"].status is SymbolStatus.OK
    assert results(outcome)["BTC/USD"].stages == {
        "signal": SymbolStatus.OK,
        "score": SymbolStatus.FAILED,
        "advise": SymbolStatus.SKIPPED,
    }
    assert [d["symbol"] for d in await docs(redis, KEYS.scored_stream)] == ["ETH/USD"]
    assert [d["symbol"] for d in await docs(redis, KEYS.advised_stream)] == ["ETH/USD"]


@respx.mock
async def test_a_report_too_long_is_invalid_output_and_no_report_is_published() -> None:
    api = API(report=lambda s: report_doc("x" * 4001))

    outcome, redis = await cycle()

    assert outcome.report is None
    assert outcome.report_status is SymbolStatus.FAILED
    assert outcome.report_reason is not None
    assert outcome.report_reason.startswith("invalid_output: ")
    assert "4000 characters" in outcome.report_reason
    assert len(api.sent("report")) == 1
    assert await redis.xlen(KEYS.reports_stream) == 0
    assert await redis.get(KEYS.reports_latest) is None
    # The symbols' own stages are unaffected.
    assert await redis.xlen(KEYS.advised_stream) == len(SYMBOLS)


# Server errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["score", "advise"])
@respx.mock
async def test_a_500_is_retried_then_fails_its_stage(stage: str) -> None:
    error = httpx.Response(500, json={"error": {"message": "upstream down"}})
    api = API(**{stage: lambda s: error})

    outcome, redis = await cycle()

    assert len(api.sent(stage)) == 3 * len(SYMBOLS)  # retry.max_attempts each
    for result in outcome.results:
        assert result.stages[stage] is SymbolStatus.FAILED
        assert result.code is Code.TRANSIENT
        assert "HTTP 500" in result.stage_reasons[stage]
        assert result.attempts == 3
        if stage == "score":
            assert result.stage_reasons["advise"] == "upstream score failed"
    if stage == "score":
        assert await redis.xlen(KEYS.scored_stream) == 0
    assert await redis.xlen(KEYS.advised_stream) == 0
    assert outcome.exit_code == 3


@respx.mock
async def test_a_500_that_recovers_on_retry_publishes_the_answer() -> None:
    calls: list[str] = []

    def flaky(symbol: str) -> Any:
        calls.append(symbol)
        if calls.count(symbol) == 1:
            return httpx.Response(500, json={"error": {"message": "blip"}})
        return score_doc(symbol)

    API(score=flaky)

    outcome, redis = await cycle()

    assert outcome.exit_code == 0
    assert {r.symbol: r.attempts for r in outcome.results} == dict.fromkeys(SYMBOLS, 2)
    assert await redis.xlen(KEYS.scored_stream) == len(SYMBOLS)


@respx.mock
async def test_a_refused_key_fails_fast_and_no_later_call_goes_out() -> None:
    api = API(score=lambda s: httpx.Response(401, json={"error": {"message": "invalid key"}}))

    outcome, redis = await cycle(settings(parallel={"max_concurrent": 1, "min_concurrent": 1}))

    # The first score call learns the key is refused: not retried, and no further call is made.
    assert len(api.sent("score")) == 1
    assert api.sent("advise") == []
    assert api.sent("report") == []
    first, second = outcome.results
    assert first.stages["score"] is SymbolStatus.FAILED
    assert first.code is Code.AUTH
    assert first.attempts == 1
    # The next chain would need the same refused key: it is not started.
    assert second.stages == {
        "signal": SymbolStatus.NOT_STARTED,
        "score": SymbolStatus.SKIPPED,
        "advise": SymbolStatus.SKIPPED,
    }
    assert second.code is Code.AUTH_FAILED
    assert (outcome.report_status, outcome.report_reason) == (SymbolStatus.NOT_STARTED, "auth_failed")
    assert await redis.xlen(KEYS.scored_stream) == 0
    assert await redis.xlen(KEYS.reports_stream) == 0
    assert KEY not in json.dumps(outcome.model_dump(mode="json"))
    assert outcome.exit_code == 3
