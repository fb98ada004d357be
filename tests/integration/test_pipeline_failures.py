"""A failure at each stage of the pipeline, through the real CLI: every stage on the ``openai``
backend against the stub LLM, a real redis-server.

For each stage (signal, score, advise, report) and each way of failing (a model that never
answers in time, an invalid answer, HTTP 500 on every attempt), the ``--json`` output says which
stage failed and why, every later stage of the chain is ``skipped`` with ``upstream <stage>
<status>``, and Redis holds exactly the documents of the stages before it: nothing is invented in
place of the answer that did not come.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.integration.helpers import env_for
from tests.support.stub_llm import (
    Mode,
    StubLLM,
    stage_in,
    stub_llm_session,  # noqa: F401 - a fixture, used by name
)

pytestmark = pytest.mark.integration

SYMBOLS = ["ETH/USD", "BTC/USD"]
CHAIN = ("signal", "score", "advise")
#: Where each stage's documents go.
STREAMS = {"signal": "signals:raw", "score": "signals:scored", "advise": "signals:advised"}
#: How each failure shows: the stage's status, its code, and what its reason says.
FAILURES: dict[str, tuple[Mode, str, str, str]] = {
    "timeout": (Mode("hang"), "timeout", "timeout", "took longer than 1.0s"),
    "invalid": (Mode("bad_confidence"), "failed", "invalid_output", "invalid_output: "),
    "http-500": (Mode("http_error", status=500), "failed", "transient", "HTTP 500"),
}
ATTEMPTS = 2


@pytest.fixture
def llm(stub_llm_session: StubLLM) -> StubLLM:  # noqa: F811 - the fixture imported above
    stub_llm_session.reset()
    return stub_llm_session


def pipeline_env(redis_url: str, state_dir: Path, stub: StubLLM, failing: str) -> dict[str, str]:
    """Every stage on the openai backend; the failing stage alone gets a short timeout, so that a
    slow machine never times out the others."""
    timeouts = {
        "signal": "RUNNER_TIMEOUTS__SYMBOL_TIMEOUT_SECONDS",
        "score": "RUNNER_PIPELINE__SCORE__TIMEOUT_SECONDS",
        "advise": "RUNNER_PIPELINE__ADVISE__TIMEOUT_SECONDS",
        "report": "RUNNER_PIPELINE__REPORT__TIMEOUT_SECONDS",
    }
    seconds = {name: "1" if stage == failing else "10" for stage, name in timeouts.items()}
    return env_for(
        redis_url,
        state_dir,
        scripted=False,
        RUNNER_ANALYZER__BACKEND="openai",
        RUNNER_ANALYZER__MODEL="stub-model",
        RUNNER_ANALYZER__BASE_URL=f"{stub.url}/v1",
        RUNNER_PIPELINE__SCORE__BACKEND="openai",
        RUNNER_PIPELINE__ADVISE__BACKEND="openai",
        RUNNER_PIPELINE__REPORT__BACKEND="openai",
        RUNNER_RATE_LIMIT__REQUESTS_PER_MINUTE="6000",
        RUNNER_RETRY__MAX_ATTEMPTS=str(ATTEMPTS),
        RUNNER_TIMEOUTS__TOTAL_TIMEOUT_SECONDS="30",
        **seconds,
    )


def docs(client: Any, stage: str) -> list[dict[str, Any]]:
    """The documents a stage published, from its stream."""
    entries = client.xrange(STREAMS[stage])
    return [json.loads(fields["signal" if stage == "signal" else "doc"]) for _, fields in entries]


def asked(stub: StubLLM) -> dict[str, int]:
    """How many requests the model received for each stage."""
    counts: dict[str, int] = {}
    for request in stub.chat_requests():
        stage = stage_in(request.messages)
        counts[stage] = counts.get(stage, 0) + 1
    return counts


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("stage", CHAIN)
def test_a_stage_failing_skips_the_later_stages_and_publishes_nothing_for_them(
    real_redis, redis_server, llm, tmp_path, stage, failure
):
    mode, status, code, says = FAILURES[failure]
    llm.per_stage[stage] = mode

    result = run_cli(["cycle", "--json", "--symbols", ",".join(SYMBOLS)], pipeline_env(
        redis_server.url, tmp_path, llm, stage
    ))  # fmt: skip

    assert result.code == 3, result.stderr  # no symbol went through every stage
    assert "Traceback" not in result.stderr
    out = result.json()
    assert out["status"] == "failed"
    before, after = CHAIN[: CHAIN.index(stage)], CHAIN[CHAIN.index(stage) + 1 :]
    for symbol_result in out["results"]:
        assert symbol_result["status"] == status
        assert symbol_result["code"] == code
        assert symbol_result["stages"] == {
            **dict.fromkeys(before, "ok"),
            stage: status,
            **dict.fromkeys(after, "skipped"),
        }
        reasons = symbol_result["stage_reasons"]
        assert set(reasons) == {stage, *after}
        assert says in reasons[stage]
        for later in after:
            assert reasons[later] == f"upstream {stage} {status}"
    # Each attempt of the failing stage reached the model (an invalid answer is not retried);
    # no later stage was asked.
    tries = 1 if failure == "invalid" else ATTEMPTS
    assert asked(llm) == {**dict.fromkeys(before, len(SYMBOLS)), stage: tries * len(SYMBOLS), "report": 1}
    # Redis has the documents of the stages before, none of the failing one or after.
    for earlier in before:
        assert sorted(d["symbol"] for d in docs(real_redis, earlier)) == sorted(SYMBOLS)
    for missing in (stage, *after):
        assert docs(real_redis, missing) == []
    assert real_redis.hlen("signals:latest:advised") == 0
    # The report says so, from what was published only.
    [report] = [json.loads(fields["doc"]) for _, fields in real_redis.xrange("reports:cycle")]
    assert out["report"]["id"] == report["id"]
    published = {"signal": "signals", "score": "scores", "advise": "advice"}
    for earlier in before:
        assert report["counts"][published[earlier]] == len(SYMBOLS)
    for missing in (stage, *after):
        assert report["counts"][published[missing]] == 0
    assert report["top"] == []


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failing_report_publishes_no_report_and_costs_the_symbols_nothing(
    real_redis, redis_server, llm, tmp_path, failure
):
    mode, status, code, says = FAILURES[failure]
    llm.per_stage["report"] = mode

    result = run_cli(["cycle", "--json", "--symbols", ",".join(SYMBOLS)], pipeline_env(
        redis_server.url, tmp_path, llm, "report"
    ))  # fmt: skip

    assert result.code == 0, result.stderr
    out = result.json()
    assert [r["stages"] for r in out["results"]] == [dict.fromkeys(CHAIN, "ok")] * len(SYMBOLS)
    assert out["report"] is None
    assert out["report_status"] == status
    assert says in out["report_reason"]
    assert code in out["report_reason"] or failure == "timeout"
    for stage in CHAIN:
        assert len(docs(real_redis, stage)) == len(SYMBOLS)
    assert real_redis.xlen("reports:cycle") == 0
    assert real_redis.get("reports:latest") is None
    tries = 1 if failure == "invalid" else ATTEMPTS
    assert asked(llm)["report"] == tries
