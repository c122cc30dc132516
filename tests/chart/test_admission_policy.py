"""The ValidatingAdmissionPolicy that keeps everyone but the operator (and the break-glass
groups) from writing key material (issue 25, "Prevention in the cluster"): rendered here; what
a real API server does with it is tests/chart/test_admission.py."""

from __future__ import annotations

from conftest import NAMESPACE, find, one, render_docs

POLICY = "kekeeper-key-material"


def policy_and_binding(docs):
    return (one(docs, "ValidatingAdmissionPolicy", POLICY),
            one(docs, "ValidatingAdmissionPolicyBinding", POLICY))


def variable(policy, name):
    return next(v["expression"] for v in policy["spec"]["variables"] if v["name"] == name)


def test_on_by_default_for_secrets_and_configmaps_in_every_namespace(renders):
    policy, binding = policy_and_binding(renders["default"])
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [{
        "apiGroups": [""], "apiVersions": ["v1"], "resources": ["secrets", "configmaps"],
        "operations": ["CREATE", "UPDATE", "DELETE"]}]
    condition = spec["matchConditions"][0]["expression"]
    # The old object counts too (DELETE, relabel, retype), and both kinds of key material.
    for needle in ("[object, oldObject]", "'kekeeper.io/config' in o.metadata.labels",
                   "o.type == 'kekeeper.io/key-pair'", "endsWith('-public-keys')"):
        assert needle in condition, condition
    assert binding["spec"]["policyName"] == POLICY
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert "matchResources" not in binding["spec"]  # every namespace


def test_only_the_operators_service_account_and_the_break_glass_groups(chart):
    docs = render_docs(chart, {"admissionPolicy": {"breakGlassGroups": ["kekeeper-break-glass"]}})
    policy, _ = policy_and_binding(docs)
    assert variable(policy, "operator") == f"'system:serviceaccount:{NAMESPACE}:kekeeper'"
    assert variable(policy, "breakGlass") == '["kekeeper-break-glass"]'
    validation = policy["spec"]["validations"][0]
    assert "request.userInfo.username == variables.operator" in validation["expression"]
    assert "g in variables.breakGlass" in validation["expression"]
    # Kubernetes' controllers may only delete (a deleted namespace, a deleted config's ConfigMap).
    assert "request.operation == 'DELETE' && request.userInfo.username in " \
           "variables.systemDeleters" in validation["expression"]
    assert validation["reason"] == "Forbidden"
    message = validation["messageExpression"]
    assert "kekeeper restore -f FILE" in message and "break-glass" in message
    assert "admissionPolicy.breakGlassGroups" in message


def test_the_operator_is_this_releases_service_account(chart):
    # The release name decides the ServiceAccount's name (fullname helper), as the NOTES say.
    docs = render_docs(chart, {}, name="keys", namespace="ops")
    policy = one(docs, "ValidatingAdmissionPolicy", "keys-kekeeper-key-material")
    assert variable(policy, "operator") == "'system:serviceaccount:ops:keys-kekeeper'"
    docs = render_docs(chart, {"serviceAccount": {"create": False, "name": "byo"}})
    policy, _ = policy_and_binding(docs)
    assert variable(policy, "operator") == f"'system:serviceaccount:{NAMESPACE}:byo'"


def test_namespaced_releases_bind_only_their_namespaces(renders):
    _, binding = policy_and_binding(renders["namespaced"])
    assert binding["spec"]["matchResources"] == {"namespaceSelector": {"matchExpressions": [{
        "key": "kubernetes.io/metadata.name", "operator": "In",
        "values": ["team-a", "team-b"]}]}}


def test_off_renders_nothing(chart):
    docs = render_docs(chart, {"admissionPolicy": {"enabled": False}})
    assert find(docs, "ValidatingAdmissionPolicy") == []
    assert find(docs, "ValidatingAdmissionPolicyBinding") == []
