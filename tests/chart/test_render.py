"""Every case renders and lints cleanly, and every object is well-formed."""

from __future__ import annotations

import re

import pytest
import yaml
from helm_python.chart import lint

from conftest import CASES, CHART_DIR, NAMESPACE, RENDERS_DIR, find, one, render_docs, strip

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - the script installs it
    kubernetes_validate = None

# Kubernetes version the operator targets (k8s-openapi feature v1_33).
KUBE_VERSION = "1.33"

# kind -> apiVersion the chart must use.
EXPECTED_API = {
    "ServiceAccount": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "PodDisruptionBudget": "policy/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "CustomResourceDefinition": "apiextensions.k8s.io/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ConfigMap": "v1",
    "ValidatingAdmissionPolicy": "admissionregistration.k8s.io/v1",
    "ValidatingAdmissionPolicyBinding": "admissionregistration.k8s.io/v1",
    "Pod": "v1",
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
STANDARD_LABELS = {
    "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by", "helm.sh/chart",
}


def kinds(docs):
    return sorted(d["kind"] for d in docs)


@pytest.mark.parametrize("case", CASES)
def test_lint_has_no_errors_or_warnings(case):
    report = lint(CHART_DIR, CASES[case] or None, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(case):
    report = lint(CHART_DIR, CASES[case] or None, namespace=NAMESPACE, strict=True,
                  kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == [], report


@pytest.mark.parametrize("case", CASES)
def test_every_document_is_well_formed(renders, case):
    docs = renders[case]
    assert docs, "nothing rendered"
    seen = set()
    for doc in docs:
        where = f"{doc['__source__']}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], where
        assert isinstance(doc.get("kind"), str) and doc["kind"], where
        meta = doc.get("metadata")
        assert isinstance(meta, dict) and isinstance(meta.get("name"), str), where
        assert doc["kind"] in EXPECTED_API, f"unexpected kind {where}"
        assert doc["apiVersion"] == EXPECTED_API[doc["kind"]], where
        assert DNS1123_SUBDOMAIN.match(meta["name"]) and len(meta["name"]) <= 253, where
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, where
        else:
            assert meta.get("namespace"), f"namespaced object without namespace: {where}"
        assert STANDARD_LABELS <= set(meta.get("labels", {})), where
        key = (doc["apiVersion"], doc["kind"], meta.get("namespace"), meta["name"])
        assert key not in seen, f"duplicate object {key}"
        seen.add(key)


@pytest.mark.skipif(kubernetes_validate is None, reason="kubernetes-validate not installed")
@pytest.mark.parametrize("case", CASES)
def test_builtin_kinds_match_kubernetes_openapi_schema(renders, case):
    """Strict validation (unknown fields rejected) against the Kubernetes 1.33 OpenAPI schemas."""
    checked = 0
    for doc in renders[case]:
        if doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
            continue  # not built-in kinds; checked in test_servicemonitor_shape / test_alerts.py
        kubernetes_validate.validate(strip(doc), KUBE_VERSION, strict=True)
        checked += 1
    assert checked >= 5


def test_expected_objects_per_case(renders):
    # The leader-election Role and RoleBinding are there by default, and so are the user roles
    # <fullname>-edit and -view (two ClusterRoles).
    user_roles = ["ClusterRole", "ClusterRole"]
    # The admission policy and its binding, and the `helm test` Pod, are there by default too.
    admission_and_test = ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "Pod"]
    base = ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment",
            "Service", "ServiceAccount", "Role", "RoleBinding"] + user_roles + admission_and_test
    assert kinds(renders["default"]) == sorted(base)
    assert kinds(renders["namespaced"]) == sorted(
        ["CustomResourceDefinition", "Deployment", "Service", "ServiceAccount"]
        + ["Role", "RoleBinding"] * 3 + user_roles + admission_and_test)
    assert kinds(renders["ha"]) == sorted(base + ["PodDisruptionBudget"])
    assert kinds(renders["no-crds"]) == sorted(k for k in base if k != "CustomResourceDefinition")
    assert kinds(renders["servicemonitor"]) == sorted(base + ["ServiceMonitor"])
    assert kinds(renders["networkpolicy"]) == sorted(base + ["NetworkPolicy"])
    assert kinds(renders["monitoring"]) == sorted(base + ["ConfigMap", "PrometheusRule",
                                                          "ServiceMonitor"])


def test_renders_are_emitted_for_the_rust_side(renders):
    for case in CASES:
        path = RENDERS_DIR / f"{case}.yaml"
        assert path.is_file(), path
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs == [strip(d) for d in renders[case]]
        assert all("__source__" not in d for d in docs)


def test_labels_are_consistent_between_service_pods_and_selectors(renders):
    docs = renders["everything"]
    dep = one(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}

    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] == 1

    np = one(docs, "NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()


def test_servicemonitor_shape(renders):
    docs = renders["servicemonitor"]
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    assert sm["metadata"]["namespace"] == NAMESPACE
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s" and endpoint["scrapeTimeout"] == "10s"
    assert one(renders["everything"], "ServiceMonitor")["metadata"]["labels"]["release"] == "prom"


def test_networkpolicy_allows_only_metrics_ingress_and_leaves_egress_open(renders):
    np = one(renders["networkpolicy"], "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in np["spec"]
    (rule,) = np["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]

    restricted = one(renders["everything"], "NetworkPolicy")
    assert restricted["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert restricted["spec"]["egress"] == CASES["everything"]["networkPolicy"]["egress"]


def test_service_exposes_metrics(renders):
    svc = one(renders["default"], "Service")
    assert svc["metadata"]["name"] == "kekeeper-metrics"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]


def test_no_pdb_for_a_single_replica(renders):
    assert find(renders["default"], "PodDisruptionBudget") == []
    pdb = one(renders["ha"], "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1


def test_serviceaccount_irsa_annotation(renders):
    sa = one(renders["everything"], "ServiceAccount")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/kekeeper"}
    assert sa["automountServiceAccountToken"] is True
    assert "annotations" not in one(renders["default"], "ServiceAccount")["metadata"]


def test_existing_serviceaccount(chart):
    docs = render_docs(chart, {"serviceAccount": {"create": False, "name": "ops-sa"}})
    assert find(docs, "ServiceAccount") == []
    dep = one(docs, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "ops-sa"


def test_existing_serviceaccount_requires_a_name(chart):
    with pytest.raises(Exception, match="serviceAccount.name is required"):
        chart.render({"serviceAccount": {"create": False}}, name="kekeeper", namespace=NAMESPACE)


@pytest.mark.parametrize("release,expected", [
    ("kekeeper", "kekeeper"), ("prod", "prod-kekeeper"), ("my-kekeeper", "my-kekeeper")])
def test_object_names_follow_the_release(chart, release, expected):
    docs = render_docs(chart, {}, name=release)
    assert one(docs, "Deployment")["metadata"]["name"] == expected
    assert one(docs, "ClusterRole", expected)["metadata"]["name"] == expected
    assert {d["metadata"]["name"] for d in find(docs, "ClusterRole")} == {
        expected, f"{expected}-edit", f"{expected}-view"}
