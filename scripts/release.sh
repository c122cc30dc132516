#!/usr/bin/env bash
# A release of kekeeper: one version for the binary, the image and the chart (docs/releasing.md).
#
#   scripts/release.sh VERSION [--registry HOST[:PORT]/PATH] [--plain-http] [--no-push] [--out DIR]
#
# 1. scripts/versions.py check: VERSION, Cargo.toml, Chart.yaml version/appVersion, the image
#    tag and CHANGELOG.md's newest entry must agree, and the release binary must say VERSION.
# 2. Builds, into DIR (default target/release-artifacts/VERSION):
#    - kekeeper-VERSION.oci.tar: the image, by scripts/build-image.sh (buildah; root), from the
#      release binary built here once (`cargo build --release --locked`, nothing to do when
#      it is fresh);
#    - kekeeper-VERSION-linux-amd64.tar.gz: the stripped binary, LICENSE and README.md, in a
#      reproducible tar (sorted, owner 0, mtime of the release commit);
#    - kekeeper-VERSION.cdx.json: a CycloneDX 1.5 SBOM of the binary's crates (cargo-cyclonedx,
#      installed with `cargo install --locked` into the user's cache directory when missing);
#    - kekeeper-VERSION.tgz: the chart, whose values.yaml names the pushed image by digest
#      (image.repository = REGISTRY/kekeeper, image.digest = sha256:...), packaged and linted
#      with the Helm engine (helm-python-sdk, scripts/release_chart.py);
#    - SHA256SUMS of the four, and release.env (the image, its digest, the chart reference).
# 3. Pushes the image to REGISTRY/kekeeper:VERSION (crane, scripts/registry.sh crane; crane
#    reads registry credentials from ~/.docker/config.json: `crane auth login`) and the chart to
#    oci://REGISTRY/charts/kekeeper:VERSION (Helm engine; Helm's registry login).
#
# REGISTRY defaults to where the project publishes: the registry of values.yaml's
# image.repository. --plain-http talks HTTP to a registry without TLS (the test registry of
# scripts/registry.sh). --no-push builds everything, pushes nothing; the chart then keeps
# values.yaml's repository and no digest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
log() { echo "release: $*" >&2; }
die() { log "$*"; exit 1; }

CDX_VERSION=0.5.9
VERSION="" REGISTRY="" OUT="" PLAIN_HTTP=false PUSH=true
while (($#)); do
  case "$1" in
    --registry) REGISTRY="${2:?--registry HOST[:PORT]/PATH}"; shift 2 ;;
    --out) OUT="${2:?--out DIR}"; shift 2 ;;
    --plain-http) PLAIN_HTTP=true; shift ;;
    --no-push) PUSH=false; shift ;;
    -*) echo "usage: $0 VERSION [--registry HOST[:PORT]/PATH] [--plain-http] [--no-push] [--out DIR]" >&2; exit 2 ;;
    *) [[ -z "$VERSION" ]] || { log "one VERSION only"; exit 2; }; VERSION="$1"; shift ;;
  esac
done
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] \
  || { log "VERSION must be X.Y.Z (got '${VERSION}')"; exit 2; }
if [[ -z "$REGISTRY" ]]; then
  REGISTRY="$(sed -n 's#^  repository: "\{0,1\}\([^"]*\)/kekeeper"\{0,1\}$#\1#p' charts/kekeeper/values.yaml)"
fi
REGISTRY="${REGISTRY%/}"
[[ "$REGISTRY" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$ ]] \
  || { log "--registry must be HOST[:PORT]/PATH (got '$REGISTRY')"; exit 2; }
OUT="$(mkdir -p "${OUT:-target/release-artifacts/$VERSION}" && cd "${OUT:-target/release-artifacts/$VERSION}" && pwd)"
IMAGE="$REGISTRY/kekeeper"
CHART_REMOTE="oci://$REGISTRY/charts"
NAME="kekeeper-$VERSION"

check_versions() {
  python3 scripts/versions.py check --version "$VERSION" --image-tag "$VERSION" >&2 \
    || die "fix the versions first (docs/releasing.md)"
}

release_binary() {
  local target_dir binary
  log "cargo build --release --locked --bin kekeeper"
  cargo build --release --locked --bin kekeeper >&2
  target_dir="$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  binary="$target_dir/release/kekeeper"
  [[ "$("$binary" --version)" == "kekeeper $VERSION" ]] \
    || die "$binary says '$("$binary" --version)', not 'kekeeper $VERSION'"
  echo "$binary"
}

build_image() {
  log "the image (scripts/build-image.sh)"
  KEKEEPER_IMAGE_BINARY="$1" KEKEEPER_IMAGE_OUT="$OUT/$NAME.oci.tar" \
    KEKEEPER_IMAGE_TAG="$IMAGE:$VERSION" KEKEEPER_IMAGE_VERSION="$VERSION" \
    scripts/build-image.sh
}

# The manifest digest of the archive's one image (what the registry will name it by).
archive_digest() {
  tar -xOf "$OUT/$NAME.oci.tar" index.json \
    | python3 -c 'import json, sys; m = json.load(sys.stdin)["manifests"]; assert len(m) == 1, m; print(m[0]["digest"])'
}

cli_tarball() {
  local stage="$OUT/stage/$NAME-linux-amd64" epoch
  [[ "$(uname -m)" == x86_64 ]] || die "the CLI tarball is linux/amd64: build on x86_64"
  log "$NAME-linux-amd64.tar.gz"
  rm -rf "$OUT/stage"
  mkdir -p "$stage"
  install -m 0755 "$1" "$stage/kekeeper"
  strip "$stage/kekeeper"
  install -m 0644 LICENSE README.md "$stage/"
  epoch="$(git log -1 --format=%ct)"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -C "$OUT/stage" -cf - "$NAME-linux-amd64" | gzip -9n >"$OUT/$NAME-linux-amd64.tar.gz"
  rm -rf "$OUT/stage"
}

# cargo-cyclonedx writes NAME.json beside every Cargo.toml of the workspace; the root package's
# is the binary's SBOM (normal and build dependencies for the host target, no dev-dependencies).
sbom() {
  local tool
  tool="$(command -v cargo-cyclonedx || true)"
  if [[ -z "$tool" || "$("$tool" cyclonedx --version)" != *" $CDX_VERSION" ]]; then
    tools="${XDG_CACHE_HOME:-$HOME/.cache}/kekeeper/tools"
    tool="$tools/bin/cargo-cyclonedx"
    if [[ ! -x "$tool" || "$("$tool" cyclonedx --version)" != *" $CDX_VERSION" ]]; then
      log "cargo install --locked cargo-cyclonedx@$CDX_VERSION into $tools (cold: 3-5 min)"
      cargo install --quiet --locked --root "$tools" "cargo-cyclonedx@$CDX_VERSION" >&2
    fi
  fi
  log "$NAME.cdx.json (cargo-cyclonedx $CDX_VERSION)"
  SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" "$tool" cyclonedx --quiet \
    --manifest-path Cargo.toml --format json --spec-version 1.5 \
    --target x86_64-unknown-linux-gnu --override-filename "$SBOM_BASE" >&2
  mv "$SBOM_BASE.json" "$OUT/$NAME.cdx.json"
  cleanup
  python3 - "$OUT/$NAME.cdx.json" "$VERSION" <<'PY'
import json, sys
bom = json.load(open(sys.argv[1]))
component = bom["metadata"]["component"]
assert bom["bomFormat"] == "CycloneDX" and component["name"] == "kekeeper", component
assert component["version"] == sys.argv[2], f"the SBOM describes kekeeper {component['version']}"
assert bom["components"], "the SBOM lists no crates"
PY
}

push_image() {
  local layout="$OUT/stage/image" pushed insecure=()
  $PLAIN_HTTP && insecure=(--insecure)
  CRANE="$(scripts/registry.sh crane)"
  log "pushing $IMAGE:$VERSION (crane)"
  rm -rf "$layout"
  mkdir -p "$layout"
  tar -xf "$OUT/$NAME.oci.tar" -C "$layout"
  pushed="$("$CRANE" push "${insecure[@]}" "$layout" "$IMAGE:$VERSION")"
  rm -rf "$OUT/stage"
  [[ "${pushed##*@}" == "$DIGEST" ]] || die "crane pushed $pushed, the archive holds $DIGEST"
  [[ "$("$CRANE" digest "${insecure[@]}" "$IMAGE:$VERSION")" == "$DIGEST" ]] \
    || die "$IMAGE:$VERSION does not resolve to $DIGEST after the push"
}

chart() {
  local pin=()
  $PUSH && pin=(--image "$IMAGE" --digest "$DIGEST")
  log "the chart (Helm engine: package, lint, render)"
  scripts/chart-test.sh venv
  CHART_ARCHIVE="$(.venv-helm/bin/python scripts/release_chart.py package charts/kekeeper \
    "$OUT" "$VERSION" "${pin[@]}")"
  rm -rf "$OUT/chart"
  [[ "$CHART_ARCHIVE" == "$OUT/$NAME.tgz" ]] || die "the chart was packaged as $CHART_ARCHIVE"
}

push_chart() {
  local plain=()
  $PLAIN_HTTP && plain=(--plain-http)
  log "pushing $CHART_REMOTE/kekeeper:$VERSION (Helm engine)"
  CHART_DIGEST="$(.venv-helm/bin/python scripts/release_chart.py push "$CHART_ARCHIVE" \
    "$CHART_REMOTE" "${plain[@]}")"
}

# What a failed step may leave: the SBOM files cargo-cyclonedx writes beside every Cargo.toml
# of the workspace, and the staging directory.
SBOM_BASE=".kekeeper-release-sbom"
cleanup() {
  local manifest
  for manifest in $(git ls-files -- Cargo.toml '*/Cargo.toml'); do
    rm -f "$(dirname "$manifest")/$SBOM_BASE.json"
  done
  rm -rf "$OUT/stage" "$OUT/chart"
}

main() {
  local started=$SECONDS binary
  trap cleanup EXIT
  check_versions
  rm -f "$OUT/$NAME".* "$OUT/$NAME-linux-amd64.tar.gz" "$OUT/SHA256SUMS" "$OUT/release.env"
  binary="$(release_binary)"
  build_image "$binary"
  DIGEST="$(archive_digest)"
  cli_tarball "$binary"
  sbom
  if $PUSH; then push_image; fi
  chart
  (cd "$OUT" && sha256sum "$NAME.oci.tar" "$NAME-linux-amd64.tar.gz" "$NAME.cdx.json" \
    "$NAME.tgz" >SHA256SUMS)
  CHART_DIGEST=""
  if $PUSH; then push_chart; fi
  cat >"$OUT/release.env" <<EOF
KEKEEPER_RELEASE_VERSION=$VERSION
KEKEEPER_RELEASE_IMAGE=$IMAGE
KEKEEPER_RELEASE_IMAGE_DIGEST=$DIGEST
KEKEEPER_RELEASE_CHART=$CHART_REMOTE/kekeeper
KEKEEPER_RELEASE_CHART_DIGEST=$CHART_DIGEST
KEKEEPER_RELEASE_PUSHED=$PUSH
EOF
  log "kekeeper $VERSION in $((SECONDS - started)) s, in $OUT:"
  local file
  for file in "$OUT"/*; do
    printf '  %s\t%s\n' "$(du -h "$file" | cut -f1)" "${file##*/}" >&2
  done
  if $PUSH; then
    log "image $IMAGE:$VERSION = $IMAGE@$DIGEST"
    log "chart $CHART_REMOTE/kekeeper:$VERSION ($CHART_DIGEST)"
    log "install: helm install kekeeper $CHART_REMOTE/kekeeper --version $VERSION"
  fi
}

main
