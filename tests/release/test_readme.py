"""The newcomer's test (docs/testing.md, "The README test"): a user who follows only the first 60
lines of README.md, with LocalStack standing in for AWS, gets a Ready RecordingKeyConfig.

The README's own commands run, as written, through bash: `kekeeper policy`, `helm install` from
the OCI registry the release was pushed to, the first resource's YAML, `kekeeper test -f`,
`kubectl apply`, `kubectl wait`, `kubectl get rkc -o wide`, `kekeeper status`. What stands in for
AWS and for a kubelet is substituted, and nothing else:
- the README's example account (111122223333) becomes LocalStack's (000000000000), its example
  key id the key this test makes, `<registry>` and `<version>` the release under test;
- `helm` is the real Helm v4 engine (helm-python-sdk) behind `tests/release/helm_cli.py`, which
  takes the README's `helm install` command line (plain HTTP for the 127.0.0.1 registry);
- the control plane has no kubelet, so the operator the chart installed runs as a process: the
  release tarball's binary with exactly the Deployment's args (metrics on 127.0.0.1 and a free
  port instead of 0.0.0.0:8080) and env, authenticated by a token of the chart's
  ServiceAccount, with LocalStack's credentials in place of IRSA. It is stopped by the test.
- `helm test` needs a kubelet to run its Pod: the README's last command is not run here (the
  Pod is rendered and validated by the chart tests).

Needs (scripts/test.sh provides them): KEKEEPER_RELEASE_ENV, KUBECONFIG (a real control plane
of its own, nothing installed), KEKEEPER_TEST_KUBECTL, AWS_ENDPOINT_URL_KMS (LocalStack).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_LINES = 60
EXAMPLE_ACCOUNT = "111122223333"
LOCALSTACK_ACCOUNT = "000000000000"
EXAMPLE_KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
REGION = "us-east-1"


def need(name: str) -> str:
    value = os.environ.get(name)
    assert value, f"{name} is not set: run the README test through scripts/test.sh"
    return value


def kms(operation: str, body: dict) -> dict:
    """One KMS JSON-protocol call to LocalStack (it checks no signature; the Region comes from
    the credential scope)."""
    request = urllib.request.Request(
        need("AWS_ENDPOINT_URL_KMS"), data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/x-amz-json-1.1",
                 "X-Amz-Target": f"TrentService.{operation}",
                 "Authorization": f"AWS4-HMAC-SHA256 Credential=test/20261206/{REGION}/kms/"
                                  "aws4_request, SignedHeaders=host, Signature=0"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def readme_head() -> str:
    return "".join((ROOT / "README.md").read_text().splitlines(keepends=True)[:README_LINES])


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^ *```(\w+)\n(.*?)^ *```$", text, re.MULTILINE | re.DOTALL)]


def dedent(block: str) -> str:
    lines = block.splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Newcomer:
    """A shell with what the README asks the user to have: kekeeper, kubectl and helm on PATH,
    AWS credentials (LocalStack's) and the kubeconfig of their cluster."""

    def __init__(self, home: Path, release: dict[str, str], key_id: str):
        self.home, self.release, self.key_id = home, release, key_id
        bin_dir = home / "bin"
        bin_dir.mkdir()
        version = release["KEKEEPER_RELEASE_VERSION"]
        top = f"kekeeper-{version}-linux-amd64"
        with tarfile.open(Path(release["dir"]) / f"{top}.tar.gz") as tar:
            tar.extract(f"{top}/kekeeper", home, filter="data")
        self.kekeeper = home / top / "kekeeper"
        (bin_dir / "kekeeper").symlink_to(self.kekeeper)
        (bin_dir / "kubectl").symlink_to(need("KEKEEPER_TEST_KUBECTL"))
        helm = bin_dir / "helm"
        helm.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
                        f"{shlex.quote(str(ROOT / 'tests/release/helm_cli.py'))} \"$@\"\n")
        helm.chmod(0o755)
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home),
                    "AWS_REGION": REGION}

    def substitute(self, text: str) -> str:
        registry = self.release["KEKEEPER_RELEASE_CHART"].removeprefix("oci://") \
            .removesuffix("/charts/kekeeper")
        return (text.replace(EXAMPLE_ACCOUNT, LOCALSTACK_ACCOUNT)
                .replace(EXAMPLE_KEY_ID, self.key_id)
                .replace("<registry>", registry)
                .replace("<version>", self.release["KEKEEPER_RELEASE_VERSION"]))

    def sh(self, script: str, timeout: float = 360) -> str:
        script = self.substitute(script)
        print(f"$ {script.strip()}")
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.home,
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        print(done.stdout + done.stderr)
        assert done.returncode == 0, f"{script.strip()!r} failed ({done.returncode}):\n" \
                                     f"{done.stdout}{done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def release() -> dict[str, str]:
    env = Path(need("KEKEEPER_RELEASE_ENV"))
    pairs = dict(line.split("=", 1) for line in env.read_text().splitlines() if line)
    pairs["dir"] = str(env.parent)
    return pairs


def operator_process(newcomer: Newcomer, workdir: Path) -> subprocess.Popen:
    """The installed Deployment's container as a kubelet would start it: its args and env, the
    ServiceAccount's token as the only Kubernetes credential, LocalStack's as IRSA's."""
    kubectl = need("KEKEEPER_TEST_KUBECTL")
    deployment = json.loads(subprocess.run(
        [kubectl, "-n", "kekeeper-system", "get", "deployment", "kekeeper", "-o", "json"],
        check=True, capture_output=True, text=True).stdout)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    token = subprocess.run(
        [kubectl, "-n", "kekeeper-system", "create", "token", pod["serviceAccountName"]],
        check=True, capture_output=True, text=True).stdout.strip()
    admin = json.loads(subprocess.run([kubectl, "config", "view", "--raw", "-o", "json"],
                                      check=True, capture_output=True, text=True).stdout)
    admin["users"] = [{"name": "kekeeper", "user": {"token": token}}]
    for context in admin["contexts"]:
        context["context"]["user"] = "kekeeper"
    kubeconfig = workdir / "operator.kubeconfig"
    kubeconfig.write_text(json.dumps(admin))
    fields = {"metadata.name": "kekeeper-readme-0", "metadata.namespace": "kekeeper-system"}
    env = {"PATH": os.environ["PATH"], "KUBECONFIG": str(kubeconfig)}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_KMS",
                 "AWS_ENDPOINT_URL_S3"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.setdefault("AWS_REGION", REGION)
    args = [a if not a.startswith("--metrics-addr=") else f"--metrics-addr=127.0.0.1:{free_port()}"
            for a in container["args"]]
    log = (workdir / "operator.log").open("w")
    print(f"operator: {newcomer.kekeeper.name} {' '.join(args)}")
    return subprocess.Popen([str(newcomer.kekeeper), *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def test_the_first_60_lines_of_the_readme_give_a_ready_resource(release, tmp_path):
    head = readme_head()
    blocks = fenced_blocks(head)
    assert [lang for lang, _ in blocks] == ["sh", "sh", "yaml", "sh"], \
        "the README's install steps changed shape: update this test with them"
    policy, install, resource, apply = (dedent(body) for _, body in blocks)
    inline = re.findall(r"`((?:kubectl|kekeeper) [^`]+)`", head)
    get_rkc = next(c for c in inline if c.startswith("kubectl get rkc"))
    status = next(c for c in inline if c.startswith("kekeeper status"))

    # AWS, as the README assumes it: a customer-managed symmetric key with an alias.
    key_id = kms("CreateKey", {"Description": "README test"})["KeyMetadata"]["KeyId"]
    kms("CreateAlias", {"AliasName": "alias/recordings", "TargetKeyId": key_id})
    newcomer = Newcomer(tmp_path, release, key_id)

    # Step 1: the policies the user adds to the key and the role.
    printed = newcomer.sh(policy)
    statements, at = json.JSONDecoder().raw_decode(printed.strip())
    identity = json.loads(printed.strip()[at:])
    assert {s["Sid"] for s in statements} >= {"KekeeperOperatorKeyPairs", "KekeeperDescribeKey"}
    assert all(s["Principal"]["AWS"] == f"arn:aws:iam::{LOCALSTACK_ACCOUNT}:role/kekeeper"
               for s in statements)
    assert identity["Version"] == "2012-10-17"
    assert identity["Statement"][0]["Resource"] == \
        [f"arn:aws:kms:{REGION}:{LOCALSTACK_ACCOUNT}:key/{key_id}"]

    # Step 2: the chart, from the registry.
    newcomer.sh(install)
    operator = operator_process(newcomer, tmp_path)
    try:
        # Step 3: the first resource, tested against KMS, applied, Ready.
        (tmp_path / "recordings.yaml").write_text(newcomer.substitute(resource))
        started = time.monotonic()
        newcomer.sh(apply)
        print(f"Ready {time.monotonic() - started:.1f} s after `kekeeper test -f` began")

        # Step 4: what the README says the user sees.
        table = newcomer.sh(get_rkc)
        header, row = table.splitlines()[:2]
        assert "READY" in header and "REASON" in header and "KMS KEY" in header, header
        assert row.split()[0] == "recordings" and "True" in row.split(), row
        assert key_id in row, row
        shown = newcomer.sh(status)
        assert "Ready" in shown and key_id in shown, shown
        configmap = newcomer.sh("kubectl get configmap recordings-public-keys -n contact-centre"
                                " -o jsonpath='{.data}'")
        assert "BEGIN PUBLIC KEY" in configmap
        assert operator.poll() is None, "the operator exited"
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        print((tmp_path / "operator.log").read_text()[-4000:])
