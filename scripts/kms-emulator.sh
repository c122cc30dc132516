#!/usr/bin/env bash
# A local KMS and S3 endpoint for tests and demos: LocalStack 4.8.1 on the host (KMS, and S3 for
# the key store), bound to
# 127.0.0.1, every file under .work/kms/. Recipe: docs in /work/shared/kms-emulator/README.md.
#
#   scripts/kms-emulator.sh install     # .venv-kms with localstack-core (idempotent)
#   eval "$(scripts/kms-emulator.sh start)"   # starts it, prints the export line
#   scripts/kms-emulator.sh env         # the export line of the running emulator
#   scripts/kms-emulator.sh create-key ALIAS [--multi-region --replica-region R] [--region R]
#   scripts/kms-emulator.sh create-bucket NAME   # a versioned S3 bucket (the key store's)
#   scripts/kms-emulator.sh stop
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv-kms"
# KEKEEPER_KMS_STATE: another state directory, for a second emulator (scripts/image-test.sh
# runs one in its own network namespace).
STATE="${KEKEEPER_KMS_STATE:-$ROOT/.work/kms}"
PY="$VENV/bin/python"
VERSION="4.8.1"
CONSTRAINTS="$ROOT/scripts/constraints-localstack-$VERSION.txt"

log() { echo "kms-emulator: $*" >&2; }

install() {
  if [ -x "$PY" ] && "$PY" -c "import localstack, boto3" 2>/dev/null \
     && [ "$("$PY" -c 'from importlib.metadata import version; print(version("localstack-core"))')" = "$VERSION" ]; then
    log "localstack-core $VERSION already installed in $VENV"
    return
  fi
  log "installing localstack-core $VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    -c "$CONSTRAINTS" "localstack-core[base-runtime]==$VERSION"
}

running_pid() {
  local pid
  [ -f "$STATE/pid" ] || return 1
  pid="$(cat "$STATE/pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

print_env() {
  echo "export AWS_ENDPOINT_URL_KMS=$(cat "$STATE/endpoint") AWS_ENDPOINT_URL_S3=$(cat "$STATE/endpoint") AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1"
}

start() {
  [ -x "$PY" ] || { log "not installed; run: $0 install"; exit 2; }
  if running_pid >/dev/null; then
    log "already running (pid $(cat "$STATE/pid"))"
    print_env
    return
  fi
  mkdir -p "$STATE/volume"
  local port
  port="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  # setsid: the emulator gets its own process group, so stop can end all of it. timeout: a
  # forgotten emulator ends by itself, after 2 h (the whole suite uses it for about 45 min; at
  # 30 min it could end in the middle of the real-server block).
  env RUNTIME_COMPONENTS=aws SERVICES=kms,s3 EAGER_SERVICE_LOADING=1 \
      GATEWAY_SERVER=hypercorn GATEWAY_LISTEN="127.0.0.1:$port" \
      LOCALSTACK_HOST="localhost.localstack.cloud:$port" \
      DNS_ADDRESS=0 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
      OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$STATE" LOCALSTACK_VOLUME_DIR="$STATE/volume" \
      setsid timeout 7200 "$PY" -m localstack.runtime.main \
      >"$STATE/localstack.log" 2>&1 </dev/null &
  echo $! >"$STATE/pid"
  echo "http://127.0.0.1:$port" >"$STATE/endpoint"
  log "started pid $! on 127.0.0.1:$port; waiting for ListKeys"
  local deadline=$((SECONDS + 90))
  until AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$PY" - "http://127.0.0.1:$port" <<'PY' 2>/dev/null
import sys, boto3
from botocore.config import Config
boto3.client("kms", endpoint_url=sys.argv[1], region_name="us-east-1",
             config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=3)).list_keys()
PY
  do
    if ! running_pid >/dev/null; then
      log "LocalStack exited; last log lines:"; tail -n 30 "$STATE/localstack.log" >&2; exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "not ready after 90 s; stopping"; stop; exit 1
    fi
    sleep 0.5
  done
  log "ready"
  print_env
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$STATE/pid"
    return
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still running after 10 s; SIGKILL"
  fi
  # The python child may outlive its parent on a hung shutdown: kill the whole group.
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$STATE/pid"
  log "stopped"
}

create_key() {
  [ $# -ge 1 ] || { log "usage: $0 create-key ALIAS [--multi-region --replica-region R] [--region R]"; exit 2; }
  [ -f "$STATE/endpoint" ] || { log "not running"; exit 2; }
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$PY" - "$(cat "$STATE/endpoint")" "$@" <<'PY'
import argparse, sys, boto3
p = argparse.ArgumentParser(prog="create-key")
p.add_argument("endpoint"); p.add_argument("alias")
p.add_argument("--region", default="us-east-1")
p.add_argument("--multi-region", action="store_true")
p.add_argument("--replica-region", action="append", default=[])
a = p.parse_args()
alias = a.alias if a.alias.startswith("alias/") else "alias/" + a.alias
kms = boto3.client("kms", endpoint_url=a.endpoint, region_name=a.region)
key = kms.create_key(MultiRegion=a.multi_region, Description="kekeeper demo")["KeyMetadata"]
kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
for region in a.replica_region:
    replica = boto3.client("kms", endpoint_url=a.endpoint, region_name=region)
    kms.replicate_key(KeyId=key["KeyId"], ReplicaRegion=region)
    replica.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
account = key["Arn"].split(":")[4]
print(f"arn:aws:kms:{a.region}:{account}:{alias}")
PY
}

# A versioned S3 bucket for the key store (path-style, as LocalStack needs); prints s3://NAME.
create_bucket() {
  [ $# -eq 1 ] || { log "usage: $0 create-bucket NAME"; exit 2; }
  [ -f "$STATE/endpoint" ] || { log "not running"; exit 2; }
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$PY" - "$(cat "$STATE/endpoint")" "$1" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket=sys.argv[2])
s3.put_bucket_versioning(Bucket=sys.argv[2], VersioningConfiguration={"Status": "Enabled"})
print(f"s3://{sys.argv[2]}")
PY
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) running_pid >/dev/null && print_env || { log "not running"; exit 1; } ;;
  create-key) shift; create_key "$@" ;;
  create-bucket) shift; create_bucket "$@" ;;
  *) echo "usage: $0 {install|start|stop|env|create-key ALIAS [...]|create-bucket NAME}" >&2; exit 2 ;;
esac
