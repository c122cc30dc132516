"""The optional Grafana dashboard ConfigMap: valid JSON, labelled for the Grafana sidecar, every
query names only metrics the operator exports, and every query parses as PromQL (promtool)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import CHART_DIR, KEKEEPER_METRICS, NAMESPACE, find, one

DASHBOARD_FILE = CHART_DIR / "files" / "dashboards" / "kekeeper.json"


def dashboard(docs) -> dict:
    cm = one(docs, "ConfigMap", "kekeeper-dashboard")
    return json.loads(cm["data"]["kekeeper.json"])


def queries(board: dict) -> list[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_off_by_default(renders):
    for case in ("default", "namespaced", "ha", "servicemonitor"):
        assert find(renders[case], "ConfigMap") == [], case


def test_configmap_is_labelled_for_the_sidecar(renders):
    cm = one(renders["monitoring"], "ConfigMap", "kekeeper-dashboard")
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    cm = one(renders["everything"], "ConfigMap", "kekeeper-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Security"}


def test_configmap_holds_the_file_unchanged(renders):
    assert dashboard(renders["monitoring"]) == json.loads(DASHBOARD_FILE.read_text())


def test_dashboard_shape(renders):
    board = dashboard(renders["monitoring"])
    assert board["uid"] == "kekeeper" and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in board["panels"]:
        assert panel["title"] and panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    names = {v["name"] for v in board["templating"]["list"]}
    assert names == {"datasource", "namespace", "config"}


def test_queries_use_only_exported_metrics(renders):
    used = set()
    for expr in queries(dashboard(renders["monitoring"])):
        names = set(re.findall(r"\bkekeeper_[a-z_]+", expr))
        assert names, expr
        used |= names
    assert used <= KEKEEPER_METRICS, used - KEKEEPER_METRICS
    # The dashboard shows what a key-custody team asks about: all of it but the ready count.
    assert used == KEKEEPER_METRICS


def test_queries_parse_as_promql(renders, tmp_path):
    """promtool parses each panel query as a recording rule; Grafana's variables are replaced
    by what Grafana would put there."""
    assert shutil.which("promtool"), "promtool missing: run scripts/chart-test.sh"
    board = dashboard(renders["monitoring"])
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    substituted = [e.replace("$__rate_interval", "5m").replace("$namespace", ".*")
                   .replace("$config", ".*") for e in exprs]
    assert not any("$" in e for e in substituted), substituted
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(substituted)]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("values,needle", [
    ({"grafanaDashboard": {"enabled": 1}}, "enabled"),
    ({"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}}, "grafana_dashboard"),
    ({"grafanaDashboard": {"folder": "x"}}, "additional propert"),
])
def test_schema_rejects(chart, values, needle):
    from helm_python.errors import HelmValuesError
    with pytest.raises(HelmValuesError) as err:
        chart.render(values, name="kekeeper", namespace=NAMESPACE)
    assert needle in str(err.value), str(err.value)
