#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this): formatting and lints, the
# Helm chart rendered by the real Helm engine, unit tests, reconcile scenarios, kube-sim's
# conformance tests, the integration and end-to-end tests against a local KMS emulator
# (LocalStack, started here and stopped on exit) and kube-sim driven by kubectl, 20 s of every
# fuzz target, then the end-to-end tests and the Helm install tests again on a real control plane
# (etcd, kube-apiserver, kube-controller-manager built from source), and a release
# (scripts/release.sh) pushed to a real OCI registry, its chart installed from there into a real
# control plane and its image pulled by digest and run against one with LocalStack (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
step "Helm chart (real Helm engine via helm-python-sdk); renders go to target/chart-renders/"
scripts/chart-test.sh 2>&1 | tee "$LOGS/chart.log"

step "tools: KMS emulator (LocalStack) and kubectl"
scripts/kms-emulator.sh install
KEKEEPER_TEST_KUBECTL="$(scripts/kubectl.sh)"
export KEKEEPER_TEST_KUBECTL
trap 'scripts/kms-emulator.sh stop; scripts/control-plane.sh stop; rm -rf "$LOGS"' EXIT
# An assignment keeps start's exit status (a bare eval "$(...)" would hide a failed start).
emulator_env="$(scripts/kms-emulator.sh start)"
eval "$emulator_env"
export KEKEEPER_TEST_KMS_ENDPOINT="$AWS_ENDPOINT_URL_KMS"
export AWS_ENDPOINT_URL_KMS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION

# The end-to-end tests, run a second time on the real control plane (docs/testing.md): the same
# test bodies, each in namespaces of its own, faults through kube_sim::FaultProxy.
REAL_TESTS=""
for test in e2e_operator e2e_alias e2e_status e2e_custody e2e_soak fleet e2e_faults e2e_rbac e2e_throttling \
  e2e_user_roles e2e_leader e2e_keystore e2e_regions e2e_rewrap crd_schema status_fixtures cli_cluster cli_backup; do
  REAL_TESTS+=" --test $test"
done

step "cargo test --workspace (end-to-end tests on kube-sim)"
cargo test --workspace -- --include-ignored 2>&1 | tee "$LOGS/cargo.log"

step "recording envelope: the independent Python reader (docs/envelope.md)"
scripts/envelope-reader-test.sh 2>&1 | tee "$LOGS/envelope.log"
envelope_passed="$(grep -Eo '^envelope-reader: [0-9]+ passed' "$LOGS/envelope.log" | grep -Eo '[0-9]+' || true)"

step "fuzzing: every fuzz target for 20 s from its committed corpus (fuzz/, docs/testing.md)"
scripts/fuzz.sh 20 2>&1 | tee "$LOGS/fuzz.log"
fuzz_passed="$(grep -Eo '^fuzz: [0-9]+ targets, [0-9]+ passed' "$LOGS/fuzz.log" | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+' || true)"

step "real control plane: etcd, kube-apiserver, kube-controller-manager $(cat tests/control-plane/RELEASE) built from source; the end-to-end tests that run on it (docs/testing.md)"
control_plane_env="$(scripts/control-plane.sh start)"
(
  eval "$control_plane_env"
  export KEKEEPER_TEST_CLUSTER=real
  cargo test $REAL_TESTS -- --include-ignored
  # kube-sim's own API tests on the real server: the differential harness (tests/kube-sim/README.md).
  cargo test -p kube-sim -- --include-ignored
) 2>&1 | tee "$LOGS/real.log"
scripts/control-plane.sh stop

step "Helm install/upgrade/uninstall on a real control plane of its own (Helm must own the CRD that the other tests apply themselves)"
helm_state="$PWD/.work/control-plane/helm"
trap 'scripts/kms-emulator.sh stop; scripts/control-plane.sh stop; KEKEEPER_CONTROL_PLANE_STATE="$helm_state" scripts/control-plane.sh stop; rm -rf "$LOGS"' EXIT
helm_env="$(KEKEEPER_CONTROL_PLANE_STATE="$helm_state" scripts/control-plane.sh start)"
(
  eval "$helm_env"
  # The venv and tools come from the chart step above.
  KEKEEPER_TEST_CLUSTER=real .venv-helm/bin/python -m pytest -q tests/chart/test_install.py tests/chart/test_admission.py
) 2>&1 | tee "$LOGS/helm-real.log"
KEKEEPER_CONTROL_PLANE_STATE="$helm_state" scripts/control-plane.sh stop

step "release: scripts/release.sh builds the image (buildah), the CLI tarball, the SBOM and the chart and pushes them to a real OCI registry (go-containerregistry, scripts/registry.sh); the chart installed from the registry into a real control plane of its own; the image pulled by digest and run as the installed Deployment runs it, on a real control plane (docs/testing.md)"
release_out="$PWD/target/release-artifacts/test"
release_state="$PWD/.work/control-plane/release"
trap 'scripts/kms-emulator.sh stop; scripts/control-plane.sh stop; KEKEEPER_CONTROL_PLANE_STATE="$helm_state" scripts/control-plane.sh stop; KEKEEPER_CONTROL_PLANE_STATE="$release_state" scripts/control-plane.sh stop; scripts/registry.sh stop; rm -rf "$LOGS"' EXIT
registry_env="$(scripts/registry.sh start)"
eval "$registry_env"
scripts/release.sh "$(python3 scripts/versions.py print)" --registry "$KEKEEPER_REGISTRY/kekeeper" \
  --plain-http --out "$release_out"
release_env="$(KEKEEPER_CONTROL_PLANE_STATE="$release_state" scripts/control-plane.sh start)"
(
  eval "$release_env"
  export KEKEEPER_CRANE KEKEEPER_RELEASE_ENV="$release_out/release.env"
  export KEKEEPER_RELEASE_INSTALLED="$PWD/target/release-test/installed.yaml"
  .venv-helm/bin/python -m pytest -q tests/release/test_release.py
) 2>&1 | tee "$LOGS/release.log"
KEKEEPER_CONTROL_PLANE_STATE="$release_state" scripts/control-plane.sh stop
# The README's first 60 lines, followed as a newcomer would, on a control plane with nothing
# installed: the released chart from the registry, the released CLI, LocalStack for AWS.
readme_state="$PWD/.work/control-plane/readme"
trap 'scripts/kms-emulator.sh stop; scripts/control-plane.sh stop; KEKEEPER_CONTROL_PLANE_STATE="$helm_state" scripts/control-plane.sh stop; KEKEEPER_CONTROL_PLANE_STATE="$release_state" scripts/control-plane.sh stop; KEKEEPER_CONTROL_PLANE_STATE="$readme_state" scripts/control-plane.sh stop; scripts/registry.sh stop; rm -rf "$LOGS"' EXIT
readme_env="$(KEKEEPER_CONTROL_PLANE_STATE="$readme_state" scripts/control-plane.sh start)"
(
  eval "$readme_env"
  KEKEEPER_RELEASE_ENV="$release_out/release.env" .venv-helm/bin/python -m pytest -q tests/release/test_readme.py
) 2>&1 | tee "$LOGS/readme.log"
KEKEEPER_CONTROL_PLANE_STATE="$readme_state" scripts/control-plane.sh stop
KEKEEPER_TEST_CLUSTER=real KEKEEPER_IMAGE_PULL=1 \
  KEKEEPER_IMAGE_TEST_RENDER="$PWD/target/release-test/installed.yaml" scripts/image-test.sh 2>&1 \
  | tee "$LOGS/image.log"
image_passed="$(grep -c '^image-test: PASS' "$LOGS/image.log" || true)"
scripts/registry.sh stop

# One closing line for the whole suite (cargo's own last line is the doc-test run of kube-sim).
chart_passed="$(grep -Eo '[0-9]+ passed' "$LOGS/chart.log" | tail -n 1 | grep -Eo '[0-9]+')"
read -r cargo_passed cargo_failed < <(awk '/^test result:/ {p += $4; f += $6} END {print p + 0, f + 0}' "$LOGS/cargo.log")
read -r real_passed real_failed < <(awk '/^test result:/ {p += $4; f += $6} END {print p + 0, f + 0}' "$LOGS/real.log")
helm_real_passed="$(grep -Eo '[0-9]+ passed' "$LOGS/helm-real.log" | tail -n 1 | grep -Eo '[0-9]+')"
release_passed="$(grep -Eo '[0-9]+ passed' "$LOGS/release.log" | tail -n 1 | grep -Eo '[0-9]+')"
readme_passed="$(grep -Eo '[0-9]+ passed' "$LOGS/readme.log" | tail -n 1 | grep -Eo '[0-9]+')"
real_passed=$((real_passed + ${helm_real_passed:-0} + ${release_passed:-0} + ${readme_passed:-0}))
echo
echo "${chart_passed:-0} chart tests, $cargo_passed Rust tests on kube-sim, $real_passed on the real control plane, ${envelope_passed:-0} envelope-reader checks, ${fuzz_passed:-0} fuzz targets and $image_passed image test"
echo "tests: $((chart_passed + cargo_passed + real_passed + ${envelope_passed:-0} + ${fuzz_passed:-0} + image_passed)) passed, $((cargo_failed + real_failed)) failed"
