"""The exposition of the totals: prometheus-client families, the Pushgateway push, the textfile."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from runner.metrics import BUCKETS, COUNTERS, GAUGES, HISTOGRAMS, UNLABELLED, _fmt, parse_series


class TotalsCollector(Collector):
    """Exposes totals read from Redis as counters, histograms and gauges."""

    def __init__(self, counters: Mapping[str, float], gauges: Mapping[str, float]) -> None:
        self.counters = counters
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
        for key, value in {**self.counters, **self.gauges}.items():
            parsed = parse_series(key)
            if parsed is not None:
                by_name.setdefault(parsed[0], []).append((parsed[1], float(value)))
        for family, help_text in COUNTERS.items():
            rows = by_name.get(f"{family}_total", [])
            names = sorted({k for labels, _ in rows for k in labels})
            metric = CounterMetricFamily(family, help_text, labels=names)
            for labels, value in rows:
                metric.add_metric([labels.get(n, "") for n in names], value)
            if not rows and family in UNLABELLED:
                metric.add_metric([], 0.0)  # so rate() and ratios see a zero, not an absent series
            yield metric
        for family, help_text in HISTOGRAMS.items():
            yield from _histograms(family, help_text, by_name)
        for family, help_text in GAUGES.items():
            rows = by_name.get(family, [])
            if not rows:
                continue
            names = sorted({k for labels, _ in rows for k in labels})
            gauge = GaugeMetricFamily(family, help_text, labels=names)
            for labels, value in rows:
                gauge.add_metric([labels.get(n, "") for n in names], value)
            yield gauge


def _histograms(
    family: str, help_text: str, by_name: Mapping[str, list[tuple[dict[str, str], float]]]
) -> Iterator[Metric]:
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for labels, value in by_name.get(f"{family}_bucket", []):
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        groups.setdefault(rest, {"buckets": {}, "sum": 0.0})["buckets"][labels.get("le", "+Inf")] = value
    for labels, value in by_name.get(f"{family}_sum", []):
        groups.setdefault(tuple(sorted(labels.items())), {"buckets": {}, "sum": 0.0})["sum"] = value
    names = sorted({k for rest in groups for k, _ in rest})
    metric = HistogramMetricFamily(family, help_text, labels=names)
    bounds = [_fmt(b) for b in BUCKETS[family]] + ["+Inf"]
    for rest, data in groups.items():
        labels = dict(rest)
        buckets = [(b, data["buckets"].get(b, 0.0)) for b in bounds]
        metric.add_metric([labels.get(n, "") for n in names], buckets, data["sum"])
    yield metric


def build_registry(counters: Mapping[str, float], gauges: Mapping[str, float]) -> CollectorRegistry:
    """A registry holding exactly these totals and gauges."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TotalsCollector(counters, gauges))
    return reg


def push(url: str, job: str, shard: str, reg: CollectorRegistry, timeout: float) -> None:
    """``PUT`` the registry to the Pushgateway, grouped by job and shard (never by pod)."""
    push_to_gateway(url, job=job, registry=reg, grouping_key={"shard": shard}, timeout=timeout)


def write_textfile(path: str, reg: CollectorRegistry) -> None:
    """The same exposition as a node_exporter textfile (written atomically)."""
    write_to_textfile(path, reg)
