"""The Deployment: command line, environment, probes, security context, scheduling."""

from __future__ import annotations

import pytest
from helm_python.errors import HelmRenderError

from conftest import NAMESPACE, one, render_docs

# No --kms-keypair-rate by default: the operator paces each key pair spec at 90 % of AWS's quota.
BASE_ARGS = ["run", "--metrics-addr=0.0.0.0:8080", "--kms-symmetric-rate=100",
             "--kms-key-check-interval=1h", "--key-verify-interval=24h", "--concurrency=16",
             "--kms-max-in-flight=4"]
LEADER_ARGS = ["--leader-elect", "--lease-name=kekeeper", f"--lease-namespace={NAMESPACE}"]


def deployment(docs):
    return one(docs, "Deployment")


def container(docs):
    (c,) = deployment(docs)["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("case,args", [
    # Leader election is on by default, whatever the replica count.
    ("default", BASE_ARGS + LEADER_ARGS),
    ("no-crds", BASE_ARGS + LEADER_ARGS),
    ("servicemonitor", BASE_ARGS + LEADER_ARGS),
    ("networkpolicy", BASE_ARGS + LEADER_ARGS),
    # One --namespace per watched namespace (the flag is repeated).
    ("namespaced", BASE_ARGS + ["--namespace=team-a", "--namespace=team-b"] + LEADER_ARGS),
    ("ha", BASE_ARGS + LEADER_ARGS),
    # The key store, right after the tuning flags.
    ("key-store", BASE_ARGS + ["--key-store=s3://acme-kekeeper/prod-eu"] + LEADER_ARGS),
    ("everything", ["run", "--metrics-addr=0.0.0.0:8080", "--kms-keypair-rate=0.5",
                    "--kms-symmetric-rate=100", "--kms-key-check-interval=30m", "--key-verify-interval=24h",
                    "--concurrency=16", "--kms-max-in-flight=4",
                    "--namespace=team-a", "--leader-elect",
                    "--lease-name=kekeeper-leader", f"--lease-namespace={NAMESPACE}",
                    "--log-json", "--some-future-flag"]),
])
def test_args(renders, case, args):
    c = container(renders[case])
    assert c["args"] == args
    assert "command" not in c, "the image's ENTRYPOINT is /kekeeper"


def test_key_pair_rates_per_spec(chart):
    # One flag per spec, in the order of the specs' names; the older single number still works.
    docs = render_docs(chart, {"kmsKeyPairRate": {"RSA_4096": 0.05, "RSA_3072": 0.9},
                               "kmsSymmetricRate": 50})
    args = container(docs)["args"]
    assert args[2:5] == ["--kms-keypair-rate=RSA_3072=0.9", "--kms-keypair-rate=RSA_4096=0.05",
                         "--kms-symmetric-rate=50"], args
    args = container(render_docs(chart, {"kmsKeyPairRate": 2}))["args"]
    assert args[2:4] == ["--kms-keypair-rate=2", "--kms-symmetric-rate=100"], args


def test_replicas_and_rollout_strategy(renders):
    # With the Lease, a rolling update never runs two active controllers: the new pod stands
    # by until the old one releases the Lease on SIGTERM.
    for case, replicas in (("default", 1), ("ha", 3)):
        spec = deployment(renders[case])["spec"]
        assert spec["replicas"] == replicas, case
        assert spec["strategy"] == {"type": "RollingUpdate",
                                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}, case


def test_leader_election_can_be_switched_off_for_one_replica(chart):
    docs = render_docs(chart, {"leaderElection": {"enabled": False}})
    assert container(docs)["args"] == BASE_ARGS
    # No Lease: a rolling update would briefly run two controllers side by side.
    assert deployment(docs)["spec"]["strategy"] == {"type": "Recreate"}
    assert not [d for d in docs if d["kind"] == "Role"]
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]


def test_deprecated_force_still_switches_leader_election_on(chart):
    docs = render_docs(chart, {"leaderElection": {"enabled": False, "force": True}})
    assert container(docs)["args"][-3:] == LEADER_ARGS
    assert one(docs, "Role", "kekeeper-leader-election", NAMESPACE)


def test_several_replicas_without_leader_election_are_refused(chart):
    with pytest.raises(HelmRenderError) as err:
        render_docs(chart, {"replicaCount": 2, "leaderElection": {"enabled": False}})
    message = str(err.value)
    assert "leaderElection.enabled=false with replicaCount=2" in message, message
    assert "set leaderElection.enabled=true" in message, message


def test_selector_matches_template_labels(renders):
    for case, docs in renders.items():
        spec = deployment(docs)["spec"]
        selector = spec["selector"]["matchLabels"]
        assert selector, case
        assert selector.items() <= spec["template"]["metadata"]["labels"].items(), case
        assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}, case


def test_probes(renders):
    c = container(renders["default"])
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["periodSeconds"] > 0 and probe["timeoutSeconds"] > 0


def test_metrics_port_moves_everything(chart):
    docs = render_docs(chart, {"metrics": {"port": 9090}})
    c = container(docs)
    assert "--metrics-addr=0.0.0.0:9090" in c["args"]
    assert c["ports"][0]["containerPort"] == 9090


def test_security_context(renders):
    for case, docs in renders.items():
        pod = deployment(docs)["spec"]["template"]["spec"]
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532, case
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, case
        csc = container(docs)["securityContext"]
        assert csc["runAsNonRoot"] is True and csc["runAsUser"] == 65532, case
        assert csc["readOnlyRootFilesystem"] is True, case
        assert csc["allowPrivilegeEscalation"] is False, case
        assert csc["privileged"] is False, case
        assert csc["capabilities"] == {"drop": ["ALL"]}, case
        assert csc["seccompProfile"] == {"type": "RuntimeDefault"}, case
        assert pod["automountServiceAccountToken"] is True, case


def test_resources(renders):
    assert container(renders["default"])["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }


def env(docs):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


def test_environment(renders):
    default = env(renders["default"])
    assert default["RUST_LOG"] == "info"
    assert "AWS_REGION" not in default and "AWS_ENDPOINT_URL_KMS" not in default
    assert default["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    full = env(renders["everything"])
    assert full["RUST_LOG"] == "info,kekeeper=debug"
    assert full["AWS_REGION"] == "eu-west-1"
    assert full["AWS_ENDPOINT_URL_KMS"] == "https://kms.eu-west-1.amazonaws.com"
    assert full["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"
    assert list(full)[-1] == "AWS_STS_REGIONAL_ENDPOINTS", "extraEnv comes last"
    assert "AWS_ENDPOINT_URL_S3" not in default
    assert env(renders["key-store"])["AWS_ENDPOINT_URL_S3"] == "https://s3.eu-west-1.amazonaws.com"


def test_image(chart, renders):
    c = container(renders["default"])
    assert c["image"] == f"ghcr.io/kekeeper/kekeeper:{chart.metadata['appVersion']}"
    assert c["imagePullPolicy"] == "IfNotPresent"
    full = container(renders["everything"])
    assert full["image"] == "ghcr.io/kekeeper/kekeeper:0.1.0-rc1"
    assert full["imagePullPolicy"] == "Always"
    digest = "sha256:" + "a" * 64
    pinned = container(render_docs(chart, {"image": {"digest": digest}}))
    assert pinned["image"] == f"ghcr.io/kekeeper/kekeeper@{digest}"


def test_read_only_root_has_a_tmp_volume(renders):
    pod = deployment(renders["default"])["spec"]["template"]["spec"]
    assert container(renders["default"])["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}]


def test_scheduling_and_pod_metadata(renders):
    dep = deployment(renders["everything"])
    tmpl = dep["spec"]["template"]
    pod = tmpl["spec"]
    assert tmpl["metadata"]["annotations"] == {"example.com/a": "b"}
    assert tmpl["metadata"]["labels"]["team"] == "platform"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "podAntiAffinity" in pod["affinity"]
    default_pod = deployment(renders["default"])["spec"]["template"]["spec"]
    for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert key not in default_pod


def test_notes_say_where_the_key_pairs_live(chart):
    def notes(values):
        out = chart.render(values, name="kekeeper", namespace=NAMESPACE)
        return next(text for path, text in out.items() if path.endswith("NOTES.txt"))
    without = " ".join(notes({}).split())
    assert "Key store: none - key pairs live only in this cluster." in without
    assert "Set keyStore.url" in without and "kekeeper backup" in without
    with_store = " ".join(notes({"keyStore": {"url": "s3://acme-kekeeper/prod-eu"}}).split())
    assert "Key store: s3://acme-kekeeper/prod-eu" in with_store
    assert "kekeeper policy --key-store s3://acme-kekeeper/prod-eu" in with_store
    assert "live only in this cluster" not in with_store
