#!/usr/bin/env bash
# The operator image as an OCI archive, without Docker: Debian's buildah (vfs storage under
# target/image/, no daemon), `from scratch` plus the release binary, the shared libraries it
# links (ldd), CA certificates, /etc/passwd and /etc/group entries for 65532 (nonroot) and a
# world-writable /tmp.
#
#   scripts/build-image.sh            -> target/image/kekeeper.oci.tar (tag localhost/kekeeper:dev)
#
# Environment: KEKEEPER_IMAGE_BINARY (use this binary instead of `cargo build --release`),
# KEKEEPER_IMAGE_OUT (archive path), KEKEEPER_IMAGE_TAG (name stored in the archive),
# KEKEEPER_IMAGE_VERSION (the org.opencontainers.image.version label, default Cargo.toml's
# version; scripts/release.sh builds its image through this script).
#
# Same layout as the Dockerfile's image (gcr.io/distroless/cc-debian12:nonroot + /kekeeper):
# the binary at /kekeeper, ENTRYPOINT ["/kekeeper"], CMD ["run"], USER 65532:65532, port
# 8080, glibc/libgcc from Debian 12 at their Debian paths, CA bundle at
# /etc/ssl/certs/ca-certificates.crt. Load it with `skopeo copy oci-archive:... docker://...` or
# `podman load -i ...`.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${KEKEEPER_IMAGE_OUT:-target/image/kekeeper.oci.tar}"
TAG="${KEKEEPER_IMAGE_TAG:-localhost/kekeeper:dev}"
VERSION="${KEKEEPER_IMAGE_VERSION:-$(python3 scripts/versions.py print)}"
WORK="target/image"
log() { echo "build-image: $*" >&2; }

need() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v strip >/dev/null || missing+=(binutils)
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

release_binary() {
  if [[ -n "${KEKEEPER_IMAGE_BINARY:-}" ]]; then
    echo "$KEKEEPER_IMAGE_BINARY"
    return
  fi
  log "cargo build --release --locked --bin kekeeper"
  cargo build --release --locked --bin kekeeper --message-format=json-render-diagnostics \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "kekeeper" and m.get("executable"):
        print(m["executable"])'
}

# The root filesystem: binary, the libraries `ldd` names (at the same paths), CA bundle, users.
stage_rootfs() {
  local binary="$1" rootfs="$2" lib
  rm -rf "$rootfs"
  mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp"
  install -m 0755 "$binary" "$rootfs/kekeeper"
  strip "$rootfs/kekeeper"
  for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  # The same entries distroless ships: root, nobody and nonroot (65532).
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$rootfs/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$rootfs/etc/group"
  chmod 1777 "$rootfs/tmp"
  chown -R 0:0 "$rootfs"
}

main() {
  [[ "$(id -u)" == 0 ]] || { log "needs root (apt-get, buildah mount)"; exit 2; }
  need
  local binary
  binary="$(release_binary)"
  [[ -x "$binary" ]] || { log "no release binary (got '$binary')"; exit 1; }
  mkdir -p "$WORK" "$(dirname "$OUT")"
  stage_rootfs "$binary" "$WORK/rootfs"

  local bh=(buildah --storage-driver vfs --root "$PWD/$WORK/storage" --runroot "$PWD/$WORK/run")
  local ctr
  ctr="$("${bh[@]}" from --name kekeeper-image-build scratch)"
  trap '"${bh[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
  # Copied into the mounted container (root: `buildah mount` of vfs storage) so that
  # ownership is kept: all root's, except /home/nonroot (65532, as in distroless).
  local mnt
  mnt="$("${bh[@]}" mount "$ctr")"
  cp -a "$WORK/rootfs/." "$mnt/"
  install -d -o 65532 -g 65532 -m 0700 "$mnt/home/nonroot"
  "${bh[@]}" umount "$ctr" >/dev/null
  "${bh[@]}" config \
    --user 65532:65532 --workingdir / --port 8080 --created-by scripts/build-image.sh \
    --entrypoint '["/kekeeper"]' --cmd run \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --label org.opencontainers.image.title=kekeeper \
    --label "org.opencontainers.image.description=Kubernetes operator for call-recording KEK pairs under your AWS KMS key" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label "org.opencontainers.image.version=$VERSION" \
    "$ctr"
  rm -f "$OUT"
  "${bh[@]}" commit --quiet --format oci --rm "$ctr" "oci-archive:$OUT:$TAG" >/dev/null
  trap - EXIT
  log "wrote $OUT ($(du -h "$OUT" | cut -f1), $TAG)"
}

main "$@"
