"""Any OpenAI-compatible chat-completions API (OpenRouter by default).

``POST {base_url}/chat/completions`` with a strict JSON-schema ``response_format``; the answer is
validated again with pydantic. Errors are translated where they enter:

* 429 -> ``RateLimited`` (with ``Retry-After``); 408, 5xx, connection errors, timeouts ->
  ``TransientError`` (503's ``Retry-After`` is kept);
* 401, 402 -> ``AuthError`` (the cycle fails fast); 400, 403, 404, 422 -> ``PermanentError``;
* an HTTP 200 whose body carries ``error`` (OpenRouter reports failures that occur after
  generation started this way), or whose choice finished with ``error``, is an error too.

Fallback models are tried in order when a model fails transiently or is unknown. The model
that actually answered, the tokens and the cost (OpenRouter's ``usage.cost``) go on the signal.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

import httpx

from runner.analyzers.base import AnalysisRequest
from runner.analyzers.http import error_for_status, retry_after_seconds
from runner.analyzers.prompt import SIGNAL_SCHEMA, SYSTEM_PROMPT, parse_answer, prompt_hash, user_prompt
from runner.config import Settings
from runner.errors import (
    AnalyzerError,
    AuthError,
    ConfigError,
    InvalidOutput,
    PermanentError,
    RateLimited,
    TransientError,
)
from runner.models import Analysis


def _message(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err.get("code") or err)[:200]
        if isinstance(err, str):
            return err[:200]
    return str(body)[:200]


def _body_error(err: Any) -> AnalyzerError:
    """An error object inside an HTTP 200 body."""
    code = err.get("code") if isinstance(err, dict) else None
    message = _message({"error": err})
    try:
        status = int(code) if code is not None else 502
    except (TypeError, ValueError):
        status = 502
    return error_for_status(status, f"HTTP {status}: error in a 200 response: {message}")


class OpenAIAnalyzer:
    """Chat completions with structured output against OpenRouter or any compatible server."""

    name = "openai"
    remote = True

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        cfg = settings.analyzer
        if not cfg.model:
            raise ConfigError(
                "autonomous_runner.analyzer.model: required for the openai backend (got nothing)"
            )
        host = urlsplit(cfg.base_url).hostname or ""
        self.openrouter = host.endswith("openrouter.ai")
        key = cfg.api_key.get_secret_value() if cfg.api_key else ""
        if self.openrouter and not key:
            raise ConfigError(
                "OPENROUTER_API_KEY: required for the openai backend on OpenRouter (got nothing)"
            )
        self.models = [cfg.model, *[m for m in cfg.fallback_models if m != cfg.model]]
        self.temperature = cfg.temperature
        self.max_tokens = cfg.max_tokens
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if self.openrouter:
            headers["X-Title"] = "autonomous-runner"
        self.client = httpx.AsyncClient(
            base_url=cfg.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(settings.timeouts.symbol_timeout_seconds, connect=5.0),
            transport=transport,
            follow_redirects=False,
        )

    def _body(self, model: str, request: AnalysisRequest, user: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "trading_signal", "strict": True, "schema": SIGNAL_SCHEMA},
            },
        }
        if self.openrouter:
            body["usage"] = {"include": True}
        return body

    async def _call(self, model: str, request: AnalysisRequest, user: str) -> Analysis:
        timeout = httpx.Timeout(max(request.timeout, 0.1), connect=min(5.0, max(request.timeout, 0.1)))
        try:
            response = await self.client.post(
                "chat/completions", json=self._body(model, request, user), timeout=timeout
            )
        except httpx.TimeoutException as exc:
            raise TransientError(f"no answer from {model} within {request.timeout:.1f}s") from exc
        except httpx.HTTPError as exc:
            raise TransientError(f"cannot reach the API: {type(exc).__name__}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            detail = _message(body) if body is not None else response.reason_phrase
            raise error_for_status(
                response.status_code,
                f"HTTP {response.status_code}: {detail}",
                retry_after_seconds(response.headers.get("retry-after")),
            )
        if not isinstance(body, dict):
            raise TransientError("HTTP 200 with a body that is not a JSON object")
        if body.get("error"):
            raise _body_error(body["error"])
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise InvalidOutput("response has no choices")
        choice = choices[0]
        if choice.get("error"):
            raise _body_error(choice["error"])
        if choice.get("finish_reason") == "error":
            raise TransientError("generation stopped with finish_reason=error")
        message = choice.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str) or not content.strip():
            refusal = message.get("refusal") if isinstance(message, dict) else None
            raise InvalidOutput(f"model refused: {refusal}"[:200] if refusal else "empty answer")
        usage = body["usage"] if isinstance(body.get("usage"), dict) else {}
        cost = usage.get("cost")
        return parse_answer(
            content,
            request,
            analyzer=self.name,
            model=str(body.get("model") or model),
            requested_model=self.models[0],
            prompt_hash=prompt_hash(SYSTEM_PROMPT, user),
            tokens_in=_int(usage.get("prompt_tokens")),
            tokens_out=_int(usage.get("completion_tokens")),
            cost_usd=float(cost) if isinstance(cost, int | float) else None,
        )

    async def analyze(self, request: AnalysisRequest) -> Analysis:
        user = user_prompt(request)
        last: AnalyzerError | None = None
        for model in self.models:
            try:
                return await self._call(model, request, user)
            except (AuthError, RateLimited, InvalidOutput):
                raise
            except (TransientError, PermanentError) as exc:
                last = exc  # this model is down or unknown: the next one may answer
        assert last is not None
        raise last

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
