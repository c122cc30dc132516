#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this): formatting and lints, the
# Helm chart rendered by the real Helm engine, unit tests, reconcile scenarios, kube-sim's
# conformance tests, and the integration and end-to-end tests against a local KMS emulator
# (LocalStack, started here and stopped on exit) and kube-sim driven by kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

step "Helm chart (real Helm engine via helm-python-sdk); renders go to target/chart-renders/"
scripts/chart-test.sh

step "tools: KMS emulator (LocalStack) and kubectl"
scripts/kms-emulator.sh install
KEKEEPER_TEST_KUBECTL="$(scripts/kubectl.sh)"
export KEKEEPER_TEST_KUBECTL
trap 'scripts/kms-emulator.sh stop' EXIT
# An assignment keeps start's exit status (a bare eval "$(...)" would hide a failed start).
emulator_env="$(scripts/kms-emulator.sh start)"
eval "$emulator_env"
export KEKEEPER_TEST_KMS_ENDPOINT="$AWS_ENDPOINT_URL_KMS"
export AWS_ENDPOINT_URL_KMS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION

step "cargo test --workspace"
cargo test --workspace
