"""The API servers of the chart install tests, behind one tiny REST client.

`KubeSim`: kube-sim (tests/kube-sim) as a process. The binary is built with cargo (the
workspace's target dir), started on a free loopback port with a kubeconfig in a temporary
directory, and stopped (SIGTERM, then SIGKILL) afterwards.

`RealCluster`: the real control plane of scripts/control-plane.sh, reached through its admin
kubeconfig (a client certificate in system:masters). It is shared by the tests of a run, so
`reset` removes what a test left behind and waits until the server has finished deleting it.
"""

from __future__ import annotations

import base64
import json
import signal
import time
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def build() -> Path:
    """`cargo build -p kube-sim --bin kube-sim`; the path of the built executable."""
    out = subprocess.run(
        ["cargo", "build", "--quiet", "-p", "kube-sim", "--bin", "kube-sim",
         "--message-format=json-render-diagnostics"],
        cwd=REPO, check=True, stdout=subprocess.PIPE, text=True, timeout=1800,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == "kube-sim":
            return Path(msg["executable"])
    raise RuntimeError("cargo built no kube-sim executable")


class Client:
    """Requests as the admin user: subclasses set `url`, `tls` and `headers`."""

    url: str
    tls: ssl.SSLContext
    headers: dict[str, str]

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        """(HTTP status, decoded JSON body) of one request as the admin user."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            **self.headers, "Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.tls, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def request_patch(self, path: str, patch: dict[str, Any]) -> tuple[int, Any]:
        """A JSON merge patch (what `kubectl label` / `kubectl annotate` send)."""
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def get(self, path: str) -> dict[str, Any] | None:
        code, obj = self.request("GET", path)
        if code == 404:
            return None
        assert code == 200, f"GET {path}: {code} {obj}"
        return obj

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        code, out = self.request("POST", path, obj)
        assert code == 201, f"POST {path}: {code} {out}"
        return out

    def create_crd(self, crd: dict[str, Any]) -> None:
        """Creates a CRD and waits until it is served, as `kubectl wait
        --for=condition=Established` does: a real server serves a new CRD a moment later."""
        self.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        self.wait_established(crd["metadata"]["name"])

    def wait_established(self, name: str, timeout: float = 30) -> None:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        deadline = time.monotonic() + timeout
        while True:
            crd = self.get(path) or {}
            # A CRD just created may answer `conditions: null`.
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return
            assert time.monotonic() < deadline, f"CRD {name} not Established: {conditions}"
            time.sleep(0.1)


class KubeSim(Client):
    """A running kube-sim: `kubeconfig` is the admin kubeconfig path."""

    def __init__(self, binary: Path, workdir: Path):
        self.kubeconfig = workdir / "kubeconfig"
        self.proc = subprocess.Popen(
            [str(binary), "--kubeconfig", str(self.kubeconfig)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("kube-sim listening on "):
            self.stop()
            raise RuntimeError(f"kube-sim did not start: {line!r}")
        self.url = line.split()[-1]
        kc = yaml.safe_load(self.kubeconfig.read_text())
        ca = base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"])
        self.tls = ssl.create_default_context(cadata=ca.decode())
        self.headers = {"Authorization": f"Bearer {kc['users'][0]['user']['token']}"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RealCluster(Client):
    """The running control plane whose admin kubeconfig is `kubeconfig`."""

    # Namespaces the control plane makes itself; `reset` leaves them.
    SYSTEM_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}

    def __init__(self, kubeconfig: Path, workdir: Path):
        self.kubeconfig = kubeconfig
        kc = yaml.safe_load(kubeconfig.read_text())
        cluster, user = kc["clusters"][0]["cluster"], kc["users"][0]["user"]
        self.url = cluster["server"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self.tls = ssl.create_default_context(cadata=ca)
        cert, key = workdir / "admin.crt", workdir / "admin.key"
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        self.tls.load_cert_chain(cert, key)
        self.headers = {}

    def wait_instances_served(self, crd_path: str, deadline: float) -> None:
        """Waits until the API server's cache of a CRD's objects is ready. A CRD deleted
        before that stays Terminating for minutes: its finalizer cannot list the instances
        ("storage is (re)initializing") and retries with a growing backoff."""
        crd = self.get(crd_path)
        if crd is None:
            return
        spec = crd["spec"]
        version = next(v["name"] for v in spec["versions"] if v["storage"])
        instances = f"/apis/{spec['group']}/{version}/{spec['names']['plural']}"
        while (code := self.request("GET", f"{instances}?resourceVersion=0&limit=1")[0]) != 200:
            assert time.monotonic() < deadline, f"GET {instances}: {code}"
            time.sleep(0.2)

    def reset(self, cluster_scoped: list[str], timeout: float = 120) -> None:
        """Deletes the given cluster-scoped paths and every namespace the control plane did
        not make, then waits until all of it is gone (namespaces are emptied by the
        namespace controller, CRDs by the API server)."""
        code, namespaces = self.request("GET", "/api/v1/namespaces")
        assert code == 200, namespaces
        paths = list(cluster_scoped) + [
            f"/api/v1/namespaces/{ns['metadata']['name']}" for ns in namespaces["items"]
            if ns["metadata"]["name"] not in self.SYSTEM_NAMESPACES]
        deadline = time.monotonic() + timeout
        for path in paths:
            if "/customresourcedefinitions/" in path:
                self.wait_instances_served(path, deadline)
            code, out = self.request("DELETE", path)
            assert code in (200, 202, 404), f"DELETE {path}: {code} {out}"
        for path in paths:
            while self.get(path) is not None:
                assert time.monotonic() < deadline, f"{path} still there after {timeout} s"
                time.sleep(0.2)


PLURALS = {
    "ServiceAccount": "serviceaccounts", "Service": "services", "ConfigMap": "configmaps",
    "Deployment": "deployments", "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies", "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings", "Role": "roles", "RoleBinding": "rolebindings",
    "CustomResourceDefinition": "customresourcedefinitions",
    "ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules",
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
}


CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                 "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def object_path(doc: dict[str, Any], release_namespace: str) -> str:
    """The REST path of a manifest object (its kind must be in PLURALS); namespaced objects
    without a namespace land in the release namespace, as Helm places them."""
    api_version = doc["apiVersion"]
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    meta = doc["metadata"]
    ns = "" if doc["kind"] in CLUSTER_KINDS else \
        f"/namespaces/{meta.get('namespace') or release_namespace}"
    return f"{prefix}{ns}/{PLURALS[doc['kind']]}/{meta['name']}"
