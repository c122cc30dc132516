#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests and the integration tests
# against a local KMS emulator (LocalStack, started here and stopped on exit).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/kms-emulator.sh install
trap 'scripts/kms-emulator.sh stop' EXIT
# An assignment keeps start's exit status (a bare eval "$(...)" would hide a failed start).
emulator_env="$(scripts/kms-emulator.sh start)"
eval "$emulator_env"
export KEKEEPER_TEST_KMS_ENDPOINT="$AWS_ENDPOINT_URL_KMS"
export AWS_ENDPOINT_URL_KMS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
