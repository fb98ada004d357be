"""Metric totals kept in Redis, so counters and histograms stay cumulative across one-minute
processes (``rate()`` and ``histogram_quantile()`` work), and the gauges of the last cycle.

Series are stored as hash fields named like the exposition (``name{label="v"}``). This module
computes what one cycle adds (pure); ``state.py`` applies it atomically and returns the totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: Histogram bucket bounds per metric.
BUCKETS: dict[str, tuple[float, ...]] = {
    "cycle_duration_seconds": (1, 2, 5, 10, 20, 30, 45, 50, 55, 60, 90),
    "symbol_processing_duration_seconds": (0.1, 0.5, 1, 2, 5, 8, 10, 15, 30),
    "llm_latency_ms": (100, 250, 500, 1000, 2000, 4000, 8000, 9000, 12000, 15000, 30000),
}


def series(name: str, labels: Mapping[str, str] | None = None) -> str:
    """``name{k="v",...}`` with labels in sorted order and values escaped."""
    if not labels:
        return name
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return f"{name}{{{inner}}}"


def _fmt(bound: float) -> str:
    return repr(float(bound)) if bound != int(bound) else f"{int(bound)}.0"


class Increments:
    """Accumulates one cycle's counter and histogram increments."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def inc(self, name: str, labels: Mapping[str, str] | None = None, by: float = 1.0) -> None:
        key = series(name, labels)
        self.values[key] = self.values.get(key, 0.0) + by

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        base = dict(labels or {})
        for bound in BUCKETS[name]:
            if value <= bound:
                self.inc(f"{name}_bucket", {**base, "le": _fmt(bound)})
        self.inc(f"{name}_bucket", {**base, "le": "+Inf"})
        self.inc(f"{name}_sum", base, value)
        self.inc(f"{name}_count", base)

    def observe_many(
        self, name: str, values: Iterable[float], labels: Mapping[str, str] | None = None
    ) -> None:
        for v in values:
            self.observe(name, v, labels)
