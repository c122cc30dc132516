"""kube-sim (tests/kube-sim) as a process for the chart install tests, and a tiny REST client.

The binary is built with cargo (the workspace's target dir), started on a free loopback port
with a kubeconfig in a temporary directory, and stopped (SIGTERM, then SIGKILL) afterwards.
"""

from __future__ import annotations

import base64
import json
import signal
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


class KubeSim:
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
        self.token = kc["users"][0]["user"]["token"]
        self.tls = ssl.create_default_context(cadata=ca.decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        """(HTTP status, decoded JSON body) of one request as the admin user."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": content_type,
            "Accept": "application/json"})
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


PLURALS = {
    "ServiceAccount": "serviceaccounts", "Service": "services", "ConfigMap": "configmaps",
    "Deployment": "deployments", "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies", "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings", "Role": "roles", "RoleBinding": "rolebindings",
    "CustomResourceDefinition": "customresourcedefinitions",
    "ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules",
}


CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def object_path(doc: dict[str, Any], release_namespace: str) -> str:
    """The REST path of a manifest object (its kind must be in PLURALS); namespaced objects
    without a namespace land in the release namespace, as Helm places them."""
    api_version = doc["apiVersion"]
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    meta = doc["metadata"]
    ns = "" if doc["kind"] in CLUSTER_KINDS else \
        f"/namespaces/{meta.get('namespace') or release_namespace}"
    return f"{prefix}{ns}/{PLURALS[doc['kind']]}/{meta['name']}"
