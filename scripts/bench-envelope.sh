#!/usr/bin/env bash
# Envelope benchmark: OpenSSL's AES-256-GCM speed as the reference, then the envelope's encrypt
# and decrypt throughput on 256 MiB, then peak RSS of a streamed 16 MiB and 1 GiB round trip.
# Usage: scripts/bench-envelope.sh   (from anywhere; honours CARGO_TARGET_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building the envelope bench (release profile)"
bin=$(cargo bench --bench envelope --no-run --message-format=json 2>/dev/null \
  | jq -r 'select(.reason == "compiler-artifact" and .target.name == "envelope" and .executable != null) | .executable' \
  | tail -n 1)
[[ -x "$bin" ]] || { echo "bench binary not found (build failed?)" >&2; exit 1; }
echo "binary: $bin"

echo "== openssl speed -evp aes-256-gcm ($(openssl version))"
speed=$(openssl speed -evp aes-256-gcm -seconds 3 2>/dev/null)
echo "$speed" | tail -n 2
# Last column is the 16384-byte block, in 1000s of bytes per second.
openssl_mbs=$(echo "$speed" | awk '/^AES-256-GCM/ { v = $NF; sub(/k$/, "", v); printf "%.0f", v / 1000 }')

echo "== envelope throughput, 256 MiB"
tp=$("$bin" throughput 256)
echo "$tp"
enc_mbs=$(echo "$tp" | awk '/encrypt/ { print $(NF-1) }')
dec_mbs=$(echo "$tp" | awk '/decrypt/ { print $(NF-1) }')

rss() { # bytes -> max RSS in KiB, via /usr/bin/time -v
  local out
  out=$( { /usr/bin/time -v "$bin" stream "$1" >&3; } 2>&1 3>&1 )
  echo "$out" | grep -E '^stream|Maximum resident' >&2
  echo "$out" | awk -F': ' '/Maximum resident set size/ { print $2 }'
}
echo "== peak RSS, streamed encrypt → pipe → decrypt"
rss_16m=$(rss $((16 * 1024 * 1024)))
rss_1g=$(rss $((1024 * 1024 * 1024)))

echo "== summary"
printf 'openssl aes-256-gcm (16384-byte blocks): %s MB/s\n' "$openssl_mbs"
printf 'envelope encrypt 256 MiB:                %s MB/s (%s %% of openssl)\n' "$enc_mbs" "$(( enc_mbs * 100 / openssl_mbs ))"
printf 'envelope decrypt 256 MiB:                %s MB/s (%s %% of openssl)\n' "$dec_mbs" "$(( dec_mbs * 100 / openssl_mbs ))"
printf 'peak RSS, 16 MiB stream:                 %s KiB\n' "$rss_16m"
printf 'peak RSS, 1 GiB stream:                  %s KiB\n' "$rss_1g"
ratio=$(( (enc_mbs < dec_mbs ? enc_mbs : dec_mbs) * 100 / openssl_mbs ))
if (( ratio >= 80 )); then echo "target >= 80 % of openssl: met (${ratio} %)"; else echo "target >= 80 % of openssl: NOT met (${ratio} %)"; fi
