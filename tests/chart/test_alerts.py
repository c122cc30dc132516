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
RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"
ALERTS = ["KekeeperOperatorAbsent", "KekeeperKmsUnavailable", "KekeeperRotationOverdue",
          "KekeeperHistoricalKeysAtRisk", "KekeeperKeyPairMissing", "KekeeperKeyPairIntegrity",
          "KekeeperKeyPairsQuarantined", "KekeeperKeyStoreNotSynced", "KekeeperRewrapFailed",
          "KekeeperReconcileErrors",
          "KekeeperNotReady"]
DEFAULT_RUNBOOKS = "https://github.com/kekeeper/kekeeper/blob/main/docs/runbooks.md"


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
        if rule["alert"] == "KekeeperOperatorAbsent":
            # Prometheus's own series for the scrape: no kekeeper metric can say it is gone.
            assert rule["expr"] == 'absent(up{job="kekeeper", namespace="kekeeper-system"} == 1)'
            continue
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


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook page's second-level headings."""
    headings = re.findall(r"^## (.+)$", RUNBOOKS.read_text(), flags=re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_has_a_runbook_section(renders):
    anchors = runbook_anchors()
    for rule in rule_groups(renders["monitoring"])[0]["rules"]:
        url = rule["annotations"]["runbook_url"]
        base, anchor = url.split("#")
        assert base == DEFAULT_RUNBOOKS, url
        assert anchor == rule["alert"].lower(), url
        assert anchor in anchors, f"docs/runbooks.md has no section {rule['alert']}"
    # and no section for an alert that does not exist
    assert {a for a in anchors if a.startswith("kekeeper")} == {a.lower() for a in ALERTS}


def test_runbook_sections_say_what_it_means_what_to_check_and_the_commands():
    text = RUNBOOKS.read_text()
    for alert in ALERTS:
        section = text.split(f"\n## {alert}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**What it means.**", "**What to check.**", "```sh"):
            assert part in section, f"{alert}: no {part}"


def test_runbook_base_and_operator_selector_are_values(chart):
    docs = render_docs(chart, {"prometheusRule": {
        "enabled": True, "runbookUrl": "https://wiki.example.com/kekeeper/runbooks",
        "operatorSelector": 'job="kekeeper-operator"', "operatorAbsentFor": "3m",
        "keyStoreNotSyncedFor": "2h"}})
    by_name = {r["alert"]: r for r in rule_groups(docs)[0]["rules"]}
    assert by_name["KekeeperNotReady"]["annotations"]["runbook_url"] == \
        "https://wiki.example.com/kekeeper/runbooks#kekeepernotready"
    absent = by_name["KekeeperOperatorAbsent"]
    assert absent["expr"] == 'absent(up{job="kekeeper-operator"} == 1)'
    assert absent["for"] == "3m"
    assert by_name["KekeeperKeyStoreNotSynced"]["for"] == "2h"
    # nameOverride changes the ServiceMonitor's job label, and so the default selector
    docs = render_docs(chart, {"nameOverride": "kk", "prometheusRule": {"enabled": True}},
                       namespace="keys")
    absent = {r["alert"]: r for r in rule_groups(docs)[0]["rules"]}["KekeeperOperatorAbsent"]
    assert absent["expr"] == 'absent(up{job="kk", namespace="keys"} == 1)'


def test_servicemonitor_keeps_the_resources_namespace_label(renders):
    endpoint = one(renders["monitoring"], "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["honorLabels"] is True


@pytest.mark.parametrize("values,needle", [
    ({"prometheusRule": {"enabled": "yes"}}, "enabled"),
    ({"prometheusRule": {"kmsUnavailableFor": "a while"}}, "kmsUnavailableFor"),
    ({"prometheusRule": {"alertLabels": {"team": 1}}}, "team"),
    ({"prometheusRule": {"severity": "page"}}, "additional propert"),
    ({"prometheusRule": {"runbookUrl": "wiki/runbooks#x"}}, "runbookUrl"),
    ({"prometheusRule": {"operatorAbsentFor": "soon"}}, "operatorAbsentFor"),
])
def test_schema_rejects(chart, values, needle):
    from helm_python.errors import HelmValuesError
    with pytest.raises(HelmValuesError) as err:
        chart.render(values, name="kekeeper", namespace=NAMESPACE)
    assert needle in str(err.value), str(err.value)


def test_operator_absent_reads_the_job_the_servicemonitor_gives(renders):
    """Prometheus Operator names the job after the Service's label that jobLabel names."""
    docs = renders["monitoring"]
    monitor = one(docs, "ServiceMonitor")
    service = [d for d in find(docs, "Service") if d["metadata"]["name"].endswith("-metrics")][0]
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    absent = {r["alert"]: r for r in rule_groups(docs)[0]["rules"]}["KekeeperOperatorAbsent"]
    assert f'job="{job}", namespace="{NAMESPACE}"' in absent["expr"]
