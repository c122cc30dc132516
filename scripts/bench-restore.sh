#!/usr/bin/env bash
# What a restore from the key store costs (docs/disaster-recovery.md): a RecordingKeyConfig of
# 100 organisations, its key pairs in LocalStack's S3, restored on a rebuilt cluster by the real
# `kekeeper run`. Prints the time to Ready, the time to the custody check of the restored pairs,
# the operator's API writes, S3 requests and KMS calls. Starts LocalStack (KMS and S3) and stops
# it on exit.
#
#   scripts/bench-restore.sh [--real]
#
# --real runs it on the real control plane (scripts/control-plane.sh, started and stopped here)
# instead of kube-sim.
set -euo pipefail
cd "$(dirname "$0")/.."

real=false
if [ "${1:-}" = "--real" ]; then
  real=true
fi

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

cargo test --test e2e_keystore restoring_100_organisations -- --include-ignored --nocapture 2>&1 |
  tee /dev/stderr | grep -E '^restore of' || { echo "bench-restore: no measurement" >&2; exit 1; }
