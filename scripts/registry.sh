#!/usr/bin/env bash
# A real OCI registry for the release test: go-containerregistry's registry (`crane registry
# serve`, the pkg/registry package behind an HTTP server) and its client `crane`, built from the
# official sources by a dev-only Go module (tests/registry) and run on 127.0.0.1, plain HTTP.
# docs/testing.md, "The release test".
#
#   scripts/registry.sh build              # builds crane once per version, under ~/.cache/kekeeper/registry/
#   eval "$(scripts/registry.sh start)"    # builds if needed, starts, prints the exports
#   scripts/registry.sh env                # the exports of the running registry
#   scripts/registry.sh crane              # the path of the crane binary (builds if needed)
#   scripts/registry.sh stop               # stops the registry and removes its blobs
#
# start prints `export KEKEEPER_REGISTRY=127.0.0.1:PORT KEKEEPER_CRANE=<crane>`; the port is
# the one the kernel gave the listener (--address 127.0.0.1:0), read from the registry's log.
# Blobs are kept on disk under the state dir, manifests in memory: what was pushed is gone when
# the registry stops. A forgotten registry stops by itself after 2 h.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODULE="$ROOT/tests/registry"
VERSION="$(sed -n 's#^require github.com/google/go-containerregistry \(v[^ ]*\)$#\1#p' "$MODULE/go.mod")"
# The built crane is a cache kept per version in the user's cache directory (as the control
# plane's binaries are); built when missing.
BIN="${KEKEEPER_REGISTRY_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kekeeper/registry/$VERSION}"
STATE="${KEKEEPER_REGISTRY_STATE:-$ROOT/.work/registry/run}"
CRANE="$BIN/crane"

log() { echo "registry: $*" >&2; }

build() {
  if [ -x "$CRANE" ]; then
    return
  fi
  [ -n "$VERSION" ] || { log "no go-containerregistry version in $MODULE/go.mod"; exit 2; }
  command -v go >/dev/null || { log "go not found: crane is built from source with Go"; exit 2; }
  mkdir -p "$BIN"
  local started=$SECONDS
  log "building crane $VERSION into $BIN (cold: about 1 min on 2 cores)"
  # A build cache of its own (about 130 MB), removed once the binary exists: the binary is kept
  # per version, so only a new version builds again (docs/testing.md, "Disk").
  local gocache="$ROOT/.work/registry/gocache"
  (
    cd "$MODULE"
    GOCACHE="$gocache" go build -trimpath \
      -ldflags "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$VERSION" \
      -o "$CRANE.tmp" github.com/google/go-containerregistry/cmd/crane
  ) >&2
  mv "$CRANE.tmp" "$CRANE"
  rm -rf "$gocache"
  log "built in $((SECONDS - started)) s: $(du -h "$CRANE" | cut -f1)"
}

running() { [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; }

print_env() {
  echo "export KEKEEPER_REGISTRY=127.0.0.1:$(cat "$STATE/port") KEKEEPER_CRANE=$CRANE"
}

start() {
  if running; then
    log "already running ($STATE)"
    print_env
    return
  fi
  build
  rm -rf "$STATE"
  mkdir -p "$STATE/blobs"
  setsid timeout 2h "$CRANE" registry serve --address 127.0.0.1:0 --disk "$STATE/blobs" \
    >"$STATE/registry.log" 2>&1 </dev/null &
  echo $! >"$STATE/pid"
  local port=""
  for _ in $(seq 1 100); do
    port="$(sed -n 's/.*serving on port \([0-9]*\)$/\1/p' "$STATE/registry.log")"
    [ -n "$port" ] && break
    running || break
    sleep 0.1
  done
  if [ -z "$port" ] || ! curl -sf "http://127.0.0.1:$port/v2/" >/dev/null; then
    log "did not start; $STATE/registry.log:"
    cat "$STATE/registry.log" >&2
    stop
    exit 1
  fi
  echo "$port" >"$STATE/port"
  log "go-containerregistry $VERSION serving on http://127.0.0.1:$port ($STATE)"
  print_env
}

stop() {
  if [ ! -f "$STATE/pid" ]; then
    log "not running"
    return
  fi
  local pid
  pid="$(cat "$STATE/pid")"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do
    running || break
    sleep 0.25
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -rf "$STATE/pid" "$STATE/port" "$STATE/blobs"
  log "stopped"
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  env) running && print_env || { log "not running"; exit 1; } ;;
  crane) build; echo "$CRANE" ;;
  *) echo "usage: $0 {build|start|stop|env|crane}" >&2; exit 2 ;;
esac
