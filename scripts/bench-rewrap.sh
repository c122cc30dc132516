#!/usr/bin/env bash
# The rewrap benchmark of issue 28: the real `kekeeper run` (the test build) against kube-sim
# (or, with --real, the real control plane) and LocalStack KMS behind a counting proxy; PAIRS
# retained key pairs (resources of ten organisations) rewrapped onto a new KMS key after an
# alias move. Prints the time, the KMS calls per pair and the operator's API writes.
#
#   scripts/bench-rewrap.sh [--real] [PAIRS]      (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."

real=false
if [ "${1:-}" = "--real" ]; then
  real=true
  shift
fi
pairs="${1:-1000}"

scripts/kms-emulator.sh install
KEKEEPER_TEST_KUBECTL="$(scripts/kubectl.sh)"
export KEKEEPER_TEST_KUBECTL
trap 'scripts/kms-emulator.sh stop; $real && scripts/control-plane.sh stop' EXIT
emulator_env="$(scripts/kms-emulator.sh start)"
eval "$emulator_env"
if $real; then
  control_plane_env="$(scripts/control-plane.sh start)"
  eval "$control_plane_env"
  export KEKEEPER_TEST_CLUSTER=real
fi
export KEKEEPER_TEST_KMS_ENDPOINT="$AWS_ENDPOINT_URL_KMS"
export AWS_ENDPOINT_URL_KMS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION
export KEKEEPER_REWRAP_PAIRS="$pairs"

cargo test --test e2e_rewrap a_rewrap_of_many_retained_pairs -- --include-ignored --nocapture
