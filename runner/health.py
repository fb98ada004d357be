"""The health verdict of ``runner status --check`` and the readiness probe (pure)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from runner.config import Settings


def health(doc: dict[str, Any], settings: Settings, now: float) -> tuple[int, list[str]]:
    """0 healthy, 1 degraded, 3 unhealthy, with the reasons (pure)."""
    problems: list[tuple[int, str]] = []
    last = doc.get("last_cycle")
    if doc["kill_switch"]["on"]:
        problems.append((1, f"kill switch on: {doc['kill_switch'].get('reason')}"))
    if doc["breaker"]["state"] == "open":
        problems.append((3, "circuit breaker open"))
    elif doc["breaker"]["state"] == "half_open":
        problems.append((1, "circuit breaker half-open"))
    if any(int(v.get("cooldown_remaining") or 0) > 0 for v in doc["cooldown"].values()):
        problems.append((1, "backpressure cooldown"))
    if doc["paused"]:
        problems.append((1, f"{len(doc['paused'])} symbol(s) paused"))
    memory = doc.get("memory") or {}
    if memory.get("evicts"):
        problems.append(
            (1, f"Redis may evict locks and markers (maxmemory-policy {memory.get('maxmemory_policy')})")
        )
    archive = doc.get("archive") or {}
    if archive.get("configured") and archive.get("result") not in (None, "ok"):
        when = _since(archive.get("ok_at"), now)
        problems.append((1, f"archive write {archive.get('result')} (last written {when})"))
    if last is None:
        problems.append((1, "no cycle has run yet"))
    else:
        started = _parse(last.get("started_at"))
        if started is not None and now - started > 5 * 60:
            problems.append((3, f"last cycle started {int(now - started)}s ago"))
        elif started is not None and now - started > 2 * 60:
            problems.append((1, f"last cycle started {int(now - started)}s ago"))
        if last.get("status") == "failed":
            problems.append((3, "last cycle failed"))
        elif last.get("status") == "partial":
            problems.append((1, "last cycle partial"))
    code = max((c for c, _ in problems), default=0)
    return code, [m for _, m in problems]


def _since(epoch: Any, now: float) -> str:
    if not isinstance(epoch, int | float):
        return "never"
    return f"{int(now - epoch)}s ago"


def _parse(iso: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
