"""Small helpers the report's figures share: a goal's verdict, percentiles and spreads."""

from __future__ import annotations

import statistics


def check(ok: bool) -> str:
    """The last column of a report row: the goal met or missed."""
    return "met" if ok else "**missed**"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, as the nearest rank at or below it."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float]) -> tuple[float, float]:
    """The interquartile range of ``values`` (the middle half of the runs); the whole range when
    there are fewer than four."""
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]
