"""The scorecard: how good the signals were, from the outcome totals the record step keeps (pure).

Each cycle scores the signals whose horizons matured (``store/scripts.py`` OUTCOMES) and adds to
totals per symbol, model, action and horizon, one hash per UTC day:

* ``count``, ``hits``: outcomes scored and how many hit. A BUY hits when the return from the
  close of its minute to the close H minutes later beats ``outcomes.fee_bps``, a SELL when it is
  below minus that, a HOLD when the move stays within it.
* ``return``: the sum of what following the signal returned (a BUY the move, a SELL minus the
  move, a HOLD nothing); ``hold_return``: the sum of the move itself, buy-and-hold over the same
  minutes.
* ``brier``: the sum of (confidence - hit)^2; lower is better, 0.25 is a coin flip at 0.5.
* ``unscored``: signals whose later candle never came (never guessed); ``cost``: what the
  scored signals cost.
* ``cal|<symbol>|<model>|<horizon>|<decile>|count|hits``: the calibration table.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from runner.errors import ConfigError

#: The stats kept per symbol, model, action and horizon.
STATS = ("count", "hits", "return", "hold_return", "brier", "unscored", "cost")
_SINCE = re.compile(r"^(\d{1,4})([dw])$")


def parse_since(text: str, kept_days: int) -> int:
    """``--since 7d`` / ``2w`` / ``all`` -> how many days back (today counts as one)."""
    value = text.strip().lower()
    if value == "all":
        return kept_days
    match = _SINCE.match(value)
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"--since: must look like 7d, 2w or all (got {text!r})")
    days = int(match.group(1)) * (7 if match.group(2) == "w" else 1)
    return min(days, kept_days)


def merge(days: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Daily totals summed field by field (unreadable values left out)."""
    out: dict[str, float] = defaultdict(float)
    for day in days:
        for field, raw in day.items():
            try:
                value = float(raw)
            except (TypeError, ValueError):
                continue
            out[str(field)] += value
    return dict(out)


@dataclass(frozen=True)
class Row:
    """One symbol, model, action and horizon."""

    symbol: str
    model: str
    action: str
    horizon_minutes: int
    count: int
    hits: int
    hit_rate: float | None
    mean_return: float | None
    buy_and_hold_return: float | None
    brier: float | None
    unscored: int
    cost_usd: float
    cost_per_hit: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Summary:
    """One symbol and model over every action, at one horizon."""

    symbol: str
    model: str
    horizon_minutes: int
    count: int
    hit_rate: float | None
    mean_return: float | None
    buy_and_hold_return: float | None
    #: Whether following the signals returned more than holding the symbol did.
    beats_buy_and_hold: bool | None
    brier: float | None
    signals_per_day: float | None
    cost_per_hit: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Calibration:
    """Signals whose confidence fell in one decile, and how often they hit."""

    decile: int
    confidence_from: float
    confidence_to: float
    count: int
    hits: int
    hit_rate: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Filters:
    symbol: str | None = None
    model: str | None = None
    horizon: int | None = None

    def keep(self, symbol: str, model: str, horizon: int) -> bool:
        return (
            (self.symbol is None or symbol == self.symbol)
            and (self.model is None or model == self.model)
            and (self.horizon is None or horizon == self.horizon)
        )


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def groups(
    totals: Mapping[str, float], filters: Filters
) -> dict[tuple[str, str, str, int], dict[str, float]]:
    """``symbol|model|action|horizon|stat`` fields grouped by their first four parts."""
    out: dict[tuple[str, str, str, int], dict[str, float]] = defaultdict(lambda: dict.fromkeys(STATS, 0.0))
    for field, value in totals.items():
        parts = field.split("|")
        if len(parts) != 5 or parts[0] in ("cal", "all") or parts[4] not in STATS:
            continue
        symbol, model, action, horizon_text, stat = parts
        try:
            horizon = int(horizon_text)
        except ValueError:
            continue
        if filters.keep(symbol, model, horizon):
            out[(symbol, model, action, horizon)][stat] += value
    return dict(out)


def rows(totals: Mapping[str, float], filters: Filters = Filters()) -> list[Row]:
    """Every symbol, model, action and horizon with what its signals did."""
    out = []
    for (symbol, model, action, horizon), g in sorted(groups(totals, filters).items()):
        count, hits = int(g["count"]), int(g["hits"])
        out.append(
            Row(
                symbol=symbol,
                model=model,
                action=action,
                horizon_minutes=horizon,
                count=count,
                hits=hits,
                hit_rate=_ratio(hits, count),
                mean_return=_ratio(g["return"], count),
                buy_and_hold_return=_ratio(g["hold_return"], count),
                brier=_ratio(g["brier"], count),
                unscored=int(g["unscored"]),
                cost_usd=g["cost"],
                cost_per_hit=_ratio(g["cost"], hits) if g["cost"] else None,
            )
        )
    return out


def summaries(
    totals: Mapping[str, float], days_with_data: Mapping[tuple[str, str], int], filters: Filters = Filters()
) -> list[Summary]:
    """Per symbol, model and horizon over every action; ``days_with_data`` gives how many days
    held outcomes of that symbol and model (for signals per day)."""
    merged: dict[tuple[str, str, int], dict[str, float]] = defaultdict(lambda: dict.fromkeys(STATS, 0.0))
    for (symbol, model, _, horizon), g in groups(totals, filters).items():
        for stat, value in g.items():
            merged[(symbol, model, horizon)][stat] += value
    out = []
    for (symbol, model, horizon), g in sorted(merged.items()):
        count, hits = int(g["count"]), int(g["hits"])
        mean, hold = _ratio(g["return"], count), _ratio(g["hold_return"], count)
        days = days_with_data.get((symbol, model), 0)
        out.append(
            Summary(
                symbol=symbol,
                model=model,
                horizon_minutes=horizon,
                count=count,
                hit_rate=_ratio(hits, count),
                mean_return=mean,
                buy_and_hold_return=hold,
                beats_buy_and_hold=None if mean is None or hold is None else mean > hold,
                brier=_ratio(g["brier"], count),
                signals_per_day=_ratio(count + g["unscored"], days) if days else None,
                cost_per_hit=_ratio(g["cost"], hits) if g["cost"] else None,
            )
        )
    return out


def calibration(totals: Mapping[str, float], filters: Filters = Filters()) -> list[Calibration]:
    """Confidence deciles against hit rate (``cal|symbol|model|horizon|decile|stat`` fields)."""
    counts: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for field, value in totals.items():
        parts = field.split("|")
        if len(parts) != 6 or parts[0] != "cal" or parts[5] not in ("count", "hits"):
            continue
        _, symbol, model, horizon_text, decile_text, stat = parts
        try:
            horizon, decile = int(horizon_text), int(decile_text)
        except ValueError:
            continue
        if filters.keep(symbol, model, horizon) and 0 <= decile <= 9:
            counts[decile][0 if stat == "count" else 1] += value
    return [
        Calibration(d, d / 10, (d + 1) / 10, int(c), int(h), _ratio(h, c))
        for d, (c, h) in sorted(counts.items())
        if c
    ]


def days_with_data(days: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """How many of the daily totals hold outcomes of each symbol and model."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for day in days:
        seen = {
            tuple(str(f).split("|")[:2])
            for f in day
            if str(f).count("|") == 4 and not str(f).startswith(("cal|", "all|"))
        }
        for symbol_model in seen:
            out[(symbol_model[0], symbol_model[1])] += 1
    return dict(out)
