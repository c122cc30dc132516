#!/usr/bin/env bash
# Runs the built operator image (target/image/kekeeper.oci.tar, from scripts/build-image.sh) the
# way the chart's Deployment runs it, and waits for a RecordingKeyConfig to become Ready.
#
#   scripts/image-test.sh        (root: it needs a network namespace and buildah)
#
# - The container is `buildah run --isolation chroot` of the archive, as user 65532, with the
#   image's ENTRYPOINT followed by exactly the `args` of the Deployment Helm rendered
#   (target/chart-renders/default.yaml, from scripts/chart-test.sh) and exactly its `env`
#   (fieldRef values resolved as the kubelet would), plus what the cluster would provide:
#   AWS credentials/endpoint for LocalStack and a kubeconfig (mounted read-only) holding the
#   chart's ServiceAccount token, in place of the in-cluster service-account mount. /tmp is a
#   tmpfs like the chart's emptyDir. buildah has no read-only root filesystem, so every path
#   of the image is bind-mounted read-only onto itself (checked in the process's mountinfo).
# - The API server has the chart's RBAC objects, ServiceAccount and CRD applied, so the operator
#   works with exactly the chart's permissions, authenticated by a token of that ServiceAccount
#   from the TokenRequest API. KEKEEPER_TEST_CLUSTER chooses the server: `real` (what
#   scripts/test.sh runs) starts a control plane of its own (scripts/control-plane.sh, state in
#   the test's temporary directory, the real RBAC authorizer); `sim` (the default) kube-sim
#   with --rbac.
# - Everything runs in a private network namespace (unshare --net): the rendered
#   --metrics-addr=0.0.0.0:8080 binds nothing outside it, and nothing can clash with the host.
#   The API server, LocalStack (state in .work/kms-image) and the container are stopped on exit.
#
# KEKEEPER_IMAGE_TEST_TIMEOUT: seconds to wait for Ready (default 180).
# KEKEEPER_IMAGE_TEST_RENDER: the rendered chart to run (default the chart tests' default.yaml);
# the release test passes the manifest Helm installed from the registry.
# KEKEEPER_IMAGE_PULL=1: run the image the rendered Deployment names, pulled by digest from its
# registry with buildah (plain HTTP: the test registry of scripts/registry.sh), instead of the
# archive; the pulled image's digest must be the pinned one (docs/testing.md, "The release test").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
log() { echo "image-test: $*" >&2; }

ARCHIVE="${KEKEEPER_IMAGE_OUT:-target/image/kekeeper.oci.tar}"
RENDER="${KEKEEPER_IMAGE_TEST_RENDER:-${KEKEEPER_CHART_RENDERS_DIR:-target/chart-renders}/default.yaml}"
PY="$ROOT/.venv-helm/bin/python"
CLUSTER="${KEKEEPER_TEST_CLUSTER:-sim}"
PULL="${KEKEEPER_IMAGE_PULL:-}"
BH=(buildah --storage-driver vfs --root "$ROOT/target/image/storage"
  --runroot "$ROOT/target/image/run")

# The image the rendered Deployment names.
deployment_image() {
  "$PY" -c 'import sys, yaml
print(next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment")
      ["spec"]["template"]["spec"]["containers"][0]["image"])' "$RENDER"
}

# What the kubelet would do with the Deployment's image: pull it by its digest from the registry.
pull_image() {
  local image
  image="$(deployment_image)"
  [[ "$image" == *@sha256:* ]] || { log "the Deployment's image $image is not pinned by digest"; exit 1; }
  log "pulling $image (buildah, plain HTTP)"
  "${BH[@]}" pull --quiet --tls-verify=false "docker://$image" >/dev/null
}

# Outside the namespace: what needs the network (apt, pip, cargo), then re-run inside it.
prepare() {
  [[ -n "$PULL" || -f "$ARCHIVE" ]] || { log "$ARCHIVE missing: run scripts/build-image.sh"; exit 2; }
  [[ -f "$RENDER" && -x "$PY" ]] || { log "$RENDER missing: run scripts/chart-test.sh"; exit 2; }
  [[ "$(id -u)" == 0 ]] || { log "needs root (unshare --net, buildah run)"; exit 2; }
  if ! command -v buildah >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq buildah >/dev/null
  fi
  [[ -z "$PULL" ]] || pull_image
  scripts/kms-emulator.sh install
  if [[ "$CLUSTER" == real ]]; then
    scripts/control-plane.sh build
  else
    cargo build --quiet -p kube-sim --bin kube-sim
  fi
  exec unshare --net -- "$0" --in-netns
}

cleanup() {
  set +e
  [[ -n "$OP_PID" ]] && kill -TERM "$OP_PID" 2>/dev/null && wait "$OP_PID" 2>/dev/null
  [[ -n "$CTR" ]] && "${BH[@]}" rm "$CTR" >/dev/null
  # The image `buildah from` unpacked into our private storage (target/image/storage).
  "${BH[@]}" rmi --all >/dev/null 2>&1
  [[ -n "$SIM_PID" ]] && kill -TERM "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null
  [[ "$CLUSTER" == real ]] && KEKEEPER_CONTROL_PLANE_STATE="$WORK/control-plane" \
    scripts/control-plane.sh stop
  scripts/kms-emulator.sh stop
  rm -rf "$WORK"
}

start_kube_sim() {
  log "kube-sim --rbac"
  "${CARGO_TARGET_DIR:-target}/debug/kube-sim" --rbac --kubeconfig "$WORK/admin.kubeconfig" \
    >"$WORK/kube-sim.out" 2>"$WORK/kube-sim.log" &
  SIM_PID=$!
  for _ in $(seq 1 100); do
    grep -q listening "$WORK/kube-sim.out" 2>/dev/null && break
    sleep 0.1
  done
  grep -q listening "$WORK/kube-sim.out" \
    || { log "kube-sim did not start"; cat "$WORK/kube-sim.log" >&2; exit 1; }
  export KUBECONFIG="$WORK/admin.kubeconfig"
}

start_control_plane() {
  local exports
  log "the real control plane (scripts/control-plane.sh)"
  exports="$(KEKEEPER_CONTROL_PLANE_STATE="$WORK/control-plane" scripts/control-plane.sh start)"
  eval "$exports"
  cp "$KUBECONFIG" "$WORK/admin.kubeconfig"
}

# The Deployment's container as rendered: args, and env with fieldRefs resolved as the kubelet
# resolves them for a pod; the other rendered objects as a List; prints the namespace.
read_render() {
  "$PY" - "$RENDER" "$WORK" <<'PY'
import json, sys, yaml
render, work = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(render)) if d]
deploy = next(d for d in docs if d["kind"] == "Deployment")
ns = deploy["metadata"]["namespace"]
pod = {"metadata.name": f"{deploy['metadata']['name']}-5d4f7b9c8-image", "metadata.namespace": ns}
c = deploy["spec"]["template"]["spec"]["containers"][0]
assert "command" not in c, "the test runs the image's ENTRYPOINT"
env = []
for e in c.get("env", []):
    if "value" in e:
        env.append(f"{e['name']}={e['value']}")
    else:
        env.append(f"{e['name']}={pod[e['valueFrom']['fieldRef']['fieldPath']]}")
open(f"{work}/args", "w").write("\0".join(c["args"]))
open(f"{work}/env", "w").write("\0".join(env))
# As `helm install` creates them: the `helm test` hook Pod only comes with `helm test`.
objects = [d for d in docs if d["kind"] != "Deployment"
           and "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
json.dump({"apiVersion": "v1", "kind": "List", "items": objects}, open(f"{work}/objects.json", "w"))
open(f"{work}/serviceaccount", "w").write(
    next(d["metadata"]["name"] for d in objects if d["kind"] == "ServiceAccount"))
print(ns)
PY
}

# The chart's RBAC, ServiceAccount and CRD in kube-sim; a kubeconfig with the SA's token.
install_chart_objects() {
  local token
  log "the chart's objects (RBAC, ServiceAccount, CRD) in the API server ($CLUSTER)"
  "$KUBECTL" create namespace "$NAMESPACE" >/dev/null
  "$KUBECTL" apply --server-side -f "$WORK/objects.json" >/dev/null
  "$KUBECTL" wait --for=condition=Established crd/recordingkeyconfigs.kekeeper.io \
    --timeout=30s >/dev/null
  token="$("$KUBECTL" -n "$NAMESPACE" create token "$(cat "$WORK/serviceaccount")")"
  # The admin kubeconfig's server and CA; the token is the only credential.
  "$KUBECTL" config view --raw --minify -o json | "$PY" -c '
import json, sys
kc = json.load(sys.stdin)
kc["users"] = [{"name": "kekeeper", "user": {"token": sys.argv[1]}}]
kc["contexts"][0]["context"]["user"] = "kekeeper"
json.dump(kc, open(sys.argv[2], "w"))' "$token" "$WORK/operator.kubeconfig"
  chmod 0644 "$WORK/operator.kubeconfig"
}

# buildah has no read-only root filesystem: every path of the image (top-level entries, and
# those of /etc, where buildah mounts resolv.conf/hosts/hostname as the kubelet does) is
# bind-mounted read-only onto itself instead, except /tmp (checked later in mountinfo).
run_image() {
  local rootfs path e flags=()
  log "the image, as uid 65532, with the rendered args and env"
  if [[ -n "$PULL" ]]; then
    local image
    image="$(deployment_image)"
    CTR="$("${BH[@]}" from --quiet --pull=never --name kekeeper-image-test "$image")"
    [[ "$("${BH[@]}" inspect --format '{{.FromImageDigest}}' "$CTR")" == "${image#*@}" ]] \
      || { log "the pulled image is not ${image#*@}"; exit 1; }
  else
    CTR="$("${BH[@]}" from --quiet --name kekeeper-image-test "oci-archive:$ROOT/$ARCHIVE")"
  fi
  mapfile -t ENTRYPOINT < <("${BH[@]}" inspect \
    --format '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}' "$CTR" | sed '/^$/d')
  rootfs="$("${BH[@]}" mount "$CTR")"
  for path in "$rootfs"/* "$rootfs"/etc/*; do
    path="${path#"$rootfs"}"
    [[ "$path" == /tmp || "$path" == /etc ]] && continue
    RO_PATHS+=("$path")
    flags+=(--volume "$rootfs$path:$path:ro")
  done
  # What the cluster would give the pod: AWS credentials (IRSA) and API access (the SA token).
  for e in "${ENVS[@]}" "AWS_ENDPOINT_URL_KMS=$AWS_ENDPOINT_URL_KMS" \
    "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" \
    "AWS_REGION=$AWS_REGION" "KUBECONFIG=/var/run/kekeeper/kubeconfig"; do
    flags+=(--env "$e")
  done
  "${BH[@]}" run --isolation chroot --user 65532:65532 "${flags[@]}" \
    --mount type=tmpfs,destination=/tmp \
    --volume "$WORK/operator.kubeconfig:/var/run/kekeeper/kubeconfig:ro" \
    "$CTR" -- "${ENTRYPOINT[@]}" "${ARGS[@]}" >"$WORK/operator.log" 2>&1 &
  OP_PID=$!
}

create_config() {
  log "a RecordingKeyConfig under the LocalStack key"
  "$KUBECTL" apply -f - >/dev/null <<EOF
apiVersion: kekeeper.io/v1alpha1
kind: RecordingKeyConfig
metadata: {name: image-test, namespace: default}
spec:
  kmsKeyAliasArn: $ALIAS_ARN
  organizationIds: [3fa85f64-5717-4562-b3fc-2c963f66afa6]
EOF
}

wait_ready() {
  local deadline=$((SECONDS + ${KEKEEPER_IMAGE_TEST_TIMEOUT:-180})) state
  until "$KUBECTL" wait --for=condition=Ready rkc/image-test -n default --timeout=5s 2>/dev/null
  do
    if ! kill -0 "$OP_PID" 2>/dev/null || ((SECONDS >= deadline)); then
      state="$(kill -0 "$OP_PID" 2>/dev/null && echo running || echo exited)"
      log "rkc/image-test not Ready (operator $state); its log:"
      tail -n 40 "$WORK/operator.log" >&2
      "$KUBECTL" get rkc/image-test -n default -o yaml >&2
      exit 1
    fi
  done
}

descendants() { local p; for p in $(pgrep -P "$1"); do echo "$p"; descendants "$p"; done; }

# The operator process (a descendant of buildah run) runs as 65532, the rendered runAsUser,
# sees every image path read-only and /tmp writable, and has written a key-pair Secret.
check_operator() {
  local p op="" uid="" path
  for p in $(descendants "$OP_PID"); do
    if [[ "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" == "${ENTRYPOINT[0]} ${ARGS[0]} "* ]]
    then
      op="$p" uid="$(awk '/^Uid:/ {print $2}' "/proc/$p/status")"
    fi
  done
  [[ "$uid" == 65532 ]] || { log "operator uid is '$uid', expected 65532"; exit 1; }
  mount_opts() { awk -v m="$1" '$5 == m {print $6}' "/proc/$op/mountinfo" | tail -n 1; }
  for path in "${RO_PATHS[@]}"; do
    [[ "$(mount_opts "$path")" == ro* ]] \
      || { log "$path is not read-only in the container: '$(mount_opts "$path")'"; exit 1; }
  done
  [[ "$(mount_opts /tmp)" == rw* ]] || { log "/tmp is not writable in the container"; exit 1; }
  "$KUBECTL" get secrets -n default --field-selector type=kekeeper.io/key-pair -o name \
    | grep -q . || { log "no key-pair Secret written"; exit 1; }
}

[[ "${1:-}" == "--in-netns" ]] || prepare

ip link set lo up
WORK="$(mktemp -d)"
KUBECTL="$(scripts/kubectl.sh)"
export KEKEEPER_KMS_STATE="$ROOT/.work/kms-image"
SIM_PID="" OP_PID="" CTR="" RO_PATHS=() ENTRYPOINT=()
trap cleanup EXIT

if [[ "$CLUSTER" == real ]]; then start_control_plane; else start_kube_sim; fi
log "LocalStack (KMS) and a key"
eval "$(scripts/kms-emulator.sh start)"
ALIAS_ARN="$(scripts/kms-emulator.sh create-key kekeeper-image-test)"
NAMESPACE="$(read_render)"
mapfile -d '' ARGS <"$WORK/args"
mapfile -d '' ENVS <"$WORK/env"
install_chart_objects
run_image
create_config
wait_ready
check_operator
log "PASS: the image${PULL:+ pulled from the registry by digest} ran as 65532, read-only but /tmp, with the chart's args, env and RBAC" \
  "on the $CLUSTER API server; rkc/image-test is Ready"
