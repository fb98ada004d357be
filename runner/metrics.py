"""Metric totals kept in Redis, so counters and histograms stay cumulative across one-minute
processes (``rate()`` and ``histogram_quantile()`` work), and the gauges of the last cycle.

Series are stored as hash fields named like the exposition (``name{label="v"}``). This module
names the metrics and computes what one cycle adds (pure); ``store/state.py`` applies it
atomically and returns the totals; ``exposition.py`` turns them into prometheus-client families
(imported only when metrics are pushed or written, to keep ``runner cycle`` start-up short).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

BACKSLASH, NEWLINE = chr(92), chr(10)

#: Histogram bucket bounds per metric.
BUCKETS: dict[str, tuple[float, ...]] = {
    "cycle_duration_seconds": (1, 2, 5, 10, 20, 30, 45, 50, 55, 60, 90),
    "symbol_processing_duration_seconds": (0.1, 0.5, 1, 2, 5, 8, 10, 15, 30),
    "llm_latency_ms": (100, 250, 500, 1000, 2000, 4000, 8000, 9000, 12000, 15000, 30000),
    "pipeline_stage_duration_seconds": (0.01, 0.1, 0.5, 1, 2, 5, 8, 10, 15, 30),
}


def series(name: str, labels: Mapping[str, str] | None = None) -> str:
    """``name{k="v",...}`` with labels in sorted order and values escaped."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def escape_label(value: str) -> str:
    """Label-value escaping of the Prometheus text format (backslash, quote, newline)."""
    return (
        value.replace(BACKSLASH, BACKSLASH * 2)
        .replace('"', BACKSLASH + '"')
        .replace(NEWLINE, BACKSLASH + "n")
    )


def unescape_label(value: str) -> str:
    """The inverse of ``escape_label``."""
    out, i = [], 0
    while i < len(value):
        if value[i] == BACKSLASH and i + 1 < len(value):
            out.append(NEWLINE if value[i + 1] == "n" else value[i + 1])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


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


# Exposition -----------------------------------------------------------------------------------

#: Counter families and their help text (stored with ``_total``; prometheus-client adds it back).
COUNTERS: dict[str, str] = {
    "signal_generation": "Signals generated, by symbol and action.",
    "signal_generation_skipped": "Symbols not turned into a signal, by symbol and reason.",
    "cycle_failures": "Cycles in which no symbol succeeded.",
    "cycles": "Cycles that ran, by status.",
    "cycles_skipped": "Cycles skipped by a guard, by reason.",
    "cycles_skipped_circuit_open": "Cycles skipped because the circuit breaker was open.",
    "cycles_skipped_high_latency": "Cycles skipped because p99 latency was too high.",
    "stale_locks_recovered": "Stale symbol locks taken over, by symbol and reason.",
    "circuit_breaker_rejected": "Calls or cycles refused by an open circuit breaker.",
    "backpressure_cooldowns": "Backpressure cooldowns started.",
    "pipeline_stage": "Pipeline stages by stage (signal, score, advise, report) and status.",
    "signal_outcomes": "Signal outcomes scored at a horizon: hit, miss or unscored (no candle to score it).",
    "notifications": "Notification sends, by event and result (sent, failed: retried later, dropped).",
    "archive_writes": "Writes to the PostgreSQL archive, by result: ok, error, timeout or refused.",
    "archive_documents": "Documents newly archived in PostgreSQL, by stage (or cycle: cycle summaries).",
    "archive_gap": "Gaps found: entries of a stage the stream cap dropped before they were archived.",
}

#: Counters without labels: exposed as 0 before their first increment.
UNLABELLED = frozenset(
    {"cycle_failures", "cycles_skipped_circuit_open", "cycles_skipped_high_latency", "backpressure_cooldowns"}
)

HISTOGRAMS: dict[str, str] = {
    "cycle_duration_seconds": "Duration of cycles that ran.",
    "symbol_processing_duration_seconds": "Time to analyze one symbol, retries included.",
    "llm_latency_ms": "Latency of one analyzer call in milliseconds.",
    "pipeline_stage_duration_seconds": "Time one pipeline stage took, retries included, by stage.",
}

GAUGES: dict[str, str] = {
    "signals_generated_last_cycle": "Signals published by the last cycle.",
    "active_locks": "Symbol locks the last cycle held.",
    "symbols_processing": "Symbols the last cycle analyzed.",
    "circuit_breaker_state": "Circuit breaker state: 0 closed, 0.5 half-open, 1 open.",
    "adaptive_batch_size": "Concurrency the last cycle used.",
    "current_p95_latency_ms": "p95 analyzer latency over the recent window.",
    "autonomous_runner_last_cycle_timestamp": "When the last cycle started (epoch seconds).",
    "autonomous_runner_last_success_timestamp": "When the last cycle with a signal started (epoch seconds).",
    "autonomous_runner_start_lag_seconds": "Seconds between the scheduled minute and the start.",
    "autonomous_runner_last_cycle_exit_code": "Exit code of the last cycle.",
    "signal_outcome_hit_ratio": "Share of a symbol's scored signals that hit, by horizon, since the start.",
    "archive_last_success_timestamp": "When the PostgreSQL archive was last written (epoch seconds).",
}

_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_series(text: str) -> tuple[str, dict[str, str]] | None:
    """``name{k="v"}`` -> (name, labels); None for anything else."""
    match = _SERIES.match(text)
    if not match:
        return None
    labels = {k: unescape_label(v) for k, v in _LABEL.findall(match.group(2) or "")}
    return match.group(1), labels
