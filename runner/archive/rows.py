"""From what Redis holds to the rows the archive stores (pure).

A stream entry becomes one row of its stage's table: the typed columns taken from the document
(a value of the wrong type becomes NULL, never an error that would stop every later batch), the
whole document beside them, the entry's id and the time Redis took it. A cycle summary of the
history becomes a row of ``cycles``. An entry that holds no readable document is left out and
counted.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from runner.errors import ConfigError

#: The stage of each stream the archive copies, and the entry field that holds its document.
STAGE_FIELDS: dict[str, str] = {
    "signal": "signal",
    "score": "doc",
    "advice": "doc",
    "report": "doc",
    "outcome": "doc",
}
STAGES = tuple(STAGE_FIELDS)

_INT32 = 2**31 - 1
_INT64 = 2**63 - 1

Entry = tuple[str, Mapping[str, Any]]


@dataclass
class Batch:
    """What one run sends: stage -> rows, and how many entries held nothing readable."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unreadable: int = 0

    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def payload(self) -> str:
        """The JSON the write statement unpacks."""
        return json.dumps(self.rows, separators=(",", ":"), allow_nan=False)


def clean(value: Any) -> Any:
    """A JSON value PostgreSQL's jsonb accepts: no NUL character in any string, no NaN or
    infinity (both are refused, and would fail the whole batch)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {clean(str(k)): clean(v) for k, v in value.items()}
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any, limit: int = _INT32) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if -limit <= value <= limit else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (``Z`` or an offset; none means UTC), None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def minute_of(doc_id: Any) -> datetime | None:
    """The scheduled minute a ``<symbol>:<YYYY-MM-DDTHH:MM>`` id (or a prefix of one) names."""
    if not isinstance(doc_id, str) or ":" not in doc_id:
        return None
    return parse_time(doc_id.split(":", 1)[1][:16] + ":00+00:00")


def entry_time(entry_id: str) -> datetime:
    """When Redis took a stream entry (the milliseconds of its id)."""
    ms = int(entry_id.split("-", 1)[0])
    return datetime.fromtimestamp(ms / 1000, UTC)


def _provenance(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "analyzer": _text(doc.get("analyzer")),
        "model": _text(doc.get("model")),
        "latency_ms": _int(doc.get("latency_ms")),
        "tokens_in": _int(doc.get("tokens_in")),
        "tokens_out": _int(doc.get("tokens_out")),
        "cost_usd": _float(doc.get("cost_usd")),
        "fencing_token": _int(doc.get("fencing_token"), _INT64),
        "cycle_id": _text(doc.get("cycle_id")),
        "instance_id": _text(doc.get("instance_id")),
        "generated_at": _iso(parse_time(doc.get("generated_at"))),
    }


def stage_row(stage: str, entry_id: str, doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The row of a stage's document taken from the stream entry ``entry_id``; None when it has
    no id (or, for a symbol's stage, no symbol)."""
    doc_id = _text(doc.get("id"))
    if not doc_id:
        return None
    published = entry_time(entry_id)
    minute = minute_of(doc_id) or minute_of(doc.get("signal_id"))
    if minute is None:
        generated = parse_time(doc.get("generated_at")) or published
        minute = generated.replace(second=0, microsecond=0)
    streamed = {"stream_id": entry_id, "published_at": published.isoformat(), "doc": clean(dict(doc))}
    if stage == "report":
        report_minute = parse_time(f"{doc.get('minute')}:00+00:00") if doc.get("minute") else None
        return {
            "id": doc_id,
            "shard": _text(doc.get("shard")),
            "minute": (report_minute or minute).isoformat(),
            **_provenance(doc),
            **streamed,
        }
    symbol = _text(doc.get("symbol"))
    if not symbol:
        return None
    head = {"id": doc_id, "symbol": symbol, "minute": minute.isoformat()}
    if stage == "signal":
        return {
            **head,
            "action": _text(doc.get("action")),
            "confidence": _float(doc.get("confidence")),
            "price": _float(doc.get("price")),
            **_provenance(doc),
            **streamed,
        }
    if stage == "score":
        return {
            **head,
            "score": _int(doc.get("score")),
            "grade": _text(doc.get("grade")),
            **_provenance(doc),
            **streamed,
        }
    if stage == "advice":
        return {
            **head,
            "action": _text(doc.get("action")),
            "entry": _float(doc.get("entry")),
            "stop_loss": _float(doc.get("stop_loss")),
            "take_profit": _float(doc.get("take_profit")),
            "position_size_pct": _float(doc.get("position_size_pct")),
            "horizon_minutes": _int(doc.get("horizon_minutes")),
            **_provenance(doc),
            **streamed,
        }
    if stage == "outcome":
        horizon = _int(doc.get("horizon_minutes"))
        signal_id = _text(doc.get("signal_id")) or doc_id.rsplit(":", 1)[0]
        signal_minute = minute_of(signal_id) or minute
        return {
            "id": doc_id,
            "signal_id": signal_id,
            "symbol": symbol,
            "minute": signal_minute.isoformat(),
            "horizon_minutes": horizon,
            "matured_at": _iso(signal_minute + timedelta(minutes=horizon)) if horizon is not None else None,
            "model": _text(doc.get("model")),
            "action": _text(doc.get("action")),
            "confidence": _float(doc.get("confidence")),
            "entry_price": _float(doc.get("entry_price")),
            "exit_price": _float(doc.get("exit_price")),
            "price_return": _float(doc.get("return")),
            "hit": _bool(doc.get("hit")),
            **streamed,
        }
    raise ValueError(f"unknown stage {stage!r}")


def cycle_row(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The row of a cycle summary (the history's shape); None without a cycle id or start."""
    cycle_id = _text(summary.get("cycle_id"))
    started = parse_time(summary.get("started_at"))
    if not cycle_id or started is None:
        return None
    scheduled = summary.get("scheduled_minute")
    minute = parse_time(f"{scheduled}:00+00:00") if isinstance(scheduled, str) else None
    return {
        "cycle_id": cycle_id,
        "instance_id": _text(summary.get("instance_id")),
        "shard": _text(summary.get("shard")),
        "status": _text(summary.get("status")),
        "skip_reason": _text(summary.get("skip_reason")),
        "exit_code": _int(summary.get("exit_code")),
        "started_at": started.isoformat(),
        "minute": _iso(minute),
        "duration_ms": _int(summary.get("duration_ms")),
        "signals": _int(summary.get("signals")),
        "scores": _int(summary.get("scores")),
        "advice": _int(summary.get("advice")),
        "report": _text(summary.get("report")),
        "doc": clean(dict(summary)),
    }


def _document(raw: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def build_batch(entries: Mapping[str, Iterable[Entry]], summaries: Iterable[str]) -> Batch:
    """The rows of every stream entry (stage -> ``(id, fields)``) and history summary given; a
    document seen twice is sent once."""
    batch = Batch()
    for stage, items in entries.items():
        rows: dict[str, dict[str, Any]] = {}
        for entry_id, fields in items:
            doc = _document(fields.get(STAGE_FIELDS[stage]))
            row = stage_row(stage, entry_id, doc) if doc is not None else None
            if row is None:
                batch.unreadable += 1
                continue
            rows.setdefault(row["id"], row)
        if rows:
            batch.rows[stage] = list(rows.values())
    cycles: dict[str, dict[str, Any]] = {}
    for raw in summaries:
        summary = _document(raw)
        row = cycle_row(summary) if summary is not None else None
        if row is None:
            batch.unreadable += 1
            continue
        cycles.setdefault(row["cycle_id"], row)
    if cycles:
        batch.rows["cycle"] = list(cycles.values())
    return batch


# Cursors --------------------------------------------------------------------------------------


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a comparable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


#: The cycle-id form of a time: cycle ids start with it, so comparing them compares their starts.
_CYCLE_TIME = "%Y%m%dT%H%M%S"


def cycle_time(cycle_id: str) -> datetime | None:
    """When the cycle whose id this is started."""
    try:
        head = datetime.strptime(cycle_id[:15], _CYCLE_TIME).replace(tzinfo=UTC)
        return head + timedelta(milliseconds=int(cycle_id[15:18]))
    except (ValueError, IndexError):
        return None


def cycle_prefix(moment: datetime) -> str:
    """The first characters of the id of a cycle started at ``moment``."""
    return f"{moment.astimezone(UTC):{_CYCLE_TIME}}{moment.microsecond // 1000:03d}"


def id_moment(value: Any) -> str:
    """A stream entry id or a cycle id as the time it stands for, ``?`` when it is neither."""
    text = str(value or "")
    moment = None
    if "-" in text and text.split("-", 1)[0].isdigit():
        moment = entry_time(text)
    elif text:
        moment = cycle_time(text)
    return f"{moment:%Y-%m-%d %H:%M:%S}Z" if moment is not None else (text or "?")


def history_floor(cycle_ids: Iterable[str], window_seconds: float) -> str | None:
    """Where the next run starts reading the history from: ``window_seconds`` before the latest
    cycle archived. A cycle records its summary after it started, so one that started a little
    before the latest archived one may reach the history only later; within the window it is
    sent again (and found already there) rather than missed."""
    times = [t for t in (cycle_time(c) for c in cycle_ids) if t is not None]
    if not times:
        return None
    return cycle_prefix(max(times) - timedelta(seconds=window_seconds))


# The scorecard from the archive -----------------------------------------------------------------


def scorecard_totals(
    found: Mapping[str, Iterable[Sequence[Any]]],
) -> tuple[dict[str, float], dict[tuple[str, str], int]]:
    """The archive's aggregates (``postgres.scorecard``) as the totals the Redis record step keeps
    (``symbol|model|action|horizon|stat`` and ``cal|...`` fields), and the days holding data per
    symbol and model: ``runner.outcomes`` then turns either source into the same scorecard."""
    totals: dict[str, float] = defaultdict(float)
    for symbol, model, action, horizon, count, hits, own, hold, brier, cost in found.get("rows", []):
        group = f"{symbol}|{model}|{action}|{horizon}|"
        totals[group + "count"] += float(count)
        totals[group + "hits"] += float(hits)
        totals[group + "return"] += float(own or 0)
        totals[group + "hold_return"] += float(hold or 0)
        totals[group + "brier"] += float(brier or 0)
        if cost:
            totals[group + "cost"] += float(cost)
    for symbol, model, horizon, decile, count, hits in found.get("calibration", []):
        cal = f"cal|{symbol}|{model}|{horizon}|{decile}|"
        totals[cal + "count"] += float(count)
        totals[cal + "hits"] += float(hits)
    for symbol, model, action, horizon, count in found.get("unscored", []):
        totals[f"{symbol}|{model}|{action}|{horizon}|unscored"] += float(count)
    days = {(str(symbol), str(model)): int(n) for symbol, model, n in found.get("days", [])}
    return dict(totals), days


_AGE = re.compile(r"^(\d{1,5})([hdw])$")


def parse_age(text: str) -> timedelta | None:
    """``--since 12h`` / ``7d`` / ``2w`` -> how far back; ``all`` -> None (everything)."""
    value = text.strip().lower()
    if value == "all":
        return None
    match = _AGE.match(value)
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"--since: must look like 12h, 7d, 2w or all (got {text!r})")
    unit = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}[match.group(2)]
    return int(match.group(1)) * unit


def history_doc(stage: str, entry_id: str, doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """A stream entry in the shape ``runner history`` prints (as the archive returns it)."""
    row = stage_row(stage, entry_id, doc)
    if row is None:
        return None
    return {
        "stage": stage,
        "id": row["id"],
        "symbol": row.get("symbol"),
        "minute": row["minute"],
        "published_at": row["published_at"],
        "doc": row["doc"],
    }
