"""The release test (docs/testing.md, "The release test"): what scripts/release.sh pushed to a
real OCI registry (scripts/registry.sh) is there and agrees with itself, and the chart installs
**from the registry** with the Helm v4 engine (helm-python-sdk) into a real control plane.

Needs (scripts/test.sh provides them; without them every test fails):
- KEKEEPER_RELEASE_ENV: the release.env release.sh wrote (image, digest, chart reference),
  beside the artifacts;
- KEKEEPER_CRANE: crane (scripts/registry.sh crane); the registry is plain HTTP on 127.0.0.1;
- KUBECONFIG: the admin kubeconfig of a real control plane of its own
  (scripts/control-plane.sh); the install's CRD and namespace are left for the control plane's
  stop to throw away;
- KEKEEPER_RELEASE_INSTALLED: where to write the manifest Helm installed, which
  scripts/image-test.sh then runs (the image pulled by digest from the registry).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import helm_python
import pytest
import yaml
from helm_python import registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))
import kube_sim  # noqa: E402

NAMESPACE = "kekeeper-system"
RELEASE = "kekeeper"
CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/recordingkeyconfigs.kekeeper.io"


def need(name: str) -> str:
    value = os.environ.get(name)
    assert value, f"{name} is not set: run the release test through scripts/test.sh"
    return value


@pytest.fixture(scope="module")
def release() -> dict[str, str]:
    env = Path(need("KEKEEPER_RELEASE_ENV"))
    pairs = dict(line.split("=", 1) for line in env.read_text().splitlines() if line)
    assert pairs["KEKEEPER_RELEASE_PUSHED"] == "true", "the release was built with --no-push"
    pairs["dir"] = str(env.parent)
    return pairs


def crane(*args: str) -> str:
    return subprocess.run([need("KEKEEPER_CRANE"), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_the_artifacts_match_their_sums_and_say_the_version(release, tmp_path):
    version, out = release["KEKEEPER_RELEASE_VERSION"], Path(release["dir"])
    sums = (out / "SHA256SUMS").read_text().splitlines()
    names = sorted(line.split("  ", 1)[1] for line in sums)
    assert names == sorted([f"kekeeper-{version}-linux-amd64.tar.gz", f"kekeeper-{version}.cdx.json",
                            f"kekeeper-{version}.oci.tar", f"kekeeper-{version}.tgz"])
    for line in sums:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    top = f"kekeeper-{version}-linux-amd64"
    with tarfile.open(out / f"{top}.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == [top, f"{top}/LICENSE", f"{top}/README.md", f"{top}/kekeeper"]
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())
        assert members[f"{top}/kekeeper"].mode == 0o755
        tar.extract(f"{top}/kekeeper", tmp_path, filter="data")
    binary = tmp_path / top / "kekeeper"
    for args in (["--version"], ["version"]):
        said = subprocess.run([binary, *args], check=True, capture_output=True, text=True).stdout
        assert said == f"kekeeper {version}\n"
    bom = json.loads((out / f"kekeeper-{version}.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["metadata"]["component"]["version"] == version
    crates = {c["name"] for c in bom["components"]}
    assert {"kube", "aws-sdk-kms", "aws-lc-rs"} <= crates
    assert not {"kube-sim", "tempfile", "tower-test"} & crates, "dev-dependencies are not shipped"


def test_the_registry_serves_the_image_and_the_chart(release):
    version, image = release["KEKEEPER_RELEASE_VERSION"], release["KEKEEPER_RELEASE_IMAGE"]
    digest = release["KEKEEPER_RELEASE_IMAGE_DIGEST"]
    assert crane("digest", f"{image}:{version}") == digest
    config = json.loads(crane("config", f"{image}@{digest}"))
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == version
    assert config["config"]["Entrypoint"] == ["/kekeeper"]
    assert config["config"]["User"] == "65532:65532"
    chart = release["KEKEEPER_RELEASE_CHART"]
    with registry.RegistryClient(plain_http=True) as client:
        assert version in client.tags(chart)
        assert client.resolve(f"{chart}:{version}")["digest"] == release["KEKEEPER_RELEASE_CHART_DIGEST"]
    shown = yaml.safe_load(registry.show(f"{chart}:{version}", output_format="values",
                                         plain_http=True))
    assert shown["image"]["repository"] == image
    assert shown["image"]["digest"] == digest


def test_helm_installs_the_chart_from_the_registry_into_the_control_plane(release, tmp_path):
    version, image = release["KEKEEPER_RELEASE_VERSION"], release["KEKEEPER_RELEASE_IMAGE"]
    digest, chart = release["KEKEEPER_RELEASE_IMAGE_DIGEST"], release["KEKEEPER_RELEASE_CHART"]
    cluster = kube_sim.RealCluster(Path(need("KUBECONFIG")), tmp_path)
    installed = Path(need("KEKEEPER_RELEASE_INSTALLED"))
    with helm_python.Config(kubeconfig_path=need("KUBECONFIG"), namespace=NAMESPACE) as helm:
        started = time.monotonic()
        result = helm.install(chart, RELEASE, {}, chart_version=version, plain_http=True,
                              create_namespace=True)
        print(f"helm install {chart} --version {version}: {time.monotonic() - started:.1f} s")
        assert [r["name"] for r in helm.list()] == [RELEASE]
    assert (result["chart_name"], result["chart_version"], result["app_version"]) == \
        ("kekeeper", version, version)
    docs = [d for d in yaml.safe_load_all(result["manifest"]) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    stored = cluster.get(kube_sim.object_path(deployment, NAMESPACE))
    assert stored is not None, "the Deployment was not created"
    container = stored["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{image}@{digest}"
    assert stored["metadata"]["labels"]["app.kubernetes.io/version"] == version
    meta = stored["metadata"]["annotations"]
    assert meta["meta.helm.sh/release-name"] == RELEASE
    for doc in docs:
        assert cluster.get(kube_sim.object_path(doc, NAMESPACE)) is not None, doc["metadata"]
    deadline = time.monotonic() + 60
    while not any(c["type"] == "Established" and c["status"] == "True"
                  for c in (cluster.get(CRD).get("status") or {}).get("conditions") or []):
        assert time.monotonic() < deadline, "the CRD is not Established"
        time.sleep(0.2)
    installed.parent.mkdir(parents=True, exist_ok=True)
    installed.write_text(yaml.safe_dump_all(docs, sort_keys=False))
