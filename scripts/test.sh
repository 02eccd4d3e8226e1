#!/usr/bin/env bash
# Runs every test: static checks (fmt, lint, type check), host tests (real registry, FUSE,
# erofs-utils) and the kernel tests in a QEMU VM. Ends with `N passed, N failed[, N skipped]`.
# Local runs skip tests whose components are missing (with the reason); CI=true fails them.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null 2>&1 || ./scripts/setup.sh || exit 1
export PATH="$PWD/tools/bin:$PATH"
results=test-results
rm -rf "$results" && mkdir -p "$results"

static_passed=0 static_failed=0
step() {
  local name=$1; shift
  echo "== $name"
  if "$@"; then static_passed=$((static_passed + 1)); else
    echo "FAILED: $name"; static_failed=$((static_failed + 1)); fi
}
step "deno fmt --check" deno fmt --check
step "deno lint" deno lint
step "import layers" deno run --allow-read scripts/check_imports.ts
step "deno check" deno task -q check

echo "== host tests (tests/vm/ runs in the VM below)"
# The host's own disk cache, state and runtime dirs (/var/cache, /var/lib, /run/erofs-oci) are
# left alone: whatever a test does not give a directory of its own uses these, made for the
# run and removed after it (an umount prunes the state dir of what no mount of the runtime
# dirs it knows names).
test_cache=$(mktemp -d "${TMPDIR:-/tmp}/erofs-oci-test-cache.XXXXXX") || exit 1
trap 'rm -rf "$test_cache"' EXIT
export EROFS_OCI_CACHE_DIR=$test_cache/disk-cache
export EROFS_OCI_STATE_DIR=$test_cache/state
export EROFS_OCI_RUNTIME_DIR=$test_cache/run
# Each file in a process of its own (scripts/host_tests.ts says why), one per CPU at a time.
deno run -A scripts/host_tests.ts "$results" ${TEST_FILTER:+--filter "$TEST_FILTER"} tests lib

if [ "${SKIP_VM:-}" != 1 ]; then
  # Two VMs at once (VM_LANES): tests/vm/*_test.ts on Debian 6.1's kernel, and
  # tests/vm/*_kernel64_test.ts (Linux >= 6.4: 512-byte EROFS blocks) on bookworm-backports'
  # (built into .cache/vm-bpo/ on first use); scripts/vm/run-lanes.sh says how.
  echo "== VM tests (QEMU, kernel NBD; Debian 6.1 kernel, and backports' for *_kernel64_test.ts)"
  scripts/vm/run-lanes.sh "$results" || true
fi

shopt -s nullglob
deno run --allow-read scripts/junit-summary.ts --passed=$static_passed --failed=$static_failed "$results"/*.xml
