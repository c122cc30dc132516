"""helm install / upgrade / uninstall of the real chart, with the real Helm v4 engine
(helm-python-sdk), into an API server: what Helm does to the API (the objects as rendered, the
values schema, upgrades, the kept CRD).

KEKEEPER_TEST_CLUSTER chooses the server (docs/testing.md):
- `sim` (the default): a kube-sim per test (tests/kube-sim, built and started here, stopped
  after each test). It stores what Helm sends and runs no controllers.
- `real`: the running control plane of scripts/control-plane.sh (KUBECONFIG, its admin
  kubeconfig). It defaults fields, serves a new CRD a moment after it is created and garbage
  collects; the tests share it, so each test uninstalls and deletes its CRDs and namespaces
  when it ends. scripts/test.sh gives these tests a control plane of their own, because Helm
  must own the cluster-scoped CRD that every other end-to-end test applies itself.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from helm_python.chart import Chart
from helm_python.errors import HelmError

from conftest import CASES, CHART_DIR, NAMESPACE, RELEASE, REPO
import kube_sim

CRD_NAME = "recordingkeyconfigs.kekeeper.io"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/kekeeper"
PDB = f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets/kekeeper"
RKC = "/apis/kekeeper.io/v1alpha1/namespaces/default/recordingkeyconfigs/recordings"
EXAMPLE_RKC = yaml.safe_load((REPO / "examples" / "recordingkeyconfig.yaml").read_text())

# The Prometheus Operator CRDs the optional templates need, reduced to what the API server
# checks: names, scope and a schema that keeps every field.
MONITORING_CRDS = [
    {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
     "metadata": {"name": f"{plural}.monitoring.coreos.com"},
     "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
              "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                        "listKind": f"{kind}List"},
              "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                  "openAPIV3Schema": {"type": "object", "properties": {"spec": {
                      "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}
    for kind, plural in [("ServiceMonitor", "servicemonitors"),
                         ("PrometheusRule", "prometheusrules")]
]


REAL = os.environ.get("KEKEEPER_TEST_CLUSTER", "sim") == "real"
CLUSTER_ROLES = ["/apis/rbac.authorization.k8s.io/v1/clusterroles",
                 "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                 "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
                 "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"]


@pytest.fixture(scope="module")
def kube_sim_binary():
    return None if REAL else kube_sim.build()


@pytest.fixture
def sim(kube_sim_binary, tmp_path):
    if not REAL:
        running = kube_sim.KubeSim(kube_sim_binary, tmp_path)
        yield running
        running.stop()
        return
    cluster = kube_sim.RealCluster(Path(os.environ["KUBECONFIG"]), tmp_path)
    yield cluster
    cluster.reset(leftovers(cluster))


def leftovers(cluster) -> list[str]:
    """What a test may leave on the shared server outside namespaces: the CRDs, and the
    release's cluster roles and bindings (uninstalled already unless the test failed)."""
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    paths = [f"{crds}/{name}" for name in
             [CRD_NAME] + [crd["metadata"]["name"] for crd in MONITORING_CRDS]]
    for path in CLUSTER_ROLES:
        for item in cluster.get(path)["items"]:
            annotations = item["metadata"].get("annotations") or {}
            if annotations.get("meta.helm.sh/release-name") == RELEASE:
                paths.append(f"{path}/{item['metadata']['name']}")
    return paths


@pytest.fixture
def helm(sim):
    cfg = helm_python.Config(kubeconfig_path=str(sim.kubeconfig), namespace=NAMESPACE)
    yield cfg
    if REAL and any(r["name"] == RELEASE for r in cfg.list()):
        cfg.uninstall(RELEASE)
    cfg.close()


@pytest.fixture(scope="module")
def chart_obj():
    with Chart.load(CHART_DIR) as c:
        yield c


def install(helm, chart_obj, values: dict[str, Any] | None = None) -> dict[str, Any]:
    return helm.install(chart_obj, RELEASE, values or {}, create_namespace=True)


def manifest_docs(release: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(release["manifest"]) if d]


def assert_stored_as_rendered(sim, docs: list[dict[str, Any]]) -> None:
    """Every rendered object exists with its rendered content (on kube-sim exactly, which does
    no defaulting; on a real server every rendered field, next to the fields it defaults), its
    rendered labels and annotations, and Helm's ownership annotations."""
    assert docs, "nothing rendered"
    for doc in docs:
        stored = sim.get(kube_sim.object_path(doc, NAMESPACE))
        what = f"{doc['kind']} {doc['metadata']['name']}"
        assert stored is not None, f"{what} was not created"
        for key, value in doc.items():
            if key not in ("metadata", "status"):
                if REAL:
                    assert_rendered_in(value, stored[key], f"{what}: {key}")
                else:
                    assert stored[key] == value, f"{what}: {key} differs from the render"
        meta = stored["metadata"]
        for field in ("labels", "annotations"):
            rendered = doc["metadata"].get(field) or {}
            assert rendered.items() <= (meta.get(field) or {}).items(), f"{what}: {field}"
        assert meta["annotations"]["meta.helm.sh/release-name"] == RELEASE, what
        assert meta["annotations"]["meta.helm.sh/release-namespace"] == NAMESPACE, what


def assert_rendered_in(rendered: Any, stored: Any, where: str) -> None:
    """`rendered` is part of `stored`: maps may hold more keys (server defaults), lists hold
    the same number of items, each item rendered in its stored counterpart."""
    if isinstance(rendered, dict):
        assert isinstance(stored, dict), f"{where}: {stored!r} is not a map"
        for key, value in rendered.items():
            assert key in stored, f"{where}.{key} missing"
            assert_rendered_in(value, stored[key], f"{where}.{key}")
    elif isinstance(rendered, list):
        assert isinstance(stored, list) and len(stored) == len(rendered), \
            f"{where}: {stored!r} differs from the render {rendered!r}"
        for i, (r, s) in enumerate(zip(rendered, stored)):
            assert_rendered_in(r, s, f"{where}[{i}]")
    else:
        assert stored == rendered, f"{where}: stored {stored!r}, rendered {rendered!r}"


def container(sim) -> dict[str, Any]:
    return sim.get(DEPLOYMENT)["spec"]["template"]["spec"]["containers"][0]


def test_install_creates_the_rendered_objects(sim, helm, chart_obj):
    release = install(helm, chart_obj)
    assert release["status"] == "deployed" and release["revision"] == 1
    docs = manifest_docs(release)
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
            "Service", "Deployment"} <= kinds, kinds
    assert_stored_as_rendered(sim, docs)
    crd = sim.get(CRD_PATH)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    binding = sim.get("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kekeeper")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kekeeper", "namespace": NAMESPACE}]
    # The CRD is served: a RecordingKeyConfig can be created once it is Established (a real
    # server serves a new CRD a moment after it is created).
    sim.wait_established(CRD_NAME)
    sim.create("/apis/kekeeper.io/v1alpha1/namespaces/default/recordingkeyconfigs", EXAMPLE_RKC)
    # Helm keeps the release in a Secret of the release namespace.
    secret = sim.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/sh.helm.release.v1.{RELEASE}.v1")
    assert secret["type"] == "helm.sh/release.v1"


def test_every_optional_object_installs_as_rendered(sim, helm, chart_obj):
    for crd in MONITORING_CRDS:
        sim.create_crd(crd)
    values = copy.deepcopy(CASES["everything"])
    namespaces = set(values["watchNamespaces"])
    namespaces |= {values[k]["namespace"] for k in ("prometheusRule", "grafanaDashboard")}
    for ns in sorted(namespaces):
        sim.create("/api/v1/namespaces", {"metadata": {"name": ns}})
    release = install(helm, chart_obj, values)
    docs = manifest_docs(release)
    kinds = {d["kind"] for d in docs}
    assert {"PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "Role",
            "RoleBinding"} <= kinds, kinds
    assert_stored_as_rendered(sim, docs)


def test_upgrade_to_two_replicas_adds_a_pdb_and_keeps_leader_election(sim, helm, chart_obj):
    install(helm, chart_obj)
    assert sim.get(PDB) is None
    # Leader election is on by default, whatever the replica count.
    assert "--leader-elect" in container(sim)["args"]

    release = helm.upgrade(chart_obj, RELEASE, {"replicaCount": 2})
    assert release["revision"] == 2
    assert_stored_as_rendered(sim, manifest_docs(release))
    deployment = sim.get(DEPLOYMENT)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["generation"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    args = container(sim)["args"]
    assert "--leader-elect" in args
    assert f"--lease-namespace={NAMESPACE}" in args
    assert sim.get(PDB)["spec"]["minAvailable"] == 1

    # Back to one replica: Helm deletes the PDB it no longer renders.
    release = helm.upgrade(chart_obj, RELEASE, {"replicaCount": 1})
    assert release["revision"] == 3
    assert sim.get(PDB) is None
    assert "--leader-elect" in container(sim)["args"]
    assert sim.get(DEPLOYMENT)["spec"]["strategy"]["type"] == "RollingUpdate"

    # Leader election off (one replica only): Recreate, so two pods never reconcile at once.
    release = helm.upgrade(chart_obj, RELEASE, {"replicaCount": 1,
                                                "leaderElection": {"enabled": False}})
    assert "--leader-elect" not in container(sim)["args"]
    strategy = sim.get(DEPLOYMENT)["spec"]["strategy"]
    assert strategy["type"] == "Recreate"
    # The fields Helm applied before are removed (kube-sim leaves the emptied parent map).
    assert not strategy.get("rollingUpdate"), strategy


def test_values_schema_is_enforced_on_install_and_upgrade(sim, helm, chart_obj):
    with pytest.raises(HelmError, match="replicaCount"):
        install(helm, chart_obj, {"replicaCount": "two"})
    assert sim.get(DEPLOYMENT) is None
    assert sim.get(CRD_PATH) is None

    install(helm, chart_obj)
    with pytest.raises(HelmError, match="additional propert"):
        helm.upgrade(chart_obj, RELEASE, {"replicas": 2})
    assert sim.get(DEPLOYMENT)["spec"]["replicas"] == 1
    assert [r["revision"] for r in helm.history(RELEASE)] == [1]


def test_uninstall_keeps_the_crd_and_the_configs(sim, helm, chart_obj):
    docs = manifest_docs(install(helm, chart_obj))
    sim.wait_established(CRD_NAME)
    sim.create("/apis/kekeeper.io/v1alpha1/namespaces/default/recordingkeyconfigs", EXAMPLE_RKC)

    helm.uninstall(RELEASE)
    for doc in docs:
        stored = sim.get(kube_sim.object_path(doc, NAMESPACE))
        if doc["kind"] == "CustomResourceDefinition":
            assert stored is not None, "the CRD must survive helm uninstall"
        else:
            assert stored is None, f"{doc['kind']} {doc['metadata']['name']} left behind"
    assert sim.get(RKC)["spec"]["organizationIds"] == EXAMPLE_RKC["spec"]["organizationIds"]
    assert [r["name"] for r in helm.list()] == []

    # A reinstall adopts the kept CRD (it still carries the release's ownership metadata).
    install(helm, chart_obj)
    assert sim.get(CRD_PATH)["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE


def test_a_crd_applied_before_is_adopted_once_annotated(sim, helm, chart_obj):
    """docs/gitops.md's recipe for a CRD applied from crds/ before the first install."""
    crd = yaml.safe_load((REPO / "crds" / f"{CRD_NAME}.yaml").read_text())
    sim.create_crd(crd)
    with pytest.raises(HelmError, match="invalid ownership metadata"):
        install(helm, chart_obj)

    # kubectl label/annotate as docs/gitops.md says, here as one merge patch.
    patch = {"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": RELEASE,
                        "meta.helm.sh/release-namespace": NAMESPACE}}}
    code, out = sim.request_patch(CRD_PATH, patch)
    assert code == 200, out
    release = install(helm, chart_obj)
    assert release["status"] == "deployed"
    assert sim.get(CRD_PATH)["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
