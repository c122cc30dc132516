#!/usr/bin/env bash
# Render/lint tests for charts/kekeeper with the real Helm v4 engine (helm-python-sdk; no helm
# binary, no cluster), the chart's alerts with promtool, and the GitOps health recipes
# (contrib/argocd/health.lua with Debian's lua5.4/lua5.1, the Flux CEL expressions with
# cel-python).
# Also: tests of charts/kekeeper with the real Helm v4 engine (helm-python-sdk; no helm binary):
# render/lint/schema tests, and tests/chart/test_install.py, which builds kube-sim
# (cargo build -p kube-sim), starts it per test and installs, upgrades and uninstalls the chart
# into it (each kube-sim is stopped when its test ends).
#
#   scripts/chart-test.sh [pytest args...]   install the tools, create/refresh .venv-helm, run
#                                            pytest tests/chart tests/gitops
#   scripts/chart-test.sh venv               only create/refresh .venv-helm (the Helm engine for
#                                            scripts/release.sh)
#   scripts/chart-test.sh sync-crd           copy crds/recordingkeyconfigs.kekeeper.io.yaml into
#                                            the chart (charts/kekeeper/files/crds/)
#
# Rendered manifests of every test case land in target/chart-renders/<case>.yaml
# (override with KEKEEPER_CHART_RENDERS_DIR) for the Rust k8s-openapi deserialisation test.
set -euo pipefail
cd "$(dirname "$0")/.."

CRD=recordingkeyconfigs.kekeeper.io.yaml
if [[ "${1:-}" == "sync-crd" ]]; then
  [[ -f "crds/$CRD" ]] || { echo "crds/$CRD does not exist (run: cargo run -- crd > crds/$CRD)" >&2; exit 2; }
  mkdir -p charts/kekeeper/files/crds
  cp "crds/$CRD" "charts/kekeeper/files/crds/$CRD"
  echo "copied crds/$CRD -> charts/kekeeper/files/crds/$CRD"
  exit 0
fi

# Debian packages, installed only when a command is missing (re-runs cost nothing).
# command:package pairs.
APT_TOOLS="lua5.4:lua5.4 lua5.1:lua5.1 promtool:prometheus"
missing=()
[[ "${1:-}" == venv ]] && APT_TOOLS=""
for pair in $APT_TOOLS; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if (( ${#missing[@]} )); then
  echo "installing ${missing[*]} (apt)" >&2
  apt-get update -qq
  # --no-install-recommends: promtool is all we want from the prometheus package.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
fi

VENV=.venv-helm
# Requirements for the chart tests; the stamp makes re-runs skip pip entirely.
REQS="helm-python-sdk pytest pyyaml jsonschema kubernetes-validate cel-python"
STAMP="$VENV/.chart-test-reqs"

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$REQS" ]]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $REQS
  echo "$REQS" > "$STAMP"
fi
[[ "${1:-}" == venv ]] && exit 0

exec "$VENV/bin/python" -m pytest -q tests/chart tests/gitops "$@"
