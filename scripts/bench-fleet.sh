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
#
# Only the 10,000 run (cold start, steady state and restart on the in-process KMS stand-in):
#   scripts/bench-fleet.sh --resources 0 --quota 0 --onboard 0 --big 10000
# LocalStack is not started when no part needs it (--resources 0 --quota 0).
set -euo pipefail
cd "$(dirname "$0")/.."

real=false
if [ "${1:-}" = "--real" ]; then
  real=true
  shift
fi

# The parts that run on LocalStack: the fleet (--resources, 1000 by default) and the quota
# row (--quota, 24 by default).
localstack=false
resources=1000 quota=24
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --resources) resources="${args[i+1]}" ;;
    --quota) quota="${args[i+1]}" ;;
  esac
done
if [ "$resources" != 0 ] || [ "$quota" != 0 ]; then
  localstack=true
fi

KEKEEPER_TEST_KUBECTL="$(scripts/kubectl.sh)"
export KEKEEPER_TEST_KUBECTL
trap 'if $localstack; then scripts/kms-emulator.sh stop; fi; if $real; then scripts/control-plane.sh stop; fi' EXIT
if $localstack; then
  scripts/kms-emulator.sh install
  emulator_env="$(scripts/kms-emulator.sh start)"
  eval "$emulator_env"
  export KEKEEPER_TEST_KMS_ENDPOINT="$AWS_ENDPOINT_URL_KMS"
  export AWS_ENDPOINT_URL_KMS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION
fi
if $real; then
  control_plane_env="$(scripts/control-plane.sh start)"
  eval "$control_plane_env"
  export KEKEEPER_TEST_CLUSTER=real
fi

cargo bench --bench fleet -- "$@"
