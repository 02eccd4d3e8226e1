#!/usr/bin/env bash
# Usage: scripts/vm/run-lanes.sh RESULTS_DIR
# Runs every VM test file on both kernels (run-tests.sh's lists) with VM_LANES VMs at once
# (default 2), JUnit reports into RESULTS_DIR (vm-LANE.FILE_test.xml, vm-bpo.FILE_test.xml).
#
# Why: one TCG guest ran its files one after another with ~1 of the host's 2 cores busy
# (sampled over a CI run), so the 6.1 files took ~21-23 min, most of CI's 35-40.
# Lanes take the 6.1 files from one queue (run-tests.sh, VM_QUEUE_DIR), longest first as the
# last run timed them (.cache/vm-test-times, else scripts/vm/test-times), so a lane that
# gets the long files takes fewer; the last lane boots the backports kernel first (its files,
# *_kernel64_test.ts, are few).
# Each lane's lines are prefixed with its name. A queued file that no lane took (every VM
# died first) gets a failing report of its own.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
results=${1:?usage: $0 RESULTS_DIR}
# shellcheck source=junit.sh
. "$here/junit.sh"
lanes=${VM_LANES:-2}
# One vCPU a guest when guests run side by side: two 2-vCPU guests on 2 host cores each ran
# their files 2.1x as long as one alone (no gain at all), two 1-vCPU guests 1.2-1.5x
# (docs/benchmarks.md, session 56). VM_CPUS overrides.
lane_cpus=${VM_CPUS:-1}
[[ $lanes =~ ^[1-9][0-9]?$ ]] || { echo "VM_LANES must be a number from 1 to 99, not '$lanes'" >&2; exit 2; }
mkdir -p "$results"
results=$(cd "$results" && pwd)
cd "$repo" || exit 1
times_file=.cache/vm-test-times

queue=$(mktemp -d "${TMPDIR:-/tmp}/erofs-oci-vm-queue.XXXXXX") || exit 1
trap 'rm -rf "$queue"' EXIT
mkdir "$queue/todo" "$queue/taken"

# Seconds of each file in this checkout's last run, else in the reference run kept beside this
# script (scripts/vm/test-times: a fresh clone has no .cache), else first (a new file is not
# left to run alone at the end).
weigh() {
  local file=$1 seconds list
  for list in "$times_file" "$here/test-times"; do
    [ -f "$list" ] && seconds=$(awk -v f="$file" '$2 == f { print $1; exit }' "$list")
    [ -n "${seconds:-}" ] && break
  done
  echo "${seconds:-99999}"
}
shopt -s nullglob
i=0
for file in tests/vm/*_test.ts; do
  [[ $file == *_kernel64_test.ts ]] && continue
  printf '%s %s\n' "$(weigh "$file")" "$file"
done | sort -rn -k1,1 | while read -r _ file; do
  i=$((i + 1))
  printf '%s\n' "$file" >"$queue/todo/$(printf '%03d' "$i")"
done

# Kernels and the test files' modules once, before lanes would do it side by side.
# (A failure here is reported by the lanes' own run-tests.sh.)
scripts/vm/build.sh || true
VM_KERNEL=backports scripts/vm/build.sh || true
tools/bin/deno cache --quiet tests/vm/*_test.ts || true

lane_run() { # NAME JUNIT_OUT [VAR=VALUE...]: one boot, its lines prefixed with NAME
  local name=$1 junit=$2
  shift 2
  env VM_CPUS="$lane_cpus" "$@" scripts/vm/run-tests.sh "$junit" 2>&1 | sed -u "s/^/[$name] /"
}
pids=()
for ((lane = 1; lane <= lanes; lane++)); do
  if ((lane == lanes)); then
    (
      lane_run bpo "$results/vm-bpo.xml" VM_KERNEL=backports
      bpo_rc=$?
      lane_run "vm$lane" "$results/vm$lane.xml" VM_QUEUE_DIR="$queue" && exit $bpo_rc
    ) &
  else
    lane_run "vm$lane" "$results/vm$lane.xml" VM_QUEUE_DIR="$queue" &
  fi
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done

# Files no lane took: every VM stopped before reaching them.
for entry in "$queue"/todo/*; do
  file=$(cat "$entry")
  name=$(basename "$file" .ts)
  msg="$file did not run: every VM stopped before taking it (see the console lines above)"
  echo "vm-lanes: FAILED: $msg"
  rc=1
  junit_case "$results/vm-lanes.$name.xml" "$file" "$file did not run" failure "$msg"
done

# This run's time of each file (a report's first `time="…"`), the next run's order.
mkdir -p .cache
for report in "$results"/vm*.*_test.xml; do
  name=${report##*/}
  name=${name#*.}
  seconds=$(grep -o -m1 'time="[0-9.]*"' "$report" | head -1 | tr -dc '0-9.')
  [ -n "$seconds" ] && printf '%s tests/vm/%s.ts\n' "$seconds" "${name%.xml}"
done >"$times_file.new" && mv "$times_file.new" "$times_file"
exit $rc
