#!/usr/bin/env bash
# A real Kubernetes control plane for the end-to-end tests and the demo: etcd, kube-apiserver and
# kube-controller-manager built from the official sources (tests/control-plane, a dev-only Go
# module) and run as processes on 127.0.0.1. No scheduler or kubelet: Pods never run; the
# operator runs as a process. docs/testing.md tells what runs against which server.
#
#   scripts/control-plane.sh build             # builds the binaries once per release, under .work/
#   eval "$(scripts/control-plane.sh start)"   # builds if needed, starts, prints the exports
#   scripts/control-plane.sh env               # the exports of the running control plane
#   scripts/control-plane.sh stop              # stops every process it started
#
# start prints `export KUBECONFIG=<admin kubeconfig> KEKEEPER_CONTROL_PLANE=<state dir>`. The
# state dir holds ca.crt, the admin kubeconfig (client certificate in system:masters), the
# kubeconfigs of two users with no bindings (editor.kubeconfig, viewer.kubeconfig), the
# service-account signing key, the component logs and the API server's audit log (audit.log,
# one JSON event per request, which the tests read as the request log).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODULE="$ROOT/tests/control-plane"
RELEASE="$(cat "$MODULE/RELEASE")"
# The built binaries are a cache, like Cargo's and Go's own: kept per release in the user's cache
# directory, so a fresh clone on the same machine (CI) does not build them again; built when
# missing (docs/testing.md, "Disk").
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/kekeeper"
BIN="${KEKEEPER_CONTROL_PLANE_BIN:-$CACHE/control-plane/$RELEASE}"
STATE="${KEKEEPER_CONTROL_PLANE_STATE:-$ROOT/.work/control-plane/run}"
# Seconds each component has to become ready.
TIMEOUT="${KEKEEPER_CONTROL_PLANE_TIMEOUT:-120}"

log() { echo "control-plane: $*" >&2; }

build() {
  if [ -x "$BIN/etcd" ] && [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
    log "$RELEASE already built in $BIN"
    return
  fi
  command -v go >/dev/null || { log "go not found: the control plane is built from source with Go"; exit 2; }
  mkdir -p "$BIN"
  local minor="${RELEASE#v1.}"; minor="${minor%%.*}"
  local stamp="" pkg
  # What hack/lib/version.sh stamps, so /version answers the real release.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $pkg.gitVersion=$RELEASE -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  local started=$SECONDS
  log "building etcd, kube-apiserver and kube-controller-manager $RELEASE into $BIN (cold: about 15 min on 2 cores)"
  # A build cache of its own, removed once the binaries exist: it grows to about 3 GB and the
  # binaries are kept per release, so only a new release builds again (docs/testing.md, "Disk").
  local gocache="$ROOT/.work/control-plane/gocache"
  (
    cd "$MODULE"
    export GOCACHE="$gocache"
    go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" ./cmd/etcd
    go build -trimpath -ldflags "-s -w $stamp" -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    go build -trimpath -ldflags "-s -w $stamp" -o "$BIN/kube-controller-manager.tmp" k8s.io/kubernetes/cmd/kube-controller-manager
  ) >&2
  local name
  for name in etcd kube-apiserver kube-controller-manager; do mv "$BIN/$name.tmp" "$BIN/$name"; done
  rm -rf "$gocache"
  log "built in $((SECONDS - started)) s: $(du -sh "$BIN" | cut -f1) ($(cd "$BIN" && du -h etcd kube-apiserver kube-controller-manager | awk '{printf "%s %s, ", $2, $1}'))"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# cert NAME CN [O]: a key and a certificate signed by the CA (client and server usage).
cert() {
  local name="$1" cn="$2" org="${3:-}" subject="/CN=$2"
  [ -n "$org" ] && subject="/O=$org/CN=$cn"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$STATE/pki/$name.key" -subj "$subject" \
    -out "$STATE/pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$STATE/pki/$name.csr" -CA "$STATE/pki/ca.crt" -CAkey "$STATE/pki/ca.key" \
    -CAcreateserial -days 2 -out "$STATE/pki/$name.crt" -extfile "$STATE/pki/ext.cnf" 2>/dev/null
}

# kubeconfig NAME USER: a kubeconfig for a client certificate made by `cert`.
kubeconfig() {
  local name="$1" user="$2"
  cat >"$STATE/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kekeeper-test
  cluster:
    server: https://127.0.0.1:$(cat "$STATE/apiserver-port")
    certificate-authority-data: $(base64 -w0 "$STATE/pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$STATE/pki/$name.crt")
    client-key-data: $(base64 -w0 "$STATE/pki/$name.key")
contexts:
- name: kekeeper-test
  context: {cluster: kekeeper-test, user: $user, namespace: default}
current-context: kekeeper-test
EOF
}

running() { [ -f "$STATE/pids" ] && while read -r pid; do kill -0 "$pid" 2>/dev/null && return 0; done <"$STATE/pids"; return 1; }

# launch NAME COMMAND...: in a process group of its own (setsid), so stop ends all of it.
launch() {
  local name="$1"; shift
  setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >>"$STATE/pids"
  echo $! >"$STATE/$name.pid"
}

# wait_for NAME PROBE...: until PROBE succeeds, or fail with the component's last log lines.
wait_for() {
  local name="$1"; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then
      log "$name exited; last lines of $STATE/$name.log:"; tail -n 30 "$STATE/$name.log" >&2; stop; exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "$name not ready after $TIMEOUT s; last lines of $STATE/$name.log:"; tail -n 30 "$STATE/$name.log" >&2; stop; exit 1
    fi
    sleep 0.3
  done
}

print_env() {
  echo "export KUBECONFIG=$STATE/admin.kubeconfig KEKEEPER_CONTROL_PLANE=$STATE"
}

start() {
  if running; then
    log "already running ($STATE)"
    print_env
    return
  fi
  build
  command -v openssl >/dev/null || { log "openssl not found (apt-get install openssl)"; exit 2; }
  rm -rf "$STATE"
  mkdir -p "$STATE/pki" "$STATE/etcd"
  local started=$SECONDS
  local etcd_port peer_port api_port kcm_port
  etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"; kcm_port="$(free_port)"
  echo "$api_port" >"$STATE/apiserver-port"

  # A CA made at start, a serving certificate, client certificates, service-account keys.
  openssl req -x509 -new -newkey rsa:2048 -nodes -days 2 -subj "/CN=kekeeper-test-ca" \
    -keyout "$STATE/pki/ca.key" -out "$STATE/pki/ca.crt" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" \
    >"$STATE/pki/ext.cnf"
  cert apiserver kube-apiserver
  cert admin kekeeper-admin system:masters
  cert controller-manager system:kube-controller-manager
  cert editor editor
  cert viewer viewer
  openssl genrsa -out "$STATE/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$STATE/pki/sa.key" -pubout -out "$STATE/pki/sa.pub" 2>/dev/null
  cp "$STATE/pki/ca.crt" "$STATE/ca.crt"
  kubeconfig admin kekeeper-admin
  kubeconfig controller-manager system:kube-controller-manager
  kubeconfig editor editor
  kubeconfig viewer viewer

  # Every request at Metadata level, once it is answered: the tests' request log.
  cat >"$STATE/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
EOF

  launch etcd "$BIN/etcd" --data-dir "$STATE/etcd" \
    --listen-client-url "http://127.0.0.1:$etcd_port" --listen-peer-url "http://127.0.0.1:$peer_port"
  wait_for etcd curl -sf "http://127.0.0.1:$etcd_port/health"

  # Admission: the default plugin set (NamespaceLifecycle, LimitRanger, ServiceAccount,
  # DefaultStorageClass, ResourceQuota, the admission webhooks and policies, ...) plus
  # NodeRestriction, as kubeadm configures it.
  launch kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
    --client-ca-file "$STATE/pki/ca.crt" \
    --authorization-mode RBAC \
    --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$STATE/pki/sa.pub" \
    --service-account-signing-key-file "$STATE/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/24 --endpoint-reconciler-type none \
    --audit-policy-file "$STATE/audit-policy.yaml" --audit-log-path "$STATE/audit.log" \
    --audit-log-format json --audit-log-mode blocking --audit-log-maxsize 0 \
    --profiling=false --cert-dir "$STATE/pki"
  wait_for kube-apiserver curl -sf --cacert "$STATE/pki/ca.crt" \
    --cert "$STATE/pki/admin.crt" --key "$STATE/pki/admin.key" "https://127.0.0.1:$api_port/readyz"

  launch kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
    --controllers "$CONTROLLERS" \
    --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt" \
    --use-service-account-credentials=true --profiling=false
  wait_for kube-controller-manager curl -skf "https://127.0.0.1:$kcm_port/healthz"

  local kc=("$("$ROOT/scripts/kubectl.sh")" --kubeconfig "$STATE/admin.kubeconfig")
  wait_for kube-apiserver "${kc[@]}" get clusterrole cluster-admin admin edit view
  wait_for kube-controller-manager "${kc[@]}" get serviceaccount default -n default
  # Aggregation done: `edit` carries the rules of the roles labelled aggregate-to-edit.
  wait_for kube-controller-manager bash -c \
    "${kc[*]} get clusterrole edit -o 'jsonpath={.rules[*].verbs}' | grep -q ."
  log "$RELEASE ready on https://127.0.0.1:$api_port in $((SECONDS - started)) s ($STATE)"
  print_env
}

stop() {
  if [ ! -f "$STATE/pids" ]; then
    log "not running"
    return
  fi
  local pid
  while read -r pid; do kill -TERM -- "-$pid" 2>/dev/null || true; done <"$STATE/pids"
  for _ in $(seq 1 40); do
    running || break
    sleep 0.25
  done
  while read -r pid; do kill -KILL -- "-$pid" 2>/dev/null || true; done <"$STATE/pids"
  rm -f "$STATE/pids"
  rm -rf "$STATE/etcd"
  log "stopped"
}

# The controllers a test cluster needs (no node, pod or volume controllers: nothing runs Pods).
CONTROLLERS="namespace-controller,garbage-collector-controller,clusterrole-aggregation-controller"
CONTROLLERS+=",serviceaccount-controller,serviceaccount-token-controller"
CONTROLLERS+=",root-ca-certificate-publisher-controller"
# Type-checks ValidatingAdmissionPolicies into their status (the chart's admission policy test).
CONTROLLERS+=",validatingadmissionpolicy-status-controller"

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  env) running && print_env || { log "not running"; exit 1; } ;;
  *) echo "usage: $0 {build|start|stop|env}" >&2; exit 2 ;;
esac
