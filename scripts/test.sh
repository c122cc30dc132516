#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this): formatting and lints, the
# Helm chart rendered by the real Helm engine, unit tests, reconcile scenarios, kube-sim's
# conformance tests, the integration and end-to-end tests against a local KMS emulator
# (LocalStack, started here and stopped on exit) and kube-sim driven by kubectl, and the
# operator image built with buildah and run against kube-sim and LocalStack (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
step "Helm chart (real Helm engine via helm-python-sdk); renders go to target/chart-renders/"
scripts/chart-test.sh 2>&1 | tee "$LOGS/chart.log"

step "tools: KMS emulator (LocalStack) and kubectl"
scripts/kms-emulator.sh install
KEKEEPER_TEST_KUBECTL="$(scripts/kubectl.sh)"
export KEKEEPER_TEST_KUBECTL
trap 'scripts/kms-emulator.sh stop; rm -rf "$LOGS"' EXIT
# An assignment keeps start's exit status (a bare eval "$(...)" would hide a failed start).
emulator_env="$(scripts/kms-emulator.sh start)"
eval "$emulator_env"
export KEKEEPER_TEST_KMS_ENDPOINT="$AWS_ENDPOINT_URL_KMS"
export AWS_ENDPOINT_URL_KMS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION

step "cargo test --workspace"
cargo test --workspace -- --include-ignored 2>&1 | tee "$LOGS/cargo.log"

step "operator image: built with buildah (OCI archive), run as the chart's Deployment runs it"
scripts/build-image.sh
scripts/image-test.sh 2>&1 | tee "$LOGS/image.log"
image_passed="$(grep -c '^image-test: PASS' "$LOGS/image.log" || true)"

# One closing line for the whole suite (cargo's own last line is the doc-test run of kube-sim).
chart_passed="$(grep -Eo '[0-9]+ passed' "$LOGS/chart.log" | tail -n 1 | grep -Eo '[0-9]+')"
read -r cargo_passed cargo_failed < <(awk '/^test result:/ {p += $4; f += $6} END {print p + 0, f + 0}' "$LOGS/cargo.log")
echo
echo "${chart_passed:-0} chart tests, $cargo_passed Rust tests and $image_passed image test"
echo "tests: $((chart_passed + cargo_passed + image_passed)) passed, $cargo_failed failed"
