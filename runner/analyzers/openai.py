"""Any OpenAI-compatible chat-completions API (OpenRouter by default).

``ChatClient.ask`` sends one question (``POST {base_url}/chat/completions`` with a strict
JSON-schema ``response_format``) and returns the decoded JSON answer with its provenance; the
caller validates it (a signal, a score, an advice, a report). Errors are translated where they
enter:

* the HTTP status through ``analyzers/http.py`` (429 -> ``RateLimited`` with ``Retry-After``;
  401, 402 -> ``AuthError``; 408, 5xx -> ``TransientError``; other 4xx -> ``PermanentError``);
  connection errors and timeouts -> ``TransientError``;
* an HTTP 200 whose body carries ``error`` (OpenRouter reports failures that occur after
  generation started this way), or whose choice finished with ``error``, is an error too.

Fallback models are tried in order when a model fails transiently or is unknown. The model
that actually answered, the tokens and the cost (OpenRouter's ``usage.cost``) go on the document.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

import httpx

from runner.analyzers.base import Ask, Reply
from runner.analyzers.http import error_for_status, retry_after_seconds
from runner.analyzers.prompt import AskingAnalyzer, extract_json, prompt_hash
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

NAME = "openai"


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


class ChatClient:
    """Asks one OpenAI-compatible server questions with structured output."""

    name = NAME

    def __init__(
        self,
        settings: Settings,
        *,
        model: str | None,
        base_url: str,
        field: str,
        fallback_models: list[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        cfg = settings.analyzer
        if not model:
            raise ConfigError(f"autonomous_runner.{field}: required for the openai backend (got nothing)")
        host = urlsplit(base_url).hostname or ""
        self.openrouter = host.endswith("openrouter.ai")
        key = cfg.api_key.get_secret_value() if cfg.api_key else ""
        if self.openrouter and not key:
            raise ConfigError(
                "OPENROUTER_API_KEY: required for the openai backend on OpenRouter (got nothing)"
            )
        self.models = [model, *[m for m in fallback_models or [] if m != model]]
        self.temperature = cfg.temperature
        self.max_tokens = cfg.max_tokens
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if self.openrouter:
            headers["X-Title"] = "autonomous-runner"
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(settings.timeouts.symbol_timeout_seconds, connect=5.0),
            transport=transport,
            follow_redirects=False,
        )

    def _body(self, model: str, ask: Ask) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "system", "content": ask.system}, {"role": "user", "content": ask.user}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": ask.schema_name, "strict": True, "schema": ask.schema},
            },
        }
        if self.openrouter:
            body["usage"] = {"include": True}
        return body

    async def _call(self, model: str, ask: Ask) -> Reply:
        limit = max(ask.timeout, 0.1)
        timeout = httpx.Timeout(limit, connect=min(5.0, limit))
        try:
            response = await self.client.post(
                "chat/completions", json=self._body(model, ask), timeout=timeout
            )
        except httpx.TimeoutException as exc:
            raise TransientError(f"no answer from {model} within {ask.timeout:.1f}s") from exc
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
        return Reply(
            data=extract_json(content),
            provenance={
                "analyzer": self.name,
                "model": str(body.get("model") or model),
                "requested_model": self.models[0],
                "prompt_hash": prompt_hash(ask.system, ask.user),
                "tokens_in": _int(usage.get("prompt_tokens")),
                "tokens_out": _int(usage.get("completion_tokens")),
                "cost_usd": float(cost) if isinstance(cost, int | float) else None,
            },
        )

    async def ask(self, ask: Ask) -> Reply:
        """The answer of the first model that gives one (fallbacks in order)."""
        last: AnalyzerError | None = None
        for model in self.models:
            try:
                return await self._call(model, ask)
            except (AuthError, RateLimited, InvalidOutput):
                raise
            except (TransientError, PermanentError) as exc:
                last = exc  # this model is down or unknown: the next one may answer
        assert last is not None
        raise last

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


class OpenAIAnalyzer(AskingAnalyzer):
    """The signal stage through an OpenAI-compatible API."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        cfg = settings.analyzer
        super().__init__(
            ChatClient(
                settings,
                model=cfg.model,
                base_url=cfg.base_url,
                field="analyzer.model",
                fallback_models=cfg.fallback_models,
                transport=transport,
            )
        )


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
