"""The optional PrometheusRule: promtool checks the rendered rules and runs the unit tests in
tests/chart/alerts/ against synthetic series (Debian's prometheus package provides promtool;
scripts/chart-test.sh installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import KEKEEPER_METRICS, NAMESPACE, find, one, render_docs

ALERTS_DIR = Path(__file__).parent / "alerts"
ALERTS = ["KekeeperKmsUnavailable", "KekeeperRotationOverdue", "KekeeperHistoricalKeysAtRisk",
          "KekeeperKeyPairIntegrity", "KekeeperReconcileErrors", "KekeeperNotReady"]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert shutil.which("promtool"), "promtool missing: run scripts/chart-test.sh"
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def rule_groups(docs) -> list[dict]:
    return one(docs, "PrometheusRule")["spec"]["groups"]


def write_rules(tmp_path: Path, docs) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups(docs)}, sort_keys=False))
    return path


def test_off_by_default(renders):
    for case in ("default", "namespaced", "ha", "servicemonitor"):
        assert find(renders[case], "PrometheusRule") == [], case


def test_rendered_rules_pass_promtool_check(renders, tmp_path):
    for case in ("monitoring", "everything"):
        rules = write_rules(tmp_path, renders[case])
        check = promtool("check", "rules", str(rules), cwd=tmp_path)
        assert check.returncode == 0, f"{case}: {check.stdout}{check.stderr}"
        assert f"SUCCESS: {len(ALERTS)} rules found" in check.stdout, check.stdout


def test_alerts_fire_on_synthetic_series(chart, tmp_path):
    docs = render_docs(chart, {"prometheusRule": {"enabled": True,
                                                  "alertLabels": {"team": "key-custody"}}})
    write_rules(tmp_path, docs)
    shutil.copy(ALERTS_DIR / "kekeeper_test.yaml", tmp_path)
    run = promtool("test", "rules", "kekeeper_test.yaml", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_unit_tests_cover_every_alert():
    tests = yaml.safe_load((ALERTS_DIR / "kekeeper_test.yaml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert tested == set(ALERTS)


def test_alert_names_and_metrics(renders):
    rules = rule_groups(renders["monitoring"])[0]["rules"]
    assert [r["alert"] for r in rules] == ALERTS
    for rule in rules:
        used = set(re.findall(r"\bkekeeper_[a-z_]+", rule["expr"]))
        assert used and used <= KEKEEPER_METRICS, (rule["alert"], used - KEKEEPER_METRICS)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_values_reach_the_rule(renders):
    default = one(renders["monitoring"], "PrometheusRule")
    assert default["metadata"]["namespace"] == NAMESPACE
    by_name = {r["alert"]: r for r in default["spec"]["groups"][0]["rules"]}
    assert by_name["KekeeperKmsUnavailable"]["for"] == "15m"
    assert by_name["KekeeperNotReady"]["for"] == "15m"

    rule = one(renders["everything"], "PrometheusRule")
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "prom"
    by_name = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert by_name["KekeeperKmsUnavailable"]["for"] == "30m"
    assert by_name["KekeeperNotReady"]["for"] == "1h"
    assert all(r["labels"]["team"] == "key-custody" for r in by_name.values())


def test_servicemonitor_keeps_the_resources_namespace_label(renders):
    endpoint = one(renders["monitoring"], "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["honorLabels"] is True


@pytest.mark.parametrize("values,needle", [
    ({"prometheusRule": {"enabled": "yes"}}, "enabled"),
    ({"prometheusRule": {"kmsUnavailableFor": "a while"}}, "kmsUnavailableFor"),
    ({"prometheusRule": {"alertLabels": {"team": 1}}}, "team"),
    ({"prometheusRule": {"severity": "page"}}, "additional propert"),
])
def test_schema_rejects(chart, values, needle):
    from helm_python.errors import HelmValuesError
    with pytest.raises(HelmValuesError) as err:
        chart.render(values, name="kekeeper", namespace=NAMESPACE)
    assert needle in str(err.value), str(err.value)
