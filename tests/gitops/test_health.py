"""GitOps health recipes against realistic RecordingKeyConfig statuses (tests/fixtures/status/).

- contrib/argocd/health.lua runs in Debian's real Lua interpreters: lua5.4, and lua5.1 because
  Argo CD runs health checks in gopher-lua, a Lua 5.1 implementation.
- The healthCheckExprs of examples/flux/kustomization.yaml run in cel-python the way Flux's
  CEL status reader applies them (generation check, then inProgress, failed, current).
- docs/gitops.md shows the Lua script verbatim inside the argocd-cm snippet.

scripts/chart-test.sh installs the interpreters (apt) and cel-python (venv) before running this.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "contrib" / "argocd" / "health.lua"
FLUX_EXAMPLE = REPO / "examples" / "flux" / "kustomization.yaml"
FIXTURES = REPO / "tests" / "fixtures" / "status"

# fixture -> (Argo CD health, words the message must contain)
EXPECTED: dict[str, tuple[str, str]] = {
    "new-resource": ("Progressing", "Waiting for the operator to report status"),
    "rotating-3-of-100": ("Progressing", "Rotating: 3/100 organisations have a key pair"),
    "ready": ("Healthy", "KeyPairsActive: 2/2 organisations"),
    "suspended": ("Suspended", "Suspended: spec.suspend is true"),
    "alias-not-found-stalled": ("Degraded", "KmsKeyUnusable: alias/recordings does not exist"),
    "access-denied-stalled": ("Degraded", "AccessDeniedException: the key policy"),
    "kms-throttled": ("Progressing", "Rotating: 3/100"),
    "kms-unreachable": ("Degraded", "KmsUnavailable: DescribeKey: dispatch failure"),
    "keys-at-risk": ("Degraded", "KmsKeyDisabledOrPendingDeletion"),
    "integrity-failed": ("Degraded", "FingerprintMismatch"),
    "stale-generation": ("Progressing", "observe generation 3"),
}

# What kstatus calls each Argo CD health (Suspended is the state the spec asks for: Current).
KSTATUS = {"Healthy": "Current", "Suspended": "Current", "Progressing": "InProgress",
           "Degraded": "Failed"}

INTERPRETERS = ["lua5.4", "lua5.1"]


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def lua_literal(value: Any) -> str:
    """A JSON value as a Lua table constructor, the way Argo CD hands `obj` to the script."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes for this text
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    return "{" + ", ".join(f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"


def argocd_health(interpreter: str, obj: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    harness = tmp_path / "harness.lua"
    harness.write_text(
        f"obj = {lua_literal(obj)}\n"
        f"local hs = dofile({json.dumps(str(HEALTH_LUA))})\n"
        'io.write(hs.status, "\\n", hs.message, "\\n")\n'
    )
    run = subprocess.run([interpreter, str(harness)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    status, message = run.stdout.split("\n", 1)
    return status, message.rstrip("\n")


def test_every_fixture_has_an_expectation():
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_interpreter_is_installed(interpreter):
    assert shutil.which(interpreter), f"{interpreter} missing: run scripts/chart-test.sh"


@pytest.mark.parametrize("interpreter", INTERPRETERS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_argocd_health(interpreter, name, tmp_path):
    status, message = argocd_health(interpreter, fixture(name), tmp_path)
    want_status, want_words = EXPECTED[name]
    assert (status, want_words in message) == (want_status, True), message


def test_ready_condition_of_an_older_generation_is_progressing(tmp_path):
    obj = fixture("ready")
    obj["metadata"]["generation"] = 2
    obj["status"]["observedGeneration"] = 2  # status written, Ready not yet recomputed
    assert argocd_health("lua5.4", obj, tmp_path)[0] == "Progressing"


def test_unknown_ready_is_progressing(tmp_path):
    obj = fixture("ready")
    ready = obj["status"]["conditions"][0]
    ready.update(status="Unknown", reason="NotChecked", message="")
    assert argocd_health("lua5.4", obj, tmp_path) == ("Progressing", "Waiting for the Ready condition")


def flux_exprs() -> dict[str, str]:
    kustomization = yaml.safe_load(FLUX_EXAMPLE.read_text())
    (exprs,) = [e for e in kustomization["spec"]["healthCheckExprs"]
                if e["kind"] == "RecordingKeyConfig"]
    assert exprs["apiVersion"] == "kekeeper.io/v1alpha1"
    return exprs


def flux_status(obj: dict[str, Any]) -> str:
    """Flux's CEL status reader (RFC-0009): observedGeneration check, then inProgress, failed,
    current; the first true one decides; an evaluation error or none true: InProgress."""
    status = obj.get("status", {})
    if "observedGeneration" in status and status["observedGeneration"] != obj["metadata"]["generation"]:
        return "InProgress"
    env = celpy.Environment()
    activation = {k: celpy.json_to_cel(v) for k, v in obj.items()}
    exprs = flux_exprs()
    for field, result in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        try:
            value = env.program(env.compile(exprs[field])).evaluate(activation)
        except celpy.CELEvalError:
            # Flux waits on an expression it cannot evaluate; only acceptable before the
            # operator wrote any status (`status` does not exist yet).
            assert "status" not in obj, field
            return "InProgress"
        if bool(value):
            return result
    return "InProgress"


def test_flux_example_waits_on_everything():
    spec = yaml.safe_load(FLUX_EXAMPLE.read_text())["spec"]
    assert spec["wait"] is True and spec["prune"] is False and spec["timeout"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_flux_exprs_agree_with_argocd(name):
    assert flux_status(fixture(name)) == KSTATUS[EXPECTED[name][0]]


def test_gitops_page_shows_the_argocd_script_verbatim():
    page = (REPO / "docs" / "gitops.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", page, re.S)
    argocd_cm = [yaml.safe_load(b) for b in blocks if "resource.customizations.health.kekeeper.io" in b]
    assert len(argocd_cm) == 1, "docs/gitops.md needs one argocd-cm snippet with the health check"
    script = argocd_cm[0]["data"]["resource.customizations.health.kekeeper.io_RecordingKeyConfig"]
    assert script == HEALTH_LUA.read_text()
