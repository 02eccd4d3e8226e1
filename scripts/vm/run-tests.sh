#!/usr/bin/env bash
# Usage: scripts/vm/run-tests.sh JUNIT_OUT
# Runs tests/vm/*_test.ts inside one boot of the kernel-test VM and writes their JUnit
# report to JUNIT_OUT. Which files: VM_KERNEL=6.1 (default) runs every file except
# *_kernel64_test.ts, which need Linux >= 6.4 and are the only files the VM_KERNEL=backports
# boot runs; VM_TEST_FILES (space-separated paths) overrides either list. When the VM cannot
# run (no qemu, build failure, timeout, panic) the report holds one testcase saying why. A missing component (qemu, deno, kernel download) is
# a failure under CI=true and a skip otherwise; a VM that hangs or dies during the run is a
# failure everywhere (it may be the code under test hanging the kernel).
# Env: VM_TEST_TIMEOUT_S (whole run, default 3600), VM_FILE_TIMEOUT_S (one test file, default
# 1200: a hung file fails alone and the files after it still run; a full run took ~35 min on a
# loaded 2-core host, reattach_test alone ~15), TEST_FILTER (passed to deno test --filter), VM_ENV
# (more variable names to pass into the guest; CI, EROFS_OCI_FIXTURES/_PEER_BIN always are),
# VM_HOST_PATHS (see run.sh), VM_QUEUE_DIR (below). Works from any checkout path (spaces, under
# /tmp or /run).
# VM_QUEUE_DIR: VMs running at once share the files of one kernel (scripts/vm/run-lanes.sh):
# its todo/ holds one entry per file (the file's path; taken in name order), and each guest
# takes the next by renaming it into taken/ (a rename on the host: one guest wins) until none
# is left. A boot's reports then cover the files it took.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=kernel.sh
. "$here/kernel.sh"
junit_out=${1:?usage: $0 JUNIT_OUT}
timeout_s=${VM_TEST_TIMEOUT_S:-3600}
file_timeout_s=${VM_FILE_TIMEOUT_S:-1200}
deno=$repo/tools/bin/deno
cd "$repo" || exit 1
mkdir -p "$(dirname "$junit_out")"
junit_out=$(cd "$(dirname "$junit_out")" && pwd)/$(basename "$junit_out")
start=$(date +%s.%N)

log() { printf 'vm-tests: %s\n' "$*" >&2; }
# shellcheck source=junit.sh
. "$here/junit.sh"

# One testcase standing for the whole VM suite. harness_result missing|broken REASON
harness_result() {
  local kind=$1 reason=$2 outcome=failure
  [ "$kind" = missing ] && [ "${CI:-}" != true ] && outcome=skipped
  if [ "$outcome" = failure ]; then
    log "FAILED: $reason"
  else
    log "skipped (local run, CI unset): $reason"
  fi
  junit_case "$junit_out" tests/vm "VM test harness" "$outcome" "$reason"
  [ "$outcome" = failure ] && exit 1
  exit 0
}

command -v qemu-system-x86_64 >/dev/null || harness_result missing "qemu-system-x86_64 not installed (scripts/setup.sh)"
[ -x "$deno" ] || harness_result missing "$deno missing (scripts/setup.sh)"
shopt -s nullglob
tests=()
if [ -n "${VM_QUEUE_DIR:-}" ]; then
  for entry in "$VM_QUEUE_DIR"/todo/*; do tests+=("$(cat "$entry")"); done
elif [ -n "${VM_TEST_FILES:-}" ]; then
  read -r -a tests <<<"$VM_TEST_FILES"
  for file in "${tests[@]}"; do
    [ -f "$file" ] || harness_result broken "VM_TEST_FILES: $file does not exist"
  done
elif [ "$vm_kernel" = backports ]; then
  tests=(tests/vm/*_kernel64_test.ts)
else
  for file in tests/vm/*_test.ts; do
    [[ $file == *_kernel64_test.ts ]] || tests+=("$file")
  done
fi
((${#tests[@]})) || harness_result missing "no tests in tests/vm/ for kernel $vm_kernel"
"$here/build.sh" || harness_result missing "VM build failed (VM_KERNEL=$vm_kernel scripts/vm/build.sh)"

# The guest has no network: fill the host's Deno cache with every dependency of the VM tests
# first. The guest sees the same directory through the 9p root (writes stay in guest RAM).
deno_dir=${DENO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deno}
"$deno" cache --quiet "${tests[@]}" || harness_result broken "deno cache of tests/vm failed (a missing import, or no network for npm:)"

mkdir -p "$cache/runs"
out=$(mktemp -d "$cache/runs/tests.XXXXXX")
trap 'rm -rf "$out"' EXIT
# Host paths are quoted with %q: a checkout path may hold spaces or shell characters.
{
  echo "set -u"
  printf 'cd %q || exit 1\n' "$repo"
  printf 'export PATH=%q:"$PATH" HOME=/root DENO_DIR=%q NO_COLOR=1\n' "$repo/tools/bin" "$deno_dir"
  printf 'file_timeout_s=%q\n' "$file_timeout_s"
  printf 'tests=(%s)\n' "$(printf '%q ' "${tests[@]}")"
  printf 'queue=%q\n' "${VM_QUEUE_DIR:+/run/vm-queue}"
} >"$out/tests.sh"
cat >>"$out/tests.sh" <<'GUEST'
t0=$(date +%s.%N)
deno eval 0
echo "vm-tests: deno startup in guest (deno eval 0): $(awk -v s=$t0 -v e=$(date +%s.%N) 'BEGIN{printf "%.1f", e-s}') s"
if [ -n "$queue" ]; then
  mkdir -p "$queue" && mount -t 9p -o trans=virtio,version=9p2000.L queue "$queue" || exit 1
fi
# The next queued file: the first entry this guest renames into taken/ (another guest may
# take an entry between the listing and the rename: its rename fails, the next is tried).
take_next() {
  local entry
  for entry in "$queue"/todo/*; do
    [ -e "$entry" ] || return 1
    if mv "$entry" "$queue/taken/" 2>/dev/null; then
      cat "$queue/taken/${entry##*/}"
      return 0
    fi
  done
  return 1
}
# One deno test per file, each with its own report: a run cut short by the timeout still
# reports every file that finished.
rc=0
run_file() {
  local file=$1 name file_rc
  name=$(basename "$file" .ts)
  printf '%s\n' "$file" >"/run/vm/ran.$name"
  timeout -k 10 "$file_timeout_s" deno test -A --no-check --junit-path=/run/vm/vm.$name.xml "$file" ${TEST_FILTER:+--filter "$TEST_FILTER"}
  file_rc=$?
  if [ "$file_rc" = 124 ]; then
    echo "vm-tests: $file did not finish within $file_timeout_s s (VM_FILE_TIMEOUT_S)"
    : >/run/vm/timeout.$name
  fi
  [ "$file_rc" = 0 ] || rc=1
}
if [ -n "$queue" ]; then
  while file=$(take_next); do run_file "$file"; done
else
  for file in "${tests[@]}"; do run_file "$file"; done
fi
exit $rc
GUEST

# The tests find ../shared beside the checkout; in the guest a checkout under /tmp is bound
# alone, so its sibling is not there: hand the guest the resolved paths instead.
shared=$(realpath -e -- "$repo/../shared" 2>/dev/null) || shared=
if [ -n "$shared" ]; then
  [ -n "${EROFS_OCI_FIXTURES:-}" ] || export EROFS_OCI_FIXTURES=$shared/fixtures
  [ -n "${EROFS_OCI_PEER_BIN:-}" ] || export EROFS_OCI_PEER_BIN=$shared/peer/bin
fi

# Directories the guest must see even when they live under /tmp or /run (see run.sh).
host_paths=$deno_dir
for extra in "${EROFS_OCI_FIXTURES:-}" "${EROFS_OCI_PEER_BIN:-}" "${VM_HOST_PATHS:-}"; do
  [ -n "$extra" ] && host_paths+=$'\n'$extra
done
VM_HOST_PATHS=$host_paths VM_OUT_DIR=$out VM_ENV="${VM_ENV:-} EROFS_OCI_FIXTURES EROFS_OCI_PEER_BIN" "$here/run.sh" "$out/tests.sh" "$timeout_s"
rc=$?
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')
# Per-file reports go next to JUNIT_OUT (test.sh sums every *.xml there).
reports=("$out"/vm.*_test.xml)
for report in "${reports[@]}"; do
  [ -s "$report" ] && cp "$report" "${junit_out%.xml}.$(basename "$report" | sed 's/^vm\.//')"
done
# A file without a report was cut short (its own timeout, or the VM stopped): say so instead of
# leaving it out of the counts. One that wrote its report but then hung (a leaked process or
# handle) fails as well.
if [ -n "${VM_QUEUE_DIR:-}" ]; then
  # This boot answers for the files it took; run-lanes.sh for those no boot took.
  tests=()
  for ran in "$out"/ran.*; do tests+=("$(cat "$ran")"); done
fi
for file in "${tests[@]}"; do
  name=$(basename "$file" .ts)
  if [ -s "$out/vm.$name.xml" ] && [ -e "$out/timeout.$name" ]; then
    report=${junit_out%.xml}.$name.exit.xml
    msg="$file hung after its tests ran and was killed after $file_timeout_s s"
  elif [ -s "$out/vm.$name.xml" ]; then
    continue
  else
    report=${junit_out%.xml}.$name.xml
    msg="$file wrote no report: it did not finish (VM_FILE_TIMEOUT_S=$file_timeout_s s, or the VM stopped); see the console log"
  fi
  log "FAILED: $msg"
  junit_case "$report" "$file" "$file did not finish" failure "$msg"
done
case $rc in
124) harness_result broken "VM test run timed out after $timeout_s s (see the console log above)" ;;
125) harness_result broken "VM did not finish the test run: boot failure, kernel panic or init error (see above)" ;;
esac
if [ -n "${VM_QUEUE_DIR:-}" ] && [ "$rc" = 0 ] && ! compgen -G "$out/ran.*" >/dev/null; then
  # Other guests had taken every file by the time this one came to the queue.
  log "this boot took no file (other guests took them all)"
elif ((${#reports[@]} == 0)); then
  harness_result broken "deno test in the VM exited with $rc and wrote no JUnit report"
fi
# JUNIT_OUT itself only carries a harness failure; on a complete run it holds no testcase.
junit_empty "$junit_out"
log "deno test in the VM exited with $rc; total $elapsed s; reports ${junit_out%.xml}.*.xml"
exit "$rc"
