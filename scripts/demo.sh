#!/usr/bin/env bash
# The main job on an embedded default, on this machine alone: a local KMS endpoint (LocalStack),
# a local Kubernetes API (kube-sim), the operator, a sample RecordingKeyConfig; then its status
# and key-pair history, a "change key now", and the history again; every key pair is also kept
# in an S3 key store (LocalStack), as a cluster rebuilt from Git would need. Everything it starts is
# stopped when it ends. `scripts/demo.sh --real` runs the same story on the real control plane
# (etcd, kube-apiserver, kube-controller-manager built from source: docs/testing.md).
set -euo pipefail
REAL=false
case "${1:-}" in
  --real) REAL=true ;;
  "") ;;
  *) echo "usage: $0 [--real]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
ROOT="$PWD"
WORK="$ROOT/.work/demo"
rm -rf "$WORK" && mkdir -p "$WORK"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/kms-emulator.sh stop >/dev/null 2>&1 || true
  if $REAL; then scripts/control-plane.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

say "Installing what the demo needs (LocalStack KMS emulator, kubectl if missing) and building"
scripts/kms-emulator.sh install
KUBECTL="$(scripts/kubectl.sh)"
cargo build --quiet --bin kekeeper --bin kube-sim --package kekeeper --package kube-sim
KEKEEPER="$ROOT/target/debug/kekeeper"

say "Starting the local KMS endpoint and creating a customer-managed key with an alias"
scripts/kms-emulator.sh stop >/dev/null 2>&1 || true
emulator_env="$(scripts/kms-emulator.sh start)"
eval "$emulator_env"
export AWS_ENDPOINT_URL_KMS AWS_ENDPOINT_URL_S3 AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION
ALIAS_ARN="$(scripts/kms-emulator.sh create-key kekeeper-demo)"
echo "alias: $ALIAS_ARN"
# The off-cluster key store (docs/disaster-recovery.md): LocalStack's S3 beside its KMS.
KEY_STORE="$(scripts/kms-emulator.sh create-bucket kekeeper-demo)/demo"
echo "key store: $KEY_STORE"

if $REAL; then
  say "Starting the real control plane (etcd, kube-apiserver, kube-controller-manager; built once, cached under .work/)"
  control_plane_env="$(scripts/control-plane.sh start)"
  eval "$control_plane_env"
  "$KUBECTL" version 2>/dev/null | grep Server
else
  say "Starting kube-sim, the local Kubernetes API"
  export KUBECONFIG="$WORK/kubeconfig"
  "$ROOT/target/debug/kube-sim" --listen 127.0.0.1:0 --kubeconfig "$KUBECONFIG" >"$WORK/kube-sim.out" 2>"$WORK/kube-sim.log" &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q listening "$WORK/kube-sim.out" 2>/dev/null && break; sleep 0.1; done
  head -n 1 "$WORK/kube-sim.out"
fi
kubectl() { "$KUBECTL" --cache-dir "$WORK/kubectl-cache" "$@"; }

say "Installing the CRD (crds/) and starting the operator (every key pair also goes to $KEY_STORE)"
kubectl apply -f crds/
kubectl wait --for=condition=Established crd/recordingkeyconfigs.kekeeper.io --timeout=30s
"$KEKEEPER" run --metrics-addr 127.0.0.1:0 --key-store "$KEY_STORE" >"$WORK/operator.log" 2>&1 &
pids+=($!)

say "kekeeper test: the Test button, before anything is stored"
"$KEKEEPER" test -f examples/recordingkeyconfig.yaml

say "Applying the sample RecordingKeyConfig (examples/recordingkeyconfig.yaml)"
kubectl apply -f examples/recordingkeyconfig.yaml
kubectl wait --for=condition=Ready rkc/recordings --timeout=120s
kubectl get rkc
say "Status"
kubectl get rkc recordings -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
say "Key-pair history (newest first)"
history() {
  kubectl get rkc recordings -o jsonpath='{range .status.keyPairHistory[*]}{.createdAt}  {.organizationId}  {.reason}  {.secretName}  retired={.retiredAt}{"\n"}{end}'
}
history
say "Key-pair Secrets (the private key is stored only as the KMS ciphertext blob)"
kubectl get secrets -l kekeeper.io/config=recordings -L kekeeper.io/state

say "Change key now: kekeeper rotate recordings"
"$KEKEEPER" rotate recordings -n default --wait --timeout 2m
for _ in $(seq 1 120); do
  [ "$(kubectl get secrets -l kekeeper.io/config=recordings,kekeeper.io/state=retired -o name | wc -l)" -ge 2 ] && break
  sleep 0.5
done
say "Key-pair history after the rotation"
history
kubectl get secrets -l kekeeper.io/config=recordings -L kekeeper.io/state
say "kekeeper status: conditions, key pairs, rotation, KMS errors, history and events"
"$KEKEEPER" status recordings -n default
say "Done: the operator log is in .work/demo/operator.log; everything started is stopped now"
