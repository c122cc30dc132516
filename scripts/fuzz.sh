#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS]: runs every fuzz target (fuzz/, cargo-fuzz with libFuzzer) for
# SECONDS each (default 60), one after another, starting from the committed corpus
# fuzz/corpus/<target>/. Fails when any target finds a crash, a hang or a leak; the input is
# left in fuzz/artifacts/<target>/ and replayed so its panic message shows. New inputs a run
# finds go to fuzz/work/<target>/ (not committed, emptied at the start of each run).
#
# scripts/fuzz.sh --seed: rebuilds fuzz/corpus/ from the test fixtures (fuzz/seed.py),
# minimised with `cargo fuzz cmin`.
#
# Installs what it needs: a nightly toolchain and cargo-fuzz 0.13.2. docs/testing.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

TARGETS=(envelope alias_arn manifest key_pair_secret key_ring_status key_store_object key_store_marker_claim key_store_name)
CARGO_FUZZ_VERSION=0.13.2

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it for the sanitizers)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

started=$SECONDS
cargo +nightly fuzz build
echo "fuzz: built the targets in $((SECONDS - started)) s"

if [[ "${1:-}" == "--seed" ]]; then
  seeds="$(mktemp -d)"
  trap 'rm -rf "$seeds"' EXIT
  python3 seed.py "$seeds"
  for target in "${TARGETS[@]}"; do
    rm -rf "corpus/$target"
    mkdir -p "corpus/$target"
    cp "$seeds/$target/"* "corpus/$target/"
    cargo +nightly fuzz cmin "$target" "corpus/$target" -- -close_fd_mask=3 2>&1 | tail -n 2
    echo "fuzz: corpus/$target: $(find "corpus/$target" -type f | wc -l) inputs, $(du -sk "corpus/$target" | cut -f1) KiB"
  done
  exit 0
fi

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds == 0)); then
  echo "usage: scripts/fuzz.sh [SECONDS] | --seed" >&2
  exit 2
fi

passed=0
failed=()
for target in "${TARGETS[@]}"; do
  rm -rf "work/$target"
  mkdir -p "work/$target" "artifacts/$target"
  log="work/$target.log"
  # The first corpus folder takes what the run finds, so the committed one stays as it is.
  # Standard output and error of the code under test are closed (-close_fd_mask=3): a manifest
  # with many documents prints a note per document. libFuzzer's own report still shows.
  status=0
  run_started=$SECONDS
  cargo +nightly fuzz run "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -close_fd_mask=3 -timeout=10 \
    -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
  executions="$(awk '/^stat::number_of_executed_units:/ {print $2}' "$log")"
  per_second="$(awk '/^stat::average_exec_per_sec:/ {print $2}' "$log")"
  # The last status line (`#N DONE cov: C ft: F corp: ...`, or the last `#N ... cov:` line when
  # the run stopped on a finding).
  last="$(grep -E '^#[0-9]+.* cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 || true)"
  cov="$(sed -E 's/.* cov: ([0-9]+).*/\1/' <<<"$last")"
  ft="$(sed -E 's/.* ft: ([0-9]+).*/\1/' <<<"$last")"
  corpus="$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$last")"
  summary="${executions:-?} executions, ${per_second:-?} exec/s, cov ${cov:-?}, ft ${ft:-?}, corpus ${corpus:-?}, $((SECONDS - run_started)) s"
  if ((status == 0)); then
    passed=$((passed + 1))
    echo "fuzz: $target: passed: $summary"
  else
    failed+=("$target")
    echo "fuzz: $target: FAILED (exit $status): $summary"
    tail -n 30 "$log"
    artifact="$(ls -t "artifacts/$target/"* 2>/dev/null | head -n 1 || true)"
    if [[ -n "$artifact" ]]; then
      echo "fuzz: $target: the input is $PWD/$artifact; replaying it:"
      cargo +nightly fuzz run "$target" "$artifact" 2>&1 | grep -v '^INFO:' | tail -n 30 || true
    fi
  fi
done

echo "fuzz: ${#TARGETS[@]} targets, $passed passed${failed[*]:+, failed: ${failed[*]}}"
((${#failed[@]} == 0))
