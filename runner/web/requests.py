"""What the routes check before they act: query parameters, JSON bodies and the bearer token,
each failure one line in the one error shape every route answers, ``{"error": "..."}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse

from runner.config import Symbol

M = TypeVar("M", bound=BaseModel)

#: Largest request body a route reads.
MAX_BODY_BYTES = 16 * 1024


class BadRequest(Exception):
    """A request the route refuses: its status and one line saying why."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def only_params(request: Request, allowed: set[str]) -> dict[str, str]:
    """The query parameters, each at most once and each one the route knows."""
    seen: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"unknown query parameter {key!r} (this route takes: {known})")
        if key in seen:
            raise BadRequest(f"{key}: given more than once")
        seen[key] = value
    return seen


def int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer parameter in [low, high]; anything else is a 422."""
    raw = params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise BadRequest(f"{name}: must be an integer from {low} to {high} (got {raw[:40]!r})")
    return int(text)


def token_problem(configured: SecretStr | None, authorization: str | None) -> tuple[int, str] | None:
    """Why a write is refused (status, one line), or None when the bearer token is right.

    The comparison takes the same time wherever and however much the tokens differ.
    """
    secret = configured.get_secret_value() if configured is not None else ""
    if not secret:
        return 403, "writes are disabled: no API token is configured (set RUNNER_API_TOKEN)"
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, "missing token: send Authorization: Bearer <RUNNER_API_TOKEN>"
    # Digests of equal length: the comparison does not even tell how long the token is.
    if not hmac.compare_digest(_digest(given.strip()), _digest(secret)):
        return 401, "wrong token"
    return None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


async def json_body(request: Request, required: bool) -> Any:
    """The parsed JSON body (None when there is none and none is required)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise BadRequest(f"body: larger than {MAX_BODY_BYTES} bytes", 413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(f"body: larger than {MAX_BODY_BYTES} bytes", 413)
    if not body.strip():
        if required:
            raise BadRequest("body: required (a JSON object)", 400)
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body: not UTF-8 text", 400) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        reason = getattr(exc, "msg", "invalid")
        raise BadRequest(f"body: not valid JSON ({reason})", 400) from None
    except RecursionError:
        raise BadRequest("body: nested too deeply to be a request", 400) from None


def parse(model: type[M], data: Any) -> M:
    """``data`` validated as ``model``; the first problem becomes a one-line 422."""
    if not isinstance(data, dict):
        raise BadRequest(f"body: must be a JSON object (got {type(data).__name__})")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_describe(exc.errors()[0])) from None


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in ("body", *error["loc"]))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    if error["type"] == "missing":
        return f"{where}: required"
    if error["type"] in ("value_error", "assertion_error"):
        return f"{where}: {message}"
    return f"{where}: {message} (got {error.get('input')!r})"[:300]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class KillSwitchBody(Body):
    """``{"on": true, "reason": "..."}`` or ``{"on": false}``."""

    on: bool
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _reason(self) -> KillSwitchBody:
        if self.on and not (self.reason or "").strip():
            raise ValueError("reason is required when on is true")
        return self


class CycleBody(Body):
    """``{}`` or ``{"symbols": ["ETH/USD", ...]}``: the symbols of the cycle (default: configured)."""

    symbols: list[Symbol] | None = Field(default=None, min_length=1, max_length=500)
