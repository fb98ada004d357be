"""One mapping from HTTP answers to the runner's errors, for every remote analyzer.

* 429 -> ``RateLimited`` (with ``Retry-After``);
* 401, 402 -> ``AuthError``: credentials refused or money exhausted, every call fails alike;
* 408, 5xx (and a 404 for something that vanished under us, such as a session) ->
  ``TransientError`` (``Retry-After`` kept);
* any other status -> ``PermanentError``.
"""

from __future__ import annotations

from typing import Any

from runner.errors import AnalyzerError, AuthError, PermanentError, RateLimited, TransientError


def retry_after_seconds(value: Any) -> float | None:
    """``Retry-After`` as seconds (the delta-seconds form; an HTTP date counts as unknown)."""
    if value is None or value == "":
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def error_for_status(
    status: int, message: str, retry_after: float | None = None, *, vanished: bool = False
) -> AnalyzerError:
    """The runner error for an HTTP ``status``; ``message`` already says what was being done."""
    text = message[:300]
    if status == 429:
        return RateLimited(text, retry_after)
    if status in (401, 402):
        return AuthError(text)
    if status == 408 or status >= 500 or (status == 404 and vanished):
        return TransientError(text, retry_after)
    return PermanentError(text)
