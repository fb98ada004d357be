"""The alerting rules, their PrometheusRule twin and the Grafana dashboard.

promtool checks and unit-tests the rules (a missing promtool fails the run: `.ci/run` installs the
Debian package ``prometheus``, which ships it); the rules and the dashboard may only use metric
names the runner actually exposes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from runner.exposition import build_registry
from runner.metrics import COUNTERS, GAUGES, HISTOGRAMS, Increments

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "k8s" / "alerts" / "autonomous-runner.rules.yml"
PROMETHEUS_RULE = ROOT / "k8s" / "prometheus-rules.yaml"
RULE_TESTS = ROOT / "tests" / "alerts" / "autonomous-runner.test.yml"
DASHBOARD = ROOT / "k8s" / "grafana-dashboard.json"

#: The specification's alerts and the severities of its thresholds table.
SPEC_ALERTS: dict[str, set[str]] = {
    "SignalGenerationDelayed": {"warning", "critical"},
    "HighSkipRate": {"warning", "critical"},
    "CircuitBreakerOpen": {"critical"},
    "HighLatencyMode": {"warning", "critical"},
    "BackpressureCooldown": {"warning"},
    "StaleLockRecoveryHigh": {"warning", "critical"},
    "CycleFailureRateHigh": {"warning", "critical"},
    # The pipeline's own: a stage failing for most of the symbols it runs for.
    "PipelineStageFailing": {"warning", "critical"},
}

#: Dashboard panel title -> metric names its queries must use.
DASHBOARD_PANELS: dict[str, set[str]] = {
    "Cycle duration": {"cycle_duration_seconds_bucket", "cycle_duration_seconds_sum"},
    "Signals per cycle by action": {"signal_generation_total"},
    "Skips by reason": {"signal_generation_skipped_total", "cycles_skipped_total"},
    "Circuit breaker state": {"circuit_breaker_state"},
    "P95 latency": {"current_p95_latency_ms", "llm_latency_ms_bucket"},
    "Locks": {"active_locks", "stale_locks_recovered_total"},
    "Start lag": {"autonomous_runner_start_lag_seconds"},
    "Pipeline stages by status": {"pipeline_stage_total"},
    "Pipeline stage duration": {"pipeline_stage_duration_seconds_bucket"},
    "Time since last cycle / last success": {
        "autonomous_runner_last_cycle_timestamp",
        "autonomous_runner_last_success_timestamp",
    },
}

# PromQL words that look like metric names once strings, matchers and ranges are gone.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_KEYWORDS |= {"offset", "inf", "nan"}


def exposed_names() -> set[str]:
    """Every sample name the runner exposes, from runner.metrics."""
    names = {f"{c}_total" for c in COUNTERS} | set(GAUGES)
    names |= {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords or label names)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, Grafana variables)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range and subquery selectors
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\boffset\s+-?[0-9a-zA-Z$_]+", " ", e)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def dashboard_queries() -> dict[str, list[str]]:
    """Panel title -> the PromQL of its targets."""
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in doc["panels"]}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail(
            "promtool is not installed; `.ci/run` installs it with the Debian package `prometheus` "
            "(sudo apt-get install -y prometheus)",
            pytrace=False,
        )
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


# promtool -------------------------------------------------------------------------------------


def test_promtool_accepts_the_rules_file(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES.relative_to(ROOT)))
    assert result.returncode == 0, f"promtool check rules failed:\n{result.stdout}\n{result.stderr}"
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(RULE_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, f"promtool test rules failed:\n{result.stdout}\n{result.stderr}"
    assert "SUCCESS" in result.stdout


def test_promtool_accepts_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    """The dashboard's PromQL parses (Grafana variables replaced by what they expand to)."""
    recording = []
    for n, exprs in enumerate(dashboard_queries().values()):
        for m, expr in enumerate(exprs):
            concrete = expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$shard", ".*")
            recording.append({"record": f"dashboard:panel{n}:query{m}", "expr": concrete})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}), encoding="utf-8")
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, f"promtool rejects a dashboard query:\n{result.stdout}\n{result.stderr}"


# rules ----------------------------------------------------------------------------------------


def test_prometheus_rule_carries_exactly_the_plain_groups() -> None:
    plain = load_yaml(RULES)
    crd = load_yaml(PROMETHEUS_RULE)
    assert crd["apiVersion"] == "monitoring.coreos.com/v1"
    assert crd["kind"] == "PrometheusRule"
    assert crd["metadata"]["name"] == "autonomous-runner"
    assert crd["metadata"]["labels"].get("release")
    assert crd["spec"]["groups"] == plain["groups"]
    assert [g["name"] for g in plain["groups"]] == ["autonomous-runner"]


def test_every_specified_alert_is_there_with_its_severities() -> None:
    found: dict[str, set[str]] = {}
    for rule in rules():
        assert "alert" in rule, rule
        found.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
    assert found == SPEC_ALERTS


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """For each alert and severity the promtool tests show it firing, and somewhere nothing fires."""
    fires: dict[str, set[str]] = {name: set() for name in SPEC_ALERTS}
    quiet: set[str] = set()
    for group in load_yaml(RULE_TESTS)["tests"]:
        for case in group.get("alert_rule_test", []):
            if not case.get("exp_alerts"):
                quiet.add(case["alertname"])
            for alert in case.get("exp_alerts") or []:
                labels = alert["exp_labels"]
                assert {"job", "shard", "severity"} <= set(labels), labels
                fires[case["alertname"]].add(labels["severity"])
    assert fires == SPEC_ALERTS
    assert quiet == set(SPEC_ALERTS)


def test_rules_use_only_metrics_the_runner_exposes() -> None:
    exposed = exposed_names()
    used: set[str] = set()
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names, rule["expr"]
        assert names <= exposed, f"{rule['alert']} uses unknown metrics {sorted(names - exposed)}"
        assert 'job="autonomous_runner"' in rule["expr"], f"{rule['alert']} is not scoped to the job"
        used |= names
    assert {
        "autonomous_runner_last_cycle_timestamp",
        "signal_generation_skipped_total",
        "signal_generation_total",
        "circuit_breaker_state",
        "current_p95_latency_ms",
        "backpressure_cooldowns_total",
        "stale_locks_recovered_total",
        "cycle_failures_total",
        "cycles_total",
        "pipeline_stage_total",
    } <= used


def test_exposed_names_match_the_real_exposition() -> None:
    """The names derived from COUNTERS/HISTOGRAMS/GAUGES are what prometheus-client writes."""
    inc = Increments()
    for family in COUNTERS:
        inc.inc(f"{family}_total", {"symbol": "BTC/USD"})
    for family in HISTOGRAMS:
        inc.observe(family, 1.0)
    text = generate_latest(build_registry(inc.values, dict.fromkeys(GAUGES, 1.0))).decode()
    written = {
        re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group()  # type: ignore[union-attr]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert written == exposed_names()


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (job, shard) (rate(a_total{job="x", le="+Inf"}[5m])) / ignoring(le) b offset 1m '
        '* on (shard) group_left (reason) c{d="e"} > bool 1e3 '
        "or histogram_quantile(0.95, f_bucket[$__rate_interval])"
    )
    assert metric_names(expr) == {"a_total", "b", "c", "f_bucket"}
    assert metric_names('time() - g{job=~"$job"} > 120') == {"g"}


# dashboard ------------------------------------------------------------------------------------


def test_dashboard_has_the_panels_and_variables() -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert 36 <= doc["schemaVersion"] <= 41
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "shard"} <= set(variables)
    queries = dashboard_queries()
    for title, needed in DASHBOARD_PANELS.items():
        assert title in queries, f"no panel {title!r}"
        used = set().union(*(metric_names(q) for q in queries[title]))
        assert needed <= used, f"{title!r} does not query {sorted(needed - used)}"
    for panel in doc["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert "$job" in target["expr"], target["expr"]
            assert "$shard" in target["expr"], target["expr"]
    quantiles = " ".join(queries["Cycle duration"])
    assert "histogram_quantile(0.5," in quantiles
    assert "histogram_quantile(0.95," in quantiles
    assert "by (action)" in " ".join(queries["Signals per cycle by action"])
    assert "by (reason)" in " ".join(queries["Skips by reason"])
    assert "by (stage, status)" in " ".join(queries["Pipeline stages by status"])
    durations = " ".join(queries["Pipeline stage duration"])
    assert "by (stage, le)" in durations
    assert "histogram_quantile(0.95," in durations


def test_dashboard_uses_only_metrics_the_runner_exposes() -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exposed = exposed_names()
    for title, exprs in dashboard_queries().items():
        for expr in exprs:
            names = metric_names(expr)
            assert names, expr
            assert names <= exposed, f"{title!r} uses unknown metrics {sorted(names - exposed)}"
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            found = re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", variable["definition"])
            assert found, variable["definition"]
            assert set(found) <= exposed, variable["definition"]
