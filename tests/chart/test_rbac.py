"""RBAC: exactly the planned rules per scope, no wildcards, bindings wired to the SA."""

from __future__ import annotations

import pytest

from conftest import CASES, NAMESPACE, find, one, render_docs

RKC = {"apiGroups": ["kekeeper.io"], "resources": ["recordingkeyconfigs"],
       "verbs": ["list", "watch"]}
RKC_STATUS = {"apiGroups": ["kekeeper.io"], "resources": ["recordingkeyconfigs/status"],
              "verbs": ["get", "patch"]}
SECRETS = {"apiGroups": [""], "resources": ["secrets"],
           "verbs": ["get", "list", "watch", "create", "patch"]}
SECRETS_PRUNE = {**SECRETS, "verbs": SECRETS["verbs"] + ["delete"]}
CONFIGMAPS = {"apiGroups": [""], "resources": ["configmaps"],
              "verbs": ["list", "watch", "create", "patch"]}
EVENTS = {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
SCOPE_RULES = [RKC, RKC_STATUS, SECRETS, CONFIGMAPS, EVENTS]
SCOPE_RULES_PRUNE = [RKC, RKC_STATUS, SECRETS_PRUNE, CONFIGMAPS, EVENTS]


def lease_rules(name="kekeeper"):
    return [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": [name], "verbs": ["get", "update"]},
    ]


RBAC_KINDS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def rbac(docs):
    return [d for d in docs if d["kind"] in RBAC_KINDS]


def is_user_role(doc):
    return doc["metadata"]["name"].endswith(("-edit", "-view"))


def operator_rbac(docs):
    """The operator's own RBAC: everything but the aggregated user roles (test_user_roles.py)."""
    return [d for d in rbac(docs) if not is_user_role(d)]


@pytest.mark.parametrize("case", CASES)
def test_no_wildcards_anywhere(renders, case):
    for doc in rbac(renders[case]):
        for rule in doc.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                for item in rule.get(field, []):
                    assert "*" not in item, (doc["metadata"]["name"], rule)
            assert "nonResourceURLs" not in rule


def binding_ok(binding, role_kind, role_name, sa="kekeeper"):
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                                  "name": role_name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


LEASE_RBAC = [("Role", "kekeeper-leader-election", NAMESPACE),
              ("RoleBinding", "kekeeper-leader-election", NAMESPACE)]


def kinds_and_namespaces(docs):
    """The operator's own RBAC objects (the user roles are test_user_roles.py's)."""
    return sorted((d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
                  for d in operator_rbac(docs))


def test_cluster_scope(renders):
    docs = renders["default"]
    assert kinds_and_namespaces(docs) == sorted(
        [("ClusterRole", "kekeeper", None), ("ClusterRoleBinding", "kekeeper", None)] + LEASE_RBAC)
    assert one(docs, "ClusterRole", "kekeeper")["rules"] == SCOPE_RULES
    binding_ok(one(docs, "ClusterRoleBinding", "kekeeper"), "ClusterRole", "kekeeper")


def test_namespaced_scope(renders):
    docs = renders["namespaced"]
    assert [d for d in find(docs, "ClusterRole") if not is_user_role(d)] == []
    assert find(docs, "ClusterRoleBinding") == []
    assert kinds_and_namespaces(docs) == sorted([
        ("Role", "kekeeper", "team-a"), ("Role", "kekeeper", "team-b"),
        ("RoleBinding", "kekeeper", "team-a"), ("RoleBinding", "kekeeper", "team-b")] + LEASE_RBAC)
    for ns in ("team-a", "team-b"):
        assert one(docs, "Role", "kekeeper", ns)["rules"] == SCOPE_RULES
        binding_ok(one(docs, "RoleBinding", "kekeeper", ns), "Role", "kekeeper")


@pytest.mark.parametrize("case", CASES)
def test_leader_election_role_lives_in_release_namespace_by_default(renders, case):
    # Leader election is on by default, whatever the replica count: every case has the Lease
    # rules, in the release namespace, bound to the ServiceAccount.
    docs = renders[case]
    lease_name = CASES[case].get("leaderElection", {}).get("leaseName", "kekeeper")
    role = one(docs, "Role", "kekeeper-leader-election", NAMESPACE)
    assert role["rules"] == lease_rules(lease_name)
    binding_ok(one(docs, "RoleBinding", "kekeeper-leader-election", NAMESPACE),
               "Role", "kekeeper-leader-election")
    for doc in rbac(docs):
        if doc["metadata"]["name"] != "kekeeper-leader-election":
            assert all("coordination.k8s.io" not in r["apiGroups"] for r in doc.get("rules", [])), case


def test_no_lease_rules_when_leader_election_is_switched_off(chart):
    docs = render_docs(chart, {"leaderElection": {"enabled": False}})
    assert kinds_and_namespaces(docs) == [("ClusterRole", "kekeeper", None),
                                          ("ClusterRoleBinding", "kekeeper", None)]
    for doc in rbac(docs):
        assert all("coordination.k8s.io" not in r["apiGroups"] for r in doc.get("rules", []))


def test_namespaced_with_leader_election_and_pruning(renders):
    docs = renders["everything"]
    assert kinds_and_namespaces(docs) == [
        ("Role", "kekeeper", "team-a"),
        ("Role", "kekeeper-leader-election", NAMESPACE),
        ("RoleBinding", "kekeeper", "team-a"),
        ("RoleBinding", "kekeeper-leader-election", NAMESPACE),
    ]
    assert one(docs, "Role", "kekeeper", "team-a")["rules"] == SCOPE_RULES_PRUNE
    assert one(docs, "Role", "kekeeper-leader-election", NAMESPACE)["rules"] == lease_rules("kekeeper-leader")


def test_secret_delete_only_with_pruning(chart, renders):
    assert "delete" not in one(renders["default"], "ClusterRole", "kekeeper")["rules"][2]["verbs"]
    docs = render_docs(chart, {"pruneRetiredKeyPairs": True})
    assert one(docs, "ClusterRole", "kekeeper")["rules"] == SCOPE_RULES_PRUNE


def test_watching_the_release_namespace_does_not_collide_with_the_lease_role(chart):
    docs = render_docs(chart, {"watchNamespaces": [NAMESPACE], "replicaCount": 2})
    assert one(docs, "Role", "kekeeper", NAMESPACE)["rules"] == SCOPE_RULES
    assert one(docs, "Role", "kekeeper-leader-election", NAMESPACE)["rules"] == lease_rules()


def test_the_key_store_reads_only_kube_systems_uid(chart, renders):
    # With a key store and no clusterId, the writer claim needs kube-system's uid: one
    # ClusterRole with get on that namespace only, whatever the scope; with a clusterId, none.
    for values in ({"keyStore": {"url": "s3://acme-kekeeper/prod"}},
                   {"keyStore": {"url": "s3://acme-kekeeper/prod"}, "watchNamespaces": ["team-a"]}):
        docs = render_docs(chart, values)
        role = one(docs, "ClusterRole", "kekeeper-cluster-id")
        assert role["rules"] == [{"apiGroups": [""], "resources": ["namespaces"],
                                  "resourceNames": ["kube-system"], "verbs": ["get"]}]
        binding_ok(one(docs, "ClusterRoleBinding", "kekeeper-cluster-id"),
                   "ClusterRole", "kekeeper-cluster-id")
    docs = render_docs(chart, {"keyStore": {"url": "s3://acme-kekeeper/prod", "clusterId": "prod-eu"}})
    assert not [d for d in docs if d["metadata"]["name"] == "kekeeper-cluster-id"]
    assert "--key-store-cluster-id=prod-eu" in docs_args(docs)
    assert not [d for d in renders["default"] if d["metadata"]["name"] == "kekeeper-cluster-id"]


def docs_args(docs):
    deployment = one(docs, "Deployment", "kekeeper")
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]
