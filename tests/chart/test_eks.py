"""The IAM path on EKS (issue 26): the NOTES name this release's exact IRSA subject and the role
annotation they found, and the `helm test` Pod runs `kekeeper test` as the operator's
ServiceAccount against the RecordingKeyConfigs it watches."""

from __future__ import annotations

from conftest import NAMESPACE, find, one, render_docs

ROLE = "arn:aws:iam::111122223333:role/kekeeper"


def notes(chart, values, name="kekeeper", namespace=NAMESPACE):
    out = chart.render(values, name=name, namespace=namespace)
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def test_notes_print_the_irsa_subject_of_this_release(chart):
    text = notes(chart, {})
    assert f"system:serviceaccount:{NAMESPACE}:kekeeper\n" in text
    assert "Role annotation: none - serviceAccount.annotations has no eks.amazonaws.com/role-arn" \
        in " ".join(text.split())
    # A release name without "kekeeper": the fullname helper appends it.
    text = notes(chart, {}, name="keys", namespace="ops")
    assert "system:serviceaccount:ops:keys-kekeeper\n" in text
    text = notes(chart, {"serviceAccount": {"name": "kms-operator"}}, name="keys", namespace="ops")
    assert "system:serviceaccount:ops:kms-operator\n" in text


def test_notes_print_the_role_annotation_found(chart):
    text = notes(chart, {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": ROLE}}})
    assert f"Role annotation: eks.amazonaws.com/role-arn: {ROLE}\n" in text
    assert "AccessDeniedException" not in text
    # A ServiceAccount the chart does not make: looked up (nothing to find without a cluster).
    text = notes(chart, {"serviceAccount": {"create": False, "name": "byo"}})
    assert f"system:serviceaccount:{NAMESPACE}:byo\n" in text
    assert f"Role annotation: none found on ServiceAccount {NAMESPACE}/byo" in text


def test_notes_end_with_helm_test(chart):
    text = notes(chart, {})
    assert text.rstrip().endswith(f"helm test kekeeper -n {NAMESPACE} --logs"), text
    assert "one organisation per RecordingKeyConfig" in " ".join(text.split())
    assert "helm test" not in notes(chart, {"helmTest": {"enabled": False}})


def test_the_helm_test_pod_runs_as_the_operator(renders, chart):
    pod = one(renders["default"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "kekeeper"
    assert spec["restartPolicy"] == "Never"
    container = spec["containers"][0]
    deployment = one(renders["default"], "Deployment")["spec"]["template"]["spec"]
    assert container["image"] == deployment["containers"][0]["image"]
    assert container["securityContext"] == deployment["containers"][0]["securityContext"]
    assert container["args"] == ["test", "--all-namespaces", "--max-organizations=1"]
    # Never selected by the operator's Service, ReplicaSet or PodDisruptionBudget.
    selector = one(renders["default"], "Service")["spec"]["selector"]
    assert not selector.items() <= pod["metadata"]["labels"].items()

    namespaced = one(renders["namespaced"], "Pod")["spec"]["containers"][0]
    assert namespaced["args"] == ["test", "--all", "--namespace=team-a", "--namespace=team-b",
                                  "--max-organizations=1"]
    everything = one(renders["everything"], "Pod")["spec"]
    env = {e["name"]: e.get("value") for e in everything["containers"][0]["env"]}
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["AWS_ENDPOINT_URL_KMS"] == "https://kms.eu-west-1.amazonaws.com"
    assert everything["imagePullSecrets"] == [{"name": "regcred"}]

    docs = render_docs(chart, {"helmTest": {"maxOrganizations": 0}})
    assert one(docs, "Pod")["spec"]["containers"][0]["args"] == ["test", "--all-namespaces"]
    assert find(render_docs(chart, {"helmTest": {"enabled": False}}), "Pod") == []
