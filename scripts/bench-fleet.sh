#!/usr/bin/env bash
# The fleet benchmark: the real `kekeeper run` (release build) against kube-sim with many
# RecordingKeyConfigs. Starts LocalStack (scripts/kms-emulator.sh) and stops it on exit; the
# 10k memory/resync run uses an in-process KMS stand-in, labelled as such in the table.
#
#   scripts/bench-fleet.sh [--real] [--resources 1000] [--steady-secs 60] [--day-secs 48]
#                          [--storm 300] [--big 10000] [--quota 24] [--onboard 1000]
#                          [--time-scale 20]
#
# --real runs the LocalStack fleet against the real control plane (scripts/control-plane.sh,
# started and stopped here) instead of kube-sim.
set -euo pipefail
cd "$(dirname "$0")/.."

real=false
if [ "${1:-}" = "--real" ]; then
  real=true
  shift
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
export AWS_ENDPOINT_URL_KMS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION

cargo bench --bench fleet -- "$@"
