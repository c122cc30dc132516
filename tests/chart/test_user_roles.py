"""The user roles: <fullname>-edit and -view aggregate into the cluster's admin/edit/view
ClusterRoles (the cert-manager way), grant nothing on Secrets, and can be switched off.
tests/e2e_user_roles.rs proves them on kube-sim with RBAC enforced."""

from __future__ import annotations

import pytest

from conftest import CASES, find, one, render_docs

EDIT_RULES = [{"apiGroups": ["kekeeper.io"], "resources": ["recordingkeyconfigs"],
               "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]
VIEW_RULES = [{"apiGroups": ["kekeeper.io"],
               "resources": ["recordingkeyconfigs", "recordingkeyconfigs/status"],
               "verbs": ["get", "list", "watch"]}]
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def aggregation_labels(role):
    return {k: v for k, v in role["metadata"]["labels"].items() if k.startswith(AGGREGATE)}


@pytest.mark.parametrize("case", CASES)
def test_rendered_in_every_scope(renders, case):
    edit = one(renders[case], "ClusterRole", "kekeeper-edit")
    view = one(renders[case], "ClusterRole", "kekeeper-view")
    assert edit["rules"] == EDIT_RULES
    assert view["rules"] == VIEW_RULES
    assert aggregation_labels(edit) == {f"{AGGREGATE}admin": "true", f"{AGGREGATE}edit": "true"}
    assert aggregation_labels(view) == {f"{AGGREGATE}view": "true"}
    assert "aggregationRule" not in edit and "aggregationRule" not in view


def test_no_secrets_no_status_writes():
    for rule in EDIT_RULES + VIEW_RULES:
        assert rule["apiGroups"] == ["kekeeper.io"]
        assert "recordingkeyconfigs/status" not in rule["resources"] or not (
            set(rule["verbs"]) - {"get", "list", "watch"})


def test_names_follow_the_release(chart):
    names = {d["metadata"]["name"] for d in find(render_docs(chart, {}, name="prod"), "ClusterRole")}
    assert {"prod-kekeeper-edit", "prod-kekeeper-view"} <= names


def test_can_be_switched_off(chart):
    docs = render_docs(chart, {"userRoles": {"enabled": False}})
    assert [d["metadata"]["name"] for d in find(docs, "ClusterRole")] == ["kekeeper"]
    docs = render_docs(chart, {"userRoles": {"enabled": False}, "watchNamespaces": ["team-a"]})
    assert find(docs, "ClusterRole") == []


def test_schema_rejects_unknown_keys(chart):
    from helm_python.errors import HelmValuesError
    with pytest.raises(HelmValuesError) as err:
        chart.render({"userRoles": {"enabled": True, "aggregate": False}}, name="kekeeper",
                     namespace="kekeeper-system")
    assert "additional propert" in str(err.value)


def test_notes_name_the_roles(chart):
    def notes(values):
        out = chart.render(values, name="kekeeper", namespace="kekeeper-system")
        return next(text for path, text in out.items() if path.endswith("NOTES.txt"))
    assert "kekeeper-edit and kekeeper-view" in notes({})
    assert "kekeeper-edit" not in notes({"userRoles": {"enabled": False}})
