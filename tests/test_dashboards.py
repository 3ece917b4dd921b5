"""docs/dashboards (issue 17, "Telemetry, dashboards, runbooks"): the Grafana dashboard parses and asks only for
metrics a real server exports, and the alert rules pass `promtool check rules` and their own `promtool test rules`
(thresholds on made-up series). promtool comes with Debian's `prometheus` package (.ci/run installs it); without it
the promtool tests skip, except under CI=true, where a missing promtool fails them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from server_fixtures import init_ledger, serving

DASHBOARDS = Path(__file__).resolve().parent.parent / "docs" / "dashboards"
DASHBOARD = DASHBOARDS / "airgap-orch.json"
RULES = DASHBOARDS / "alerts.yml"
RULE_TESTS = DASHBOARDS / "alerts.test.yml"

# What a PromQL expression names that is not a metric.
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "rate", "irate", "increase", "delta", "histogram_quantile", "label_values", "offset", "bool", "topk",
    "bottomk", "abs", "clamp_min", "clamp_max", "time", "vector", "scalar", "absent",
}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values() query) reads."""
    rest = _GROUPING.sub(" ", _RANGES.sub(" ", _MATCHERS.sub(" ", _STRINGS.sub(" ", expression))))
    rest = re.sub(r"\$\w+", " ", rest)  # dashboard variables
    names = set()
    for match in _NAME.finditer(rest):
        word = match.group()
        if word in _PROMQL_WORDS or rest[match.end():].lstrip().startswith("("):
            continue
        if re.fullmatch(r"\d+[smhdwy]?", word) or re.fullmatch(r"e\d*", word):
            continue
        names.add(word)
    # label_values(metric, label): the second argument is a label, not a metric
    for label in re.findall(r"label_values\(\s*[a-zA-Z_:][\w:]*\s*(?:\{[^}]*\})?\s*,\s*(\w+)\s*\)", expression):
        names.discard(label)
    return names


def dashboard_expressions(dashboard: dict) -> list[str]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            query = node.get("query")
            if node.get("type") == "query" and isinstance(query, dict | str):
                found.append(query["query"] if isinstance(query, dict) else query)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    return found


def family_of(sample_name: str, exported: set[str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if sample_name.endswith(suffix) and sample_name.removesuffix(suffix) in exported:
            return sample_name.removesuffix(suffix)
    return sample_name


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """The metric families (# TYPE lines) a real server's site-wide /metrics names."""
    ledger = init_ledger(tmp_path_factory.mktemp("dashboards") / "ledger.duckdb")
    with serving(ledger, "--no-auth") as server:
        response = server.request("GET", "/metrics")
    assert response.status == 200, response
    return {line.split()[2] for line in response.body.decode().splitlines() if line.startswith("# TYPE ")}


def test_metric_names_are_read_out_of_promql():
    assert metric_names('histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{route!~"a|b"}[5m]))) > 0.5') == {
        "x_bucket"}
    assert metric_names("label_values(airgap_orch_queue_depth, tenant)") == {"airgap_orch_queue_depth"}
    assert metric_names("rate(a_sum[5m]) / rate(a_count[5m])") == {"a_sum", "a_count"}
    assert metric_names("a > 0.8 * b") == {"a", "b"}


def test_the_dashboard_parses_and_names_only_metrics_the_server_exports(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) >= 15, expressions
    used = {family_of(name, exported) for expression in expressions for name in metric_names(expression)}
    assert used - exported == set(), f"the dashboard reads metrics /metrics does not export: {used - exported}"
    # Every kind of series the issue names is on it.
    for wanted in ("airgap_orch_queue_depth", "airgap_orch_queue_oldest_age_seconds", "airgap_orch_claims_total",
                   "airgap_orch_acks_total", "airgap_orch_failures_total", "airgap_orch_dead_letters_total",
                   "airgap_orch_lease_expirations_total", "airgap_orch_throttles_total",
                   "airgap_orch_http_request_duration_seconds", "airgap_orch_group_commit_requests",
                   "airgap_staleness_seconds", "airgap_drift_seconds"):
        assert wanted in used, wanted
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_alert_rules_name_only_metrics_the_server_exports(exported):
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    used = {family_of(name, exported) for rule in rules for name in metric_names(rule["expr"])}
    assert used and used - exported == set(), used - exported
    for rule in rules:
        runbook = rule["annotations"].get("runbook")
        assert runbook and (DASHBOARDS.parent.parent / runbook).is_file(), rule["alert"]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package, which provides it")
        pytest.skip("promtool not installed (apt-get install prometheus); CI installs it")
    return found


def test_the_alert_rules_pass_promtool_check_rules():
    checked = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_the_alert_thresholds_fire_as_documented_under_promtool_test_rules():
    tested = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                            timeout=60, cwd=DASHBOARDS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
