"""Reading Redis and Lua replies into the runner's types, one way for every reader.

The cycle's first step and ``runner status`` read the same keys; both parse them here, so a
value that is garbage reads the same everywhere (with a warning where the cycle can repair it).
"""

from __future__ import annotations

import json
from typing import Any

from runner.adaptive import Backpressure
from runner.breaker import BreakerState
from runner.notify import Streak


def pairs(raw: Any) -> dict[str, str]:
    """A hash reply as a dict: a flat ``[k1, v1, ...]`` from Lua or a dict from redis-py."""
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    if not isinstance(raw, list):
        return {}
    return {str(k): str(v) for k, v in zip(raw[::2], raw[1::2], strict=False)}


def as_float(value: Any) -> float | None:
    """A float from a Redis or Lua reply, None for nil, garbage or booleans."""
    if value is None or isinstance(value, bool):  # Lua's nil arrives as false
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def numbers(raw: Any) -> dict[str, float]:
    """A hash reply of numbers (metric totals) as floats; unreadable values left out."""
    out: dict[str, float] = {}
    for k, v in pairs(raw).items():
        value = as_float(v)
        if value is not None:
            out[k] = value
    return out


def as_json(raw: Any) -> Any:
    """The JSON value in a reply, None when it is absent or not JSON."""
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return None


def json_object(raw: Any) -> dict[str, Any] | None:
    """The JSON object in a reply, None for anything else."""
    value = as_json(raw)
    return value if isinstance(value, dict) else None


def version_of(fields: dict[str, str]) -> int:
    """The version field of a versioned hash, 0 when absent or garbage."""
    try:
        return int(fields.get("version") or 0)
    except ValueError:
        return 0


def breaker_state(fields: dict[str, str], key: str, warnings: list[str] | None = None) -> BreakerState:
    """The breaker in ``fields``; unreadable: closed at its version, with a warning."""
    try:
        return BreakerState.from_fields(fields)
    except ValueError as exc:
        if warnings is not None:
            warnings.append(f"{key} unreadable ({exc}); treated as closed")
        return BreakerState(version=version_of(fields))


def backpressure(fields: dict[str, str], key: str, warnings: list[str] | None = None) -> Backpressure:
    """A shard's backpressure in ``fields``; unreadable: reset, with a warning."""
    try:
        return Backpressure.from_fields(fields)
    except ValueError as exc:
        if warnings is not None:
            warnings.append(f"{key} unreadable ({exc}); reset")
        return Backpressure()


def spend_usd(fields: dict[str, str]) -> float:
    """Today's spend in a spend hash (0 when absent or garbage)."""
    return as_float(fields.get("usd")) or 0.0


def streak(fields: dict[str, str], key: str, warnings: list[str] | None = None) -> Streak:
    """A shard's failed-cycle streak in ``fields``; unreadable: none, with a warning."""
    try:
        return Streak.from_fields(fields)
    except ValueError as exc:
        if warnings is not None:
            warnings.append(f"{key} unreadable ({exc}); reset")
        return Streak()
