#!/usr/bin/env bash
# The recording envelope page (docs/envelope.md) proven by a second implementation: the
# independent Python reader (tests/envelope_reader/reader.py, `cryptography` package) decrypts
# every test vector under tests/vectors/envelope, rejects every must-reject vector with the
# page's name for it, and decrypts envelopes that the built `kekeeper encrypt` makes now with
# the vectors' public key (no KMS needed), rejecting damaged copies of them.
#
#   scripts/envelope-reader-test.sh     creates/refreshes .venv-envelope, builds the kekeeper
#                                       binary (cargo build --bin kekeeper) unless KEKEEPER_BIN
#                                       names one, and runs tests/envelope_reader/check.py
#
# Closes with `envelope-reader: N passed, M failed`; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-envelope
# Pinned, so the reader is tested against one known version of the library.
REQS="cryptography==50.0.2"
STAMP="$VENV/.envelope-reader-reqs"

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$REQS" ]]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $REQS
  echo "$REQS" > "$STAMP"
fi

BIN="${KEKEEPER_BIN:-}"
if [[ -z "$BIN" ]]; then
  cargo build --quiet --bin kekeeper
  BIN="${CARGO_TARGET_DIR:-target}/debug/kekeeper"
fi

export PYTHONDONTWRITEBYTECODE=1
exec "$VENV/bin/python" tests/envelope_reader/check.py tests/vectors/envelope "$BIN"
