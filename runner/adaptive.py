"""Latency window, adaptive concurrency and timeout, and backpressure (all pure).

The window holds the most recent analysis latencies across runs (kept in Redis). Samples older
than ``sample_max_age_seconds`` no longer count: the high-latency skip records nothing while it
skips, so without ageing it would repeat forever.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from runner.config import Adaptive as AdaptiveConfig
from runner.config import Parallel, Timeouts


@dataclass(frozen=True)
class Sample:
    at: float  # epoch seconds
    ms: float


def parse_samples(raw: list[str]) -> list[Sample]:
    """``<epoch>:<ms>`` strings, newest first; unreadable entries are dropped."""
    out: list[Sample] = []
    for item in raw:
        at, _, ms = str(item).partition(":")
        try:
            out.append(Sample(float(at), float(ms)))
        except ValueError:
            continue
    return out


#: A sample stamped further in the future than this came from a clock that ran ahead: ignored,
#: or it would never age out.
FUTURE_TOLERANCE_SECONDS = 120.0


def recent(samples: list[Sample], now: float, cfg: AdaptiveConfig) -> list[float]:
    """Latencies that still count: young enough, not from the future, at most the window size."""
    cutoff = now - cfg.sample_max_age_seconds
    horizon = now + FUTURE_TOLERANCE_SECONDS
    return [s.ms for s in samples if cutoff <= s.at <= horizon][: cfg.latency_window_size]


def percentile(values: list[float], q: float) -> float:
    """The specification's nearest-rank percentile (0 for no data)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


@dataclass(frozen=True)
class Plan:
    """How this cycle should run, given recent latency."""

    concurrency: int
    symbol_timeout: float
    p95_ms: float
    p99_ms: float
    high_latency: bool
    skip: bool
    samples: int


def plan(latencies: list[float], cfg: AdaptiveConfig, parallel: Parallel, timeouts: Timeouts) -> Plan:
    """Halve concurrency and stretch the timeout when p95 is high; skip when p99 is."""
    p95, p99 = percentile(latencies, 0.95), percentile(latencies, 0.99)
    high = p95 > cfg.p95_threshold_ms
    concurrency = (
        max(parallel.min_concurrent, parallel.max_concurrent // 2) if high else parallel.max_concurrent
    )
    timeout = timeouts.symbol_timeout_seconds
    if high:
        timeout = min(timeouts.symbol_timeout_seconds * 1.5, timeouts.symbol_timeout_max_seconds)
    return Plan(
        concurrency=min(concurrency, parallel.max_concurrent),
        symbol_timeout=timeout,
        p95_ms=p95,
        p99_ms=p99,
        high_latency=high,
        skip=p99 > cfg.p99_threshold_ms,
        samples=len(latencies),
    )


@dataclass(frozen=True)
class Backpressure:
    """Per-shard overrun streak and cooldown, persisted between runs."""

    consecutive_overruns: int = 0
    cooldown_remaining: int = 0

    def to_fields(self) -> dict[str, str]:
        return {
            "consecutive_overruns": str(self.consecutive_overruns),
            "cooldown_remaining": str(self.cooldown_remaining),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Backpressure:
        """Parse the hash; raises ``ValueError`` on garbage."""
        overruns = int(fields.get("consecutive_overruns") or 0)
        cooldown = int(fields.get("cooldown_remaining") or 0)
        if overruns < 0 or cooldown < 0:
            raise ValueError("negative backpressure counters")
        return cls(overruns, cooldown)


def after_skip_for_cooldown(bp: Backpressure) -> Backpressure:
    """One cooldown cycle spent."""
    return replace(bp, cooldown_remaining=max(0, bp.cooldown_remaining - 1))


def after_cycle(bp: Backpressure, overran: bool, cfg: AdaptiveConfig) -> tuple[Backpressure, bool]:
    """The streak after a cycle that ran; returns (state, whether a cooldown starts now)."""
    if not overran:
        return Backpressure(0, bp.cooldown_remaining), False
    streak = bp.consecutive_overruns + 1
    if streak >= cfg.backpressure_max_overruns and cfg.cooldown_cycles > 0:
        return Backpressure(0, cfg.cooldown_cycles), True
    return Backpressure(streak, bp.cooldown_remaining), False
