"""The chart's ValidatingAdmissionPolicy on a real API server (issue 25, "Prevention in the
cluster"): kube-sim runs no admission policy, so this file needs KEKEEPER_TEST_CLUSTER=real
(scripts/test.sh runs it with test_install.py on a control plane of their own).

The chart is installed with Helm; requests are then made as the people and components the
policy tells apart, by impersonation from the admin user (what `kubectl --as/--as-group` sends):
a namespace editor (the built-in `edit` ClusterRole), the operator's ServiceAccount, a member
of a break-glass group, and Kubernetes' namespace controller (deleting the namespace).
"""

from __future__ import annotations

import copy
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from helm_python.chart import Chart

import kube_sim
from conftest import CHART_DIR, NAMESPACE, RELEASE, REPO
from test_install import leftovers

pytestmark = pytest.mark.skipif(
    os.environ.get("KEKEEPER_TEST_CLUSTER", "sim") != "real",
    reason="needs a real API server (kube-sim runs no admission policy): "
           "KEKEEPER_TEST_CLUSTER=real, as scripts/test.sh runs it")

TEAM = "team-a"
OPERATOR = f"system:serviceaccount:{NAMESPACE}:kekeeper"
BREAK_GLASS = "kekeeper-break-glass"
SECRETS = f"/api/v1/namespaces/{TEAM}/secrets"
CONFIGMAPS = f"/api/v1/namespaces/{TEAM}/configmaps"
VALUES = {"admissionPolicy": {"breakGlassGroups": [BREAK_GLASS]},
          # The operator may then delete key-pair Secrets (RBAC); the policy must let it.
          "pruneRetiredKeyPairs": True}


class As(kube_sim.Client):
    """Requests as another user, impersonated by the admin (kubectl --as / --as-group)."""

    def __init__(self, admin: kube_sim.RealCluster, user: str, group: str | None = None):
        self.url, self.tls = admin.url, admin.tls
        self.headers = {"Impersonate-User": user}
        if group:
            self.headers["Impersonate-Group"] = group


def key_pair_secret(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kekeeper.io/key-pair",
            "metadata": {"name": name, "labels": labels if labels is not None else {
                "kekeeper.io/config": "rec", "kekeeper.io/state": "active"}},
            "stringData": {"publicKey.pem": "planted", "privateKey.kms": "junk"}}


def public_keys(name: str = "rec-public-keys") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"3fa85f64-5717-4562-b3fc-2c963f66afa6.pem": "planted"}}


def refused(code: int, out: Any, what: str) -> str:
    assert code == 403, f"{what}: expected 403 from the policy, got {code} {out}"
    message = out["message"]
    assert "kekeeper-key-material" in message, message  # the policy, not RBAC
    return message


@pytest.fixture
def cluster(tmp_path):
    admin = kube_sim.RealCluster(Path(os.environ["KUBECONFIG"]), tmp_path)
    cfg = helm_python.Config(kubeconfig_path=str(admin.kubeconfig), namespace=NAMESPACE)
    with Chart.load(CHART_DIR) as chart:
        cfg.install(chart, RELEASE, copy.deepcopy(VALUES), create_namespace=True)
        admin.create("/api/v1/namespaces", {"metadata": {"name": TEAM}})
        # The built-in `edit` role in the team's namespace: for the editor, and for the
        # break-glass group (which RBAC must allow as well; the policy only adds a refusal).
        for kind, name in (("User", "editor"), ("Group", BREAK_GLASS)):
            admin.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{TEAM}/rolebindings", {
                "metadata": {"name": f"edit-{name}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "edit"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind,
                              "name": name}]})
        yield admin, cfg, chart
    if any(r["name"] == RELEASE for r in cfg.list()):
        cfg.uninstall(RELEASE)
    cfg.close()
    admin.reset(leftovers(admin))


def wait_for_policy(editor: As, enforced: bool, timeout: float = 60) -> None:
    """The API server enforces a new policy (and drops a deleted one) a moment after it is
    written: probe with a dry-run create, which admission judges but nothing stores."""
    deadline = time.monotonic() + timeout
    while True:
        code, out = editor.request("POST", f"{SECRETS}?dryRun=All", key_pair_secret("probe"))
        if (code == 403) == enforced:
            assert code in (201, 403), f"{code} {out}"
            return
        assert time.monotonic() < deadline, f"policy enforced={not enforced} after {timeout} s"
        time.sleep(0.2)


def test_only_the_operator_and_break_glass_write_key_material(cluster):
    admin, cfg, chart = cluster
    editor = As(admin, "editor")
    operator = As(admin, OPERATOR)
    rescuer = As(admin, "alice", BREAK_GLASS)
    wait_for_policy(editor, enforced=True)

    # The policy type-checks without warnings against the Secret and ConfigMap schemas (the
    # controller-manager's validatingadmissionpolicy-status-controller writes the verdict).
    path = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/kekeeper-key-material"
    deadline = time.monotonic() + 60
    while "typeChecking" not in ((policy := admin.get(path)).get("status") or {}):
        assert time.monotonic() < deadline, f"no type check in 60 s: {policy.get('status')}"
        time.sleep(0.2)
    assert policy["status"]["observedGeneration"] == policy["metadata"]["generation"]
    assert not policy["status"]["typeChecking"].get("expressionWarnings"), policy["status"]

    # The editor's planted key pair is refused with the policy's message.
    code, out = editor.request("POST", SECRETS, key_pair_secret("rec-3fa85f64-0002"))
    message = refused(code, out, "editor creates a key-pair Secret")
    assert f"kekeeper: CREATE of the key-pair Secret {TEAM}/rec-3fa85f64-0002 by editor refused" \
        in message, message
    assert f"only the kekeeper operator ({OPERATOR})" in message, message
    assert "`kekeeper restore -f FILE` as a member of the break-glass group " \
           f"{BREAK_GLASS}" in message, message
    # Any Secret labelled kekeeper.io/config, whatever its type.
    opaque = key_pair_secret("rec-opaque")
    opaque["type"] = "Opaque"
    refused(*editor.request("POST", SECRETS, opaque), "editor creates a labelled Opaque Secret")

    # A normal Secret and ConfigMap: the editor's business.
    normal = {"metadata": {"name": "app-credentials"}, "stringData": {"password": "x"}}
    assert editor.request("POST", SECRETS, normal)[0] == 201
    assert editor.request_patch(f"{SECRETS}/app-credentials",
                                {"stringData": {"password": "y"}})[0] == 200
    assert editor.request("DELETE", f"{SECRETS}/app-credentials")[0] == 200
    assert editor.request("POST", CONFIGMAPS, {"metadata": {"name": "settings"}})[0] == 201

    # The operator creates and changes key-pair Secrets and the public-keys ConfigMap.
    assert operator.request("POST", SECRETS, key_pair_secret("rec-3fa85f64-0001"))[0] == 201
    code, out = operator.request_patch(f"{SECRETS}/rec-3fa85f64-0001", {
        "metadata": {"labels": {"kekeeper.io/state": "retired"}}})
    assert code == 200, out
    assert operator.request("POST", CONFIGMAPS, public_keys())[0] == 201
    assert operator.request_patch(f"{CONFIGMAPS}/rec-public-keys",
                                  {"data": {"activeKeyPairs.json": "[]"}})[0] == 200

    # The editor may not change or delete them, nor relabel them out of the policy's sight:
    # an UPDATE is judged by the old object too, a DELETE by the old object alone.
    secret = f"{SECRETS}/rec-3fa85f64-0001"
    refused(*editor.request_patch(secret, {"data": {"publicKey.pem": "cGxhbnRlZA=="}}),
            "editor changes a key-pair Secret")
    refused(*editor.request_patch(secret, {"metadata": {"labels": {"kekeeper.io/config": None}}}),
            "editor removes the kekeeper.io/config label")
    code, out = editor.request("DELETE", secret)
    assert "DELETE of the key-pair Secret" in refused(code, out, "editor deletes a key pair")
    stored = admin.get(secret)
    assert stored["metadata"]["labels"]["kekeeper.io/config"] == "rec"
    assert stored["metadata"]["labels"]["kekeeper.io/state"] == "retired"

    cm = f"{CONFIGMAPS}/rec-public-keys"
    code, out = editor.request("POST", CONFIGMAPS, public_keys("other-public-keys"))
    assert "CREATE of the public-keys ConfigMap" in refused(code, out, "editor creates one")
    refused(*editor.request_patch(cm, {"data": {"x.pem": "planted"}}), "editor changes it")
    refused(*editor.request("DELETE", cm), "editor deletes it")
    # Labelling their own ConfigMap as kekeeper's is a change of key material as well.
    refused(*editor.request_patch(f"{CONFIGMAPS}/settings",
                                  {"metadata": {"labels": {"kekeeper.io/config": "rec"}}}),
            "editor labels a ConfigMap kekeeper.io/config")

    # Break glass: a member of the group restores (creates) and deletes; the operator prunes.
    assert rescuer.request("POST", SECRETS, key_pair_secret("rec-3fa85f64-0003"))[0] == 201
    assert rescuer.request("DELETE", f"{SECRETS}/rec-3fa85f64-0003")[0] == 200
    assert operator.request("DELETE", secret)[0] == 200

    # Deleting the namespace: the namespace controller may delete key material.
    assert operator.request("POST", SECRETS, key_pair_secret("rec-3fa85f64-0004"))[0] == 201
    assert admin.request("DELETE", f"/api/v1/namespaces/{TEAM}")[0] == 200
    deadline = time.monotonic() + 60
    while admin.get(f"/api/v1/namespaces/{TEAM}") is not None:
        assert time.monotonic() < deadline, "namespace with key material not deleted in 60 s"
        time.sleep(0.2)


def test_with_the_policy_off_nothing_is_refused(cluster):
    admin, cfg, chart = cluster
    editor = As(admin, "editor")
    wait_for_policy(editor, enforced=True)
    values = copy.deepcopy(VALUES)
    values["admissionPolicy"]["enabled"] = False
    cfg.upgrade(chart, RELEASE, values)
    assert admin.get("/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/"
                     "kekeeper-key-material") is None
    wait_for_policy(editor, enforced=False)
    assert editor.request("POST", SECRETS, key_pair_secret("rec-3fa85f64-0002"))[0] == 201
    assert editor.request("POST", CONFIGMAPS, public_keys())[0] == 201
    assert editor.request("DELETE", f"{SECRETS}/rec-3fa85f64-0002")[0] == 200


# A valid backup file of one key pair (namespace telephony, config recordings), as
# `kekeeper backup` writes it: the fuzz corpus's seed (fuzz/seed.py). restore calls no KMS.
BACKUP = REPO / "fuzz" / "corpus" / "key_store_object" / "backup"


def kekeeper(*args: str) -> subprocess.CompletedProcess:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "debug" / "kekeeper"
    assert binary.is_file(), f"{binary} is missing: cargo build --bin kekeeper (scripts/test.sh has)"
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent"})


def test_restore_runs_as_break_glass(cluster, tmp_path):
    """docs/disaster-recovery.md, "Restoring through the admission policy": `kekeeper restore
    -f` as a cluster admin is refused with the policy's message; through a kubeconfig whose
    user impersonates a break-glass group member (`as`, `as-groups`) it restores."""
    admin, cfg, chart = cluster
    wait_for_policy(As(admin, "editor"), enforced=True)
    backup = yaml.safe_load(BACKUP.read_text())
    pair = backup["keyPairs"][0]
    namespace, name = pair["namespace"], pair["secretName"]
    admin.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    admin.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", {
        "metadata": {"name": "edit-break-glass"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                      "name": BREAK_GLASS}]})

    # The admin (system:masters) is not exempt: the create is refused, nothing is restored.
    run = kekeeper("restore", "-f", str(BACKUP), "--kubeconfig", str(admin.kubeconfig))
    assert run.returncode == 1, run
    assert "kekeeper-key-material" in run.stderr + run.stdout, run
    assert "as a member of the break-glass group kekeeper-break-glass" in run.stderr + run.stdout
    assert admin.get(f"/api/v1/namespaces/{namespace}/secrets/{name}") is None

    # The documented break-glass context: the same credentials, impersonating the group.
    config = yaml.safe_load(admin.kubeconfig.read_text())
    config["users"][0]["user"].update({"as": "alice", "as-groups": [BREAK_GLASS]})
    break_glass = tmp_path / "break-glass.kubeconfig"
    break_glass.write_text(yaml.safe_dump(config))
    run = kekeeper("restore", "-f", str(BACKUP), "--kubeconfig", str(break_glass))
    assert run.returncode == 0, run
    secret = admin.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
    assert secret["type"] == "kekeeper.io/key-pair"
    assert secret["metadata"]["labels"]["kekeeper.io/config"] == pair["config"]
