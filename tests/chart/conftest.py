"""Render tests for charts/kekeeper with the real Helm v4 engine (helm-python-sdk).

Every render case is also written to target/chart-renders/<case>.yaml (multi-document YAML,
NOTES.txt left out) so that a Rust test can deserialise each object into its k8s-openapi type.
Override the directory with KEKEEPER_CHART_RENDERS_DIR.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_python.chart import Chart

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "kekeeper"
RELEASE = "kekeeper"
NAMESPACE = "kekeeper-system"
RENDERS_DIR = Path(os.environ.get("KEKEEPER_CHART_RENDERS_DIR", REPO / "target" / "chart-renders"))

# The render cases the brief asks for, plus one with every optional knob set.
CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "key-store": {"keyStore": {"url": "s3://acme-kekeeper/prod-eu"},
                  "aws": {"s3Endpoint": "https://s3.eu-west-1.amazonaws.com"}},
    "ha": {"replicaCount": 3},
    "no-crds": {"crds": {"install": False}},
    "servicemonitor": {"metrics": {"serviceMonitor": {"enabled": True}}},
    "networkpolicy": {"networkPolicy": {"enabled": True}},
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True}},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
    "everything": {
        "replicaCount": 2,
        "watchNamespaces": ["team-a"],
        "pruneRetiredKeyPairs": True,
        "leaderElection": {"leaseName": "kekeeper-leader"},
        "image": {"tag": "0.1.0-rc1", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "aws": {"region": "eu-west-1", "kmsEndpoint": "https://kms.eu-west-1.amazonaws.com"},
        "kmsKeyPairRate": 0.5,
        "kmsKeyCheckInterval": "30m",
        "log": {"level": "info,kekeeper=debug", "format": "json"},
        "serviceAccount": {
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/kekeeper"}
        },
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "prometheusRule": {"enabled": True, "namespace": "monitoring", "labels": {"release": "prom"},
                           "alertLabels": {"team": "key-custody"}, "kmsUnavailableFor": "30m",
                           "notReadyFor": "1h"},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                             "annotations": {"grafana_folder": "Security"}},
        "networkPolicy": {
            "enabled": True,
            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 443, "protocol": "TCP"}]}],
        },
        "extraEnv": [{"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}],
        "extraArgs": ["--some-future-flag"],
        "podAnnotations": {"example.com/a": "b"},
        "podLabels": {"team": "platform"},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "kekeeper"}},
                        },
                    }
                ]
            }
        },
    },
}


@pytest.fixture(scope="session")
def chart():
    with Chart.load(CHART_DIR) as c:
        yield c


def render_docs(chart: Chart, values: dict[str, Any] | None, *, name: str = RELEASE,
                namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Render with Helm and parse every non-empty YAML document (NOTES.txt excluded)."""
    out = chart.render(values, name=name, namespace=namespace)
    docs: list[dict[str, Any]] = []
    for path in sorted(out):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(out[path]):
            if doc is not None:
                doc.setdefault("__source__", path)  # removed again before emitting
                docs.append(doc)
    return docs


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__source__"}


@pytest.fixture(scope="session")
def renders(chart) -> dict[str, list[dict[str, Any]]]:
    """All cases rendered once; also written to target/chart-renders/<case>.yaml."""
    result = {case: render_docs(chart, values) for case, values in CASES.items()}
    RENDERS_DIR.mkdir(parents=True, exist_ok=True)
    for case, docs in result.items():
        text = yaml.safe_dump_all([strip(d) for d in docs], sort_keys=False)
        (RENDERS_DIR / f"{case}.yaml").write_text(text)
    return result


def find(docs, kind, name=None, namespace=None):
    hits = [d for d in docs if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]
    return hits


def one(docs, kind, name=None, namespace=None):
    hits = find(docs, kind, name, namespace)
    assert len(hits) == 1, f"expected one {kind} {name or ''} {namespace or ''}, got {len(hits)}"
    return hits[0]


# The metrics the operator exports on /metrics, the only names the chart's alerts and dashboard
# may query: the table under "## Metrics" in docs/operations.md (a unit test in src/metrics.rs
# fails when the operator exports a name that table does not list).
def _documented_metrics() -> set[str]:
    import re
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(kekeeper_[a-z_]+)` \|", section, flags=re.M))


KEKEEPER_METRICS = _documented_metrics()
assert len(KEKEEPER_METRICS) >= 13, KEKEEPER_METRICS
