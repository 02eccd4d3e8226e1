#!/usr/bin/env bash
# The speed benchmark's guest half: runs as root inside the kernel-test VM (scripts/bench.sh
# boots it). Serves the benchmark image from docker-registry on the guest loopback and measures,
# per variant, mount latency, cold `find`, cold full read (`tar cf - DIR | wc -c`), registry
# blob GETs, bytes fetched per byte the kernel read, and server RSS. One TSV line per variant
# goes to $BENCH_OUT/results.tsv; scripts/bench/report.ts turns it into the table.
# Env (from the host): BENCH_IMAGE, BENCH_OUT (default /run/vm), BENCH_NETEM_KO (sch_netem.ko
# for the 20 ms variant; skipped when empty), BENCH_PEER_BIN, BENCH_SLOW_TAR_TIMEOUT_S,
# BENCH_PEER_FIND_TIMEOUT_S, BENCH_STEP_TIMEOUT_S, BENCH_VARIANTS (subset of the names below;
# also erofs-oci-nbd-local and qemu-nbd-local, NBD without a registry, not run by default),
# BENCH_TRACE_RUNS (rounds of trace-python-20ms, default 3), BENCH_FILL_TRACE=1 (erofs-oci
# servers write EROFS_OCI_FILL_TRACE, kept as $BENCH_OUT/fill-VARIANT.txt; each step's start is
# in steps.tsv for scripts/bench/fill_trace_report.ts FROM_EPOCH_MS TO_EPOCH_MS).
set -uo pipefail
repo=${BENCH_REPO:?BENCH_REPO: the checkout (set by scripts/bench.sh)}
out=${BENCH_OUT:-/run/vm}
peer_bin=${BENCH_PEER_BIN:?BENCH_PEER_BIN: erofs-utils 1.9.3 (set by scripts/bench.sh)}
step_timeout_s=${BENCH_STEP_TIMEOUT_S:-300}
# The FUSE and peer full reads run at well under 1 MB/s in TCG: bound them and report the rate.
slow_tar_timeout_s=${BENCH_SLOW_TAR_TIMEOUT_S:-60}
peer_find_timeout_s=${BENCH_PEER_FIND_TIMEOUT_S:-120}
variants=${BENCH_VARIANTS:-"local-loop erofs-oci-nbd erofs-oci-nbd-20ms trace-python-20ms erofs-oci-fuse peer-mount.erofs"}
work=/tmp/bench
registry_host=127.0.0.1:5000
registry_log=$work/registry.log
# Where the delay of the +20 ms variants goes: the guest's loopback (10 ms each way), or with
# BENCH_REGISTRY_ADDR (a registry scripts/bench.sh serves on the host, reached through QEMU's
# user-mode network) the guest's interface (20 ms out).
netem_dev=lo netem_delay=10ms
if [ -n "${BENCH_REGISTRY_ADDR:-}" ]; then
  registry_host=$BENCH_REGISTRY_ADDR
  registry_log=$out/registry-host.log
  netem_dev=eth0 netem_delay=20ms
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 ||
    { echo "bench: no network to the host's registry" >&2; exit 1; }
fi
repository=bench
ref=$registry_host/$repository:v1
mkdir -p "$work"
results=$out/results.tsv
: >"$results"
: >"$out/mount-timeline.tsv"

log() { printf 'bench: %s\n' "$*" >&2; }
now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# BENCH_CLI_BIN: the single-file artifact (dist/erofs-oci, copied by scripts/bench.sh), which is
# what users run; unset: the CLI from source (scripts/erofs-oci-dev).
if [ -n "${BENCH_CLI_BIN:-}" ]; then
  # Its runtime is unpacked once, as on an installed host, into guest tmpfs (not timed below).
  export EROFS_OCI_RUNTIME_CACHE=$work/runtime
  # Deno's code cache in the guest's own RAM, filled by the first commands below as a user's
  # ~/.cache/deno is by their first runs. Not the host's DENO_DIR: the guest sees that SQLite
  # database through 9p (cache=loose) while host processes write it, and a torn copy crashed
  # Deno in the guest ("Fatal error in :0: unreachable code", 17:36).
  export DENO_DIR=$work/deno-dir
  cli_bin() { "$BENCH_CLI_BIN" "$@"; }
else
  cli_bin() { "$repo/scripts/erofs-oci-dev" "$@"; }
fi
# A registry on the host is not on the guest's loopback: plain HTTP must be asked for.
cli() {
  case "$1" in
  push | mount) [ -n "${BENCH_REGISTRY_ADDR:-}" ] && set -- "$1" --plain-http "${@:2}" ;;
  esac
  cli_bin "$@"
}

registry_pid=""
mounted=()
cleanup() {
  local dir
  for dir in "${mounted[@]}"; do
    mountpoint -q "$dir" || continue
    cli umount "$dir" >/dev/null 2>&1 || umount "$dir" 2>/dev/null || umount -l "$dir" 2>/dev/null
  done
  tc qdisc del dev "$netem_dev" root 2>/dev/null
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null
}
trap cleanup EXIT

# The kernel's warnings on the console (console.txt): the VM boots with loglevel=3, which shows a
# soft lockup's first line but not its registers and call trace (printed at the default level,
# 4), so the two hangs seen (sessions 28, 32) left no backtrace.
echo 5 >/proc/sys/kernel/printk 2>/dev/null

# --- image and registry -------------------------------------------------------------------
t0=$(now)
cp "$BENCH_IMAGE" "$work/image.erofs" || exit 1
image_bytes=$(stat -c %s "$work/image.erofs")
layer=sha256:$(sha256sum "$work/image.erofs" | cut -d' ' -f1)
log "image copied to tmpfs in $(seconds_since "$t0") s: $image_bytes bytes, layer $layer"

mkdir -p "$work/registry"
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $registry_host
health:
  storagedriver:
    enabled: false
EOF
if [ -z "${BENCH_REGISTRY_ADDR:-}" ]; then
  docker-registry serve "$work/registry.yml" >"$registry_log" 2>&1 </dev/null &
  registry_pid=$!
fi
for _ in $(seq 150); do
  curl -sf -o /dev/null "http://$registry_host/v2/" && break
  sleep 0.2
done
curl -sf -o /dev/null "http://$registry_host/v2/" || { log "registry did not start"; cat "$registry_log" >&2; exit 1; }

t0=$(now)
cli --version >/dev/null || { log "the CLI does not start"; exit 1; }
log "CLI: $(cli --version) from ${BENCH_CLI_BIN:-source}; first start (unpack, caches) $(seconds_since "$t0") s"
t0=$(now)
cli push "$ref" "$work/image.erofs" >"$work/push.out" || { log "push failed"; exit 1; }
log "pushed $ref in $(seconds_since "$t0") s (manifest $(head -1 "$work/push.out"))"
push_s=$(seconds_since "$t0")

# The start-up floor under TCG, which bounds any mount made by a Deno program: best of 3 starts of
# a one-line Deno program (the runtime alone), of the CLI (`--version`: runtime and our bundle),
# and of erofs-utils' mount.erofs (`-V`), next to which the mounts below are compared.
best_start_s() {
  local best="" t s
  for _ in 1 2 3; do
    t=$(now)
    "$@" >/dev/null 2>&1 || { echo "failed"; return; }
    s=$(seconds_since "$t")
    if [ -z "$best" ] || awk -v a="$s" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$s; fi
  done
  echo "$best"
}
echo 'console.log(1)' >"$work/one-line.js"
deno_floor_s=$(DENO_DIR=$work/deno-dir-floor best_start_s "$BENCH_REPO/tools/bin/deno" run -q --no-config --no-lock "$work/one-line.js")
cli_start_s=$(best_start_s cli --version)
peer_start_s=$(best_start_s "$peer_bin/mount.erofs" -V)
clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown)
log "start-up, best of 3: a one-line Deno program ${deno_floor_s} s, erofs-oci --version ${cli_start_s} s, mount.erofs -V ${peer_start_s} s (clock source: $clocksource)"
echo "# image_bytes=$image_bytes layer=$layer push_s=$push_s kernel=$(uname -r) cpus=$(nproc) mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo) deno_floor_s=$deno_floor_s cli_start_s=$cli_start_s peer_start_s=$peer_start_s clocksource=$clocksource" >"$out/meta.txt"

# --- measurement helpers ------------------------------------------------------------------
log_lines() { wc -l <"$registry_log"; }
# GETs of the layer blob logged after line $1: "COUNT BYTES" (access log field 10 = bytes sent).
blob_gets_since() {
  tail -n +"$(($1 + 1))" "$registry_log" |
    grep -F "\"GET /v2/$repository/blobs/$layer " |
    awk '{ n++; b += $10 } END { printf "%d %d\n", n, b }'
}
# Sizes of the layer GETs between log lines $1 and $2 → "STEP SIZE COUNT" lines in get-sizes.tsv.
record_get_sizes() {
  sed -n "$(($2 + 1)),$3p" "$registry_log" | grep -F "\"GET /v2/$repository/blobs/$layer " |
    awk '{ print $10 }' | sort -n | uniq -c | sort -rn |
    awk -v n="$1" -v s="$4" '{ printf "%s\t%s\t%s\t%s\n", n, s, $2, $1 }' >>"$out/get-sizes.tsv"
}
block_device_of() { basename "$(findmnt -n -o SOURCE -M "$1")"; }
# Sectors read of every block device, to diff against (device counters survive reconnects).
snapshot_block_stats() { for f in /sys/block/*/stat; do echo "$(basename "$(dirname "$f")") $(awk '{ print $3 }' "$f")"; done >"$1"; }
# Bytes read from device $1 since snapshot $2.
device_read_since() {
  local before
  before=$(awk -v d="$1" '$1 == d { print $2 }' "$2")
  awk -v b="${before:-0}" '{ printf "%d\n", ($3 - b) * 512 }' "/sys/block/$1/stat"
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# Where a mount's seconds went → "NAME<TAB>SECONDS<TAB>EVENT" lines in mount-timeline.tsv, in
# seconds since the mount command started ($2): the server process's exec (/proc start time,
# 10 ms ticks), then each line its log has up to "ready" (the server starts logging once the
# CLI has resolved the image and handed it the spec), the start-up marks of the CLI and the
# server (EROFS_OCI_TIMING file timing-$5.txt), then the mount command's return ($3).
mount_timeline() {
  local name=$1 t0=$2 t1=$3 pid=$4 ticks up log line stamp
  {
    if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
      # Start time in ticks since boot, against the uptime now (btime can be off by seconds).
      ticks=$(awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$pid/stat")
      read -r up _ </proc/uptime
      awk -v u="$up" -v e="$(now)" -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v a="$t0" \
        -v n="$name" 'BEGIN { printf "%s\t%.2f\tserver process started\n", n, e - (u - t / hz) - a }'
      log=$(grep -l "^[^ ]* info server $pid starting" /run/erofs-oci/mounts/*/server.log 2>/dev/null | head -1)
      if [ -n "$log" ]; then
        while IFS= read -r line; do
          stamp=$(date -d "${line%% *}" +%s.%N 2>/dev/null) || continue
          awk -v s="$stamp" -v a="$t0" -v n="$name" -v m="${line#* }" \
            'BEGIN { printf "%s\t%.2f\t%s\n", n, s - a, substr(m, 1, 400) }'
          [[ $line == *" info ready:"* ]] && break
        done <"$log"
        # The whole log so far, for what came after ready (a dropped NBD connection, its heal).
        cp "$log" "$out/server-$name.log" 2>/dev/null
      fi
    fi
    # "timing PID LABEL… EPOCH-MS +MS" lines of lib/timing.ts (the mount's, when it has them).
    [ -f "$work/timing-$5.txt" ] && awk -v a="$t0" -v n="$name" '$1 == "timing" {
      label = $3; for (i = 4; i < NF - 1; i++) label = label " " $i
      printf "%s\t%.2f\tmark %s (pid %s)\n", n, $(NF - 1) / 1000 - a, label, $2 }' "$work/timing-$5.txt"
    awk -v a="$t0" -v b="$t1" -v n="$name" 'BEGIN { printf "%s\t%.2f\tmount command returned\n", n, b - a }'
  } | sort -t $'\t' -k2,2g >>"$out/mount-timeline.tsv"
}
# CPU seconds (user + system) of this shell's waited-for children so far (the mount command
# among them), into $children_s: `times` in this shell, since a subshell has children of its own.
children_cpu() {
  times >"$work/times"
  children_s=$(awk 'END {
    for (i = 1; i <= NF; i++) { split($i, p, "m"); sub(/s$/, "", p[2]); s += p[1] * 60 + p[2] }
    printf "%.2f", s }' "$work/times")
}
# CPU seconds (user + system) of process $1 so far, 0 when it is gone or not given.
process_cpu_s() {
  if [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ]; then
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"
  else
    echo 0
  fi
}
# CPU seconds of process $1's threads so far, summed by thread name, largest first.
threads_cpu() {
  [ -n "${1:-}" ] && [ -d "/proc/$1/task" ] || return 0
  cat /proc/"$1"/task/*/stat 2>/dev/null | awk -v hz="$(getconf CLK_TCK)" '{
      name = $0; sub(/^[^(]*\(/, "", name); sub(/\) .*$/, "", name)
      rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
      cpu[name] += (f[12] + f[13]) / hz; n[name]++
    } END { for (k in cpu) printf "%.2f %s (%d)\n", cpu[k], k, n[k] }' | sort -rn | head -8 |
    awk '{ line = line (NR > 1 ? ", " : "") $0 } END { print line }'
}
# "BUSY TOTAL" ticks of all CPUs (/proc/stat: idle and iowait are not busy).
cpu_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat; }
# How much of the guest's CPUs a mount used (NAME BEFORE AFTER T0 T1 "CLI REGISTRY" twice, SERVER
# seconds), and by whom: whether the mount waits on CPU (both vCPUs busy: its processes and the
# registry compete) or on something else. /proc/stat's share comes from timer ticks, which the
# TCG guest undercounts (the processes' own times, from the scheduler's clock, add up to more).
cpu_used() {
  local name=$1 before=$2 after=$3
  awk -v n="$name" -v b="$before" -v a="$after" -v t0="$4" -v t1="$5" -v hz="$(getconf CLK_TCK)" \
    -v p0="$6" -v p1="$7" -v srv="${8:-0}" \
    -v cpus="$(nproc)" 'BEGIN {
      split(b, x, " "); split(a, y, " ")
      busy = (y[1] - x[1]) / hz; total = (y[2] - x[2]) / hz
      if (total <= 0) exit
      printf "bench: [%s] mount used %.2f of %d vCPUs x %.2f s (%.0f%% busy)", n, busy, cpus, t1 - t0, 100 * busy / total
      split(p0, u, " "); split(p1, v, " ")
      printf "; CPU s: mount command %.2f, its server %.2f, registry %.2f\n", v[1] - u[1], srv, v[2] - u[2]
    }' >&2
}
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# Block request trace (tracefs block_rq_issue) of the find and tar steps, for replaying the
# kernel's request sequence against cache settings on the host (scripts/bench/replay.ts).
tracing=/sys/kernel/tracing
trace_start() {
  [ -d "$tracing/events/block" ] || mount -t tracefs nodev "$tracing" 2>/dev/null || return 0
  [ -d "$tracing/events/block/block_rq_issue" ] || return 0
  echo 0 >"$tracing/tracing_on"
  echo 16384 >"$tracing/buffer_size_kb"
  : >"$tracing/trace"
  echo 1 >"$tracing/events/block/block_rq_issue/enable"
  sched_trace_events 1
  echo 1 >"$tracing/tracing_on"
}
# BENCH_SCHED_TRACE=1 (a diagnostic): during the find also request completions, bios as they are
# queued (who asked, before the request is issued), context switches and wake-ups, kept whole in
# trace-NAME.sched.txt (what ran on each vCPU while a request waited).
sched_trace_events() {
  [ "${BENCH_SCHED_TRACE:-}" = 1 ] || return 0
  local event
  for event in block/block_rq_complete block/block_bio_queue sched/sched_switch sched/sched_wakeup; do
    echo "$1" >"$tracing/events/$event/enable"
  done
}
trace_mark() {
  [ -w "$tracing/trace_marker" ] && echo "bench-step $1" >"$tracing/trace_marker"
  if [ "$1" = tar ]; then sched_trace_events 0; fi
}
trace_stop() {
  [ -f "$tracing/tracing_on" ] || return 0
  echo 0 >"$tracing/tracing_on"
  echo 0 >"$tracing/events/block/block_rq_issue/enable"
  sched_trace_events 0
  grep -E "bench-step|block_rq_issue: [0-9]+,[0-9]+ R" "$tracing/trace" >"$1"
  if [ "${BENCH_SCHED_TRACE:-}" = 1 ]; then
    sed -n '/bench-step find/,/bench-step tar/p' "$tracing/trace" >"${1%.txt}.sched.txt"
  fi
  : >"$tracing/trace"
}

# Time of `find DIR | wc -l` bounded by $2 s → globals find_s, find_entries, find_bounded.
timed_find() {
  local t0 status
  t0=$(now)
  find_entries=$(timeout -k 10 "$2" find "$1" 2>/dev/null | wc -l)
  status=${PIPESTATUS[0]}
  find_s=$(seconds_since "$t0")
  find_bounded=0
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    find_bounded=1
    log "find in $1 stopped after $2 s (bounded); $find_entries entries by then"
  elif [ "$status" != 0 ]; then
    log "find in $1 exited with $status"
  fi
}
# Time of `tar cf - DIR | wc -c` bounded by $2 s → globals tar_s, tar_bytes, tar_bounded.
timed_tar() {
  local t0 status err
  err=$work/tar-$(basename "$1").err
  t0=$(now)
  # -vv: the member listing (to stderr, as the archive is stdout) is compared with the local
  # loop's, so a full read that returns different files or sizes is caught, not timed.
  tar_bytes=$(timeout -k 10 "$2" tar -C / -cvvf - "${1#/}" 2>"$err" | wc -c)
  status=${PIPESTATUS[0]}
  tar_s=$(seconds_since "$t0")
  tar_bounded=0
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    tar_bounded=1
    log "tar of $1 stopped after $2 s (bounded); $tar_bytes bytes by then"
  elif [ "$status" != 0 ]; then
    log "tar of $1 exited with $status"
  fi
  grep '^tar: ' "$err" >"$err.messages"
  [ -s "$err.messages" ] && log "tar of $1: $(wc -l <"$err.messages") messages, first: $(head -1 "$err.messages")"
  # Members with mode, owner, size, time, name (and link target); mount point cut off.
  grep -v '^tar: ' "$err" | sed "s|${1#/}/||g" | sort >"$work/listing-$(basename "$1")"
  if [ "$1" != /mnt/bench-local ] && [ -f "$work/listing-bench-local" ] && [ "$tar_bounded" = 0 ]; then
    if cmp -s "$work/listing-bench-local" "$work/listing-$(basename "$1")"; then
      log "tar listing of $1 matches the local loop's"
    else
      log "tar listing of $1 DIFFERS from the local loop's:"
      diff "$work/listing-bench-local" "$work/listing-$(basename "$1")" | head -10 >&2
    fi
  fi
}

# measure NAME DIR MOUNT_FN UMOUNT_FN PID_FN FIND_TIMEOUT_S TAR_TIMEOUT_S [trace]
# MOUNT_FN mounts DIR; PID_FN prints the serving process id (empty for none).
measure() {
  local name=$1 dir=$2 mount_fn=$3 umount_fn=$4 pid_fn=$5 find_timeout_s=$6 tar_timeout_s=$7
  local trace=${8:-}
  local rss_mount t0 t1 mount_s mark0 mark1 mark2 mark3 dev read0 read1 read2 pid rss hwm listed
  local gets_mount gets_find gets_tar n0 b0 n1 b1 n2 b2
  mkdir -p "$dir"
  mounted+=("$dir")
  log "[$name] mount"
  snapshot_block_stats "$work/stats0"
  mark0=$(log_lines)
  cpu0=$(cpu_ticks)
  children_cpu
  proc0="$children_s $(process_cpu_s "$registry_pid")"
  t0=$(now)
  if ! "$mount_fn" "$dir"; then
    log "[$name] mount FAILED"
    printf '%s\tFAILED\n' "$name" >>"$results"
    return 1
  fi
  t1=$(now)
  cpu1=$(cpu_ticks)
  children_cpu
  proc1="$children_s $(process_cpu_s "$registry_pid")"
  mount_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  dev=$(block_device_of "$dir")
  pid=$("$pid_fn" "$dir")
  cpu_used "$name" "$cpu0" "$cpu1" "$t0" "$t1" "$proc0" "$proc1" "$(process_cpu_s "$pid")"
  [ -n "$pid" ] && log "[$name] server threads' CPU s by name (count): $(threads_cpu "$pid")"
  [[ $name == erofs-oci* ]] && mount_timeline "$name" "$t0" "$t1" "$pid" "$(basename "$dir")"
  rss_mount=0
  [ -n "$pid" ] && rss_mount=$(rss_kb "$pid")
  sleep 0.3 # let the access log catch up before counting
  read0=$(device_read_since "$dev" "$work/stats0")

  [ -n "$trace" ] && trace_start
  drop_caches
  mark1=$(log_lines)
  log "[$name] cold find ($dev)"
  trace_mark find
  printf '%s\tfind\t%s\n' "$name" "$(now)" >>"$out/steps.tsv"
  timed_find "$dir" "$find_timeout_s"
  sleep 0.3
  read1=$(device_read_since "$dev" "$work/stats0")

  drop_caches
  mark2=$(log_lines)
  log "[$name] cold tar"
  trace_mark tar
  printf '%s\ttar\t%s\n' "$name" "$(now)" >>"$out/steps.tsv"
  timed_tar "$dir" "$tar_timeout_s"
  printf '%s\tend\t%s\n' "$name" "$(now)" >>"$out/steps.tsv"
  [ -f "$work/fill-${dir##*/}.txt" ] && cp "$work/fill-${dir##*/}.txt" "$out/fill-$name.txt"
  sleep 0.3
  read2=$(device_read_since "$dev" "$work/stats0")
  mark3=$(log_lines)
  [ -n "$trace" ] && trace_stop "$out/trace-$name.txt"
  # The server's whole log again, after the steps: what it said during them (a dropped NBD
  # connection and its replacement, a stalled read).
  if [[ $name == erofs-oci* ]] && [ -n "$pid" ]; then
    local server_log
    server_log=$(grep -l "^[^ ]* info server $pid starting" /run/erofs-oci/mounts/*/server.log 2>/dev/null | head -1)
    [ -n "$server_log" ] && cp "$server_log" "$out/server-$name.log" 2>/dev/null
  fi

  rss=0 hwm=0 listed="-	-"
  if [ -n "$pid" ]; then
    rss=$(rss_kb "$pid")
    hwm=$(hwm_kb "$pid")
  fi
  if [[ $name == erofs-oci* ]]; then
    listed=$(cli list --json | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    if m["target"] == sys.argv[1]:
        print(m.get("bytesFetched", "-"), m.get("bytesRequested", "-"), sep="\t")' "$dir")
  fi
  read -r n0 b0 <<<"$(blob_gets_since "$mark0")"
  read -r n1 b1 <<<"$(blob_gets_since "$mark1")"
  read -r n2 b2 <<<"$(blob_gets_since "$mark2")"
  gets_mount="$((n0 - n1)) $((b0 - b1))"
  gets_find="$((n1 - n2)) $((b1 - b2))"
  gets_tar="$n2 $b2"
  # variant mount_s find_s find_entries tar_s tar_bytes tar_bounded
  # gets_mount bytes_mount gets_find bytes_find gets_tar bytes_tar
  # dev_read_mount dev_read_find dev_read_tar rss_kb hwm_kb list_fetched list_requested
  # find_bounded rss_after_mount_kb
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$name" "$mount_s" "$find_s" "$find_entries" "$tar_s" "$tar_bytes" "$tar_bounded" \
    ${gets_mount} ${gets_find} ${gets_tar} \
    "$read0" "$((read1 - read0))" "$((read2 - read1))" "$rss" "$hwm" "$listed" \
    "$find_bounded" "$rss_mount" >>"$results"
  log "[$name] mount ${mount_s}s, find ${find_s}s ($find_entries), tar ${tar_s}s ($tar_bytes B)," \
    "GETs mount/find/tar: ${gets_mount% *}/${gets_find% *}/${gets_tar% *}, RSS ${rss} kB"
  # Request sizes per step, for the "why" (readahead, max_sectors_kb).
  record_get_sizes "$name" "$mark1" "$mark2" find
  record_get_sizes "$name" "$mark2" "$mark3" tar
  for q in max_sectors_kb read_ahead_kb rq_affinity; do
    printf '%s\t%s\t%s\n' "$name" "$q" "$(cat "/sys/block/$dev/queue/$q")" >>"$out/queue.tsv"
  done
  # The active I/O scheduler (in brackets): with one, nbd requests are issued by kblockd.
  sed -n 's/.*\[\(.*\)\].*/\1/p' "/sys/block/$dev/queue/scheduler" |
    awk -v n="$name" '{ printf "%s\tscheduler\t%s\n", n, $0 }' >>"$out/queue.tsv"

  log "[$name] umount"
  "$umount_fn" "$dir" || log "[$name] umount failed"
}

# --- variants -----------------------------------------------------------------------------
no_pid() { :; }

local_mount() { mount -t erofs -o ro,loop "$work/image.erofs" "$1"; }
local_umount() { umount "$1"; }

# Each variant starts from an empty disk cache of its own: a cold mount fetches from the
# registry (the default /var/cache/erofs-oci would serve a later variant from disk).
# EROFS_OCI_TIMING: the CLI and its server append their start-up marks (lib/timing.ts) there.
# Names by parameter expansion, not $(basename …): these run inside the timed mount, where each
# command substitution is a fork (and basename an exec), ~0.3 s each in the TCG guest.
# BENCH_FILL_TRACE=1: the server's fill events (lib/source/fill_trace.ts), a diagnostic, in
# $work (copied to $out after the tar: not through the host share while timed).
fill_trace_prefix=
[ "${BENCH_FILL_TRACE:-}" = 1 ] && fill_trace_prefix=$work/fill-
oci_nbd_mount() {
  EROFS_OCI_FILL_TRACE=${fill_trace_prefix:+$fill_trace_prefix${1##*/}.txt} EROFS_OCI_CACHE_DIR=$work/disk-cache/${1##*/} EROFS_OCI_TIMING=$work/timing-${1##*/}.txt \
    cli mount "$ref" "$1" --backend nbd >"$work/mount-${1##*/}.log" 2>&1
}
oci_fuse_mount() {
  EROFS_OCI_FILL_TRACE=${fill_trace_prefix:+$fill_trace_prefix${1##*/}.txt} EROFS_OCI_CACHE_DIR=$work/disk-cache/${1##*/} EROFS_OCI_TIMING=$work/timing-${1##*/}.txt \
    cli mount "$ref" "$1" --backend fuse >"$work/mount-${1##*/}.log" 2>&1
}
oci_umount() { cli umount "$1"; }
# The NBD transport alone, no registry (diagnostics, not in the default list): our server and
# qemu-nbd (a C server, Debian's qemu-utils) serving the tmpfs copy the local loop reads, so
# what a kernel NBD request costs under TCG is told apart from what fetching costs.
oci_nbd_local_mount() {
  EROFS_OCI_CACHE_DIR=$work/disk-cache/${1##*/} EROFS_OCI_TIMING=$work/timing-${1##*/}.txt \
    cli mount "$work/image.erofs" "$1" --backend nbd >"$work/mount-${1##*/}.log" 2>&1
}
# nbds_max=16 (scripts/vm/build.sh): the last device, which our servers reach only at 16 mounts.
qemu_nbd_device=/dev/nbd15
qemu_nbd_mount() {
  # Its own socket path: the default is in /var/lock, which the guest lacks.
  qemu-nbd --connect="$qemu_nbd_device" --socket="$work/qemu-nbd.sock" --read-only \
    --format=raw "$work/image.erofs" >"$work/qemu-nbd.log" 2>&1 &&
    mount -t erofs -o ro "$qemu_nbd_device" "$1"
}
qemu_nbd_umount() {
  umount "$1"
  qemu-nbd --disconnect "$qemu_nbd_device" >/dev/null 2>&1
}
oci_pid() {
  cli list --json | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    if m["target"] == sys.argv[1]:
        print(m["serverPid"])' "$1"
}

netem_on() {
  if [ -z "${BENCH_NETEM_KO:-}" ] || [ ! -f "$BENCH_NETEM_KO" ]; then
    log "no sch_netem.ko: cannot add delay"
    return 1
  fi
  [ -d /sys/module/sch_netem ] || insmod "$BENCH_NETEM_KO" || return 1
  # 10 ms each way on loopback (20 ms out on eth0 with a host registry) = 20 ms added round
  # trip for every registry request.
  tc qdisc add dev "$netem_dev" root netem delay "$netem_delay" limit 100000
}
netem_off() { tc qdisc del dev "$netem_dev" root 2>/dev/null; }
oci_nbd_20ms_mount() { netem_on && oci_nbd_mount "$1"; }
oci_nbd_20ms_umount() {
  oci_umount "$1"
  netem_off
}

peer_mount() {
  mkdir -p -m 700 /var/run/erofsmount/nbd
  # It forks a server that keeps stdout/stderr open: never let it inherit a pipe.
  "$peer_bin/mount.erofs" -t erofs.nbd -o "oci.blob=$layer,oci.insecure" "$ref" "$1" \
    >"$work/peer-mount.log" 2>&1 </dev/null
}
peer_umount() {
  local dev
  dev=$(findmnt -n -o SOURCE -M "$1")
  "$peer_bin/mount.erofs" -u "$1" >>"$work/peer-mount.log" 2>&1 </dev/null || umount "$1" || return 1
  # -u should also end the NBD connection; make sure the device is free for nothing else.
  if [ -e "/sys/block/$(basename "$dev")/pid" ]; then
    "$peer_bin/mount.erofs" --disconnect "$dev" >>"$work/peer-mount.log" 2>&1 </dev/null || true
  fi
}
peer_pid() {
  local dev tid
  dev=$(basename "$(findmnt -n -o SOURCE -M "$1")")
  tid=$(cat "/sys/block/$dev/pid" 2>/dev/null) || return 0
  awk '/^Tgid/ { print $2 }' "/proc/$tid/status" 2>/dev/null
}

# Recorded prefetch at +20 ms RTT (issue 13's VM target: a cold python start right after a
# cold NBD mount with a trace within 1.5x of the local loop mount). The trace is recorded once
# over NBD (`erofs-oci trace --push`, itself at +20 ms); then local, untraced (--no-prefetch)
# and traced runs interleave, each on a memory-only cache with the page cache dropped before
# the mount. One line per run in trace-python.tsv (kind, run, mount s, python s); the summary
# (medians, median of per-run ratios to the local run of the same round) in trace-python.md.
trace_python_runs=${BENCH_TRACE_RUNS:-3}
python_imports="import json, email, http.client"
python_code() {
  local lib=$1/usr/lib/python3.11
  printf 'import sys; sys.path.insert(0, "%s"); %s; assert json.__file__.startswith("%s"), json.__file__' \
    "$lib" "$python_imports" "$lib"
}
# Where the time of one traced-python run goes (kept in $out/trace-python/KIND-RUN.*): the block
# requests python's reads cause (tracefs block_rq_issue/complete: count, size, latency), CPU of
# the whole guest and of the mount server while python runs (/proc/stat, /proc/PID/stat), the
# server's counters after python (list --json) and its log (prefetch start/finish times).
tp_dir=$out/trace-python
# Once per benchmark: sizing the ring buffer takes seconds under TCG (not between mount and
# python, where it would give the prefetch time the benchmark does not mean to give).
rq_trace_setup() {
  [ -d "$tracing/events/block" ] || mount -t tracefs nodev "$tracing" 2>/dev/null || return 0
  [ -d "$tracing/events/block/block_rq_issue" ] || return 0
  echo 0 >"$tracing/tracing_on"
  echo 16384 >"$tracing/buffer_size_kb"
}
rq_trace_start() {
  [ -d "$tracing/events/block/block_rq_issue" ] || return 0
  : >"$tracing/trace"
  echo 1 >"$tracing/events/block/block_rq_issue/enable"
  echo 1 >"$tracing/events/block/block_rq_complete/enable"
  echo 1 >"$tracing/tracing_on"
}
rq_trace_stop() {
  [ -f "$tracing/tracing_on" ] || return 0
  echo 0 >"$tracing/tracing_on"
  echo 0 >"$tracing/events/block/block_rq_issue/enable"
  echo 0 >"$tracing/events/block/block_rq_complete/enable"
  grep -E "tp-mark|block_rq_(issue|complete): " "$tracing/trace" >"$1"
  : >"$tracing/trace"
}
# Between the mount's return and python's start only bash builtins run (no fork, no exec): a
# process start takes ~0.5 s in this TCG guest under load, and every second there would be
# time the trace prefetch gets that the benchmark does not mean to give it.
# Server pid of the mount at $1 → REPLY (state.json read with builtins).
server_pid_builtin() {
  local f line pid match
  REPLY=""
  for f in /run/erofs-oci/mounts/*/state.json; do
    [ -f "$f" ] || continue
    pid="" match=""
    while IFS= read -r line; do
      [[ $line == *"\"target\": \"$1\""* ]] && match=1
      [[ $line =~ \"serverPid\":\ ([0-9]+) ]] && pid=${BASH_REMATCH[1]}
    done <"$f"
    if [ -n "$match" ] && [ -n "$pid" ]; then
      REPLY=$pid
      return
    fi
  done
}
# user+system ticks of process $1 → REPLY (its name, "deno", has no space: fields 14, 15).
cpu_ticks_builtin() {
  local st
  REPLY=0
  [ -n "$1" ] && read -r -a st <"/proc/$1/stat" 2>/dev/null && REPLY=$((st[13] + st[14]))
}
# "busy total" jiffies of all CPUs (idle and iowait count as not busy) → REPLY.
cpu_busy_builtin() {
  local _cpu u n s i w irq sirq st g gn
  read -r _cpu u n s i w irq sirq st g gn </proc/stat
  REPLY="$((u + n + s + irq + sirq + st + g + gn)) $((u + n + s + i + w + irq + sirq + st + g + gn))"
}
server_log_of() { grep -l "^[^ ]* info server $1 starting" /run/erofs-oci/mounts/*/server.log 2>/dev/null | head -1; }
# $1 kind, $2 run, $3 dir (builtins only, see above).
tp_measure_before() {
  tp_base=$tp_dir/$1-$2 tp_pid=""
  [ "$1" = local ] || {
    server_pid_builtin "$3"
    tp_pid=$REPLY
  }
  cpu_busy_builtin
  tp_cpu0=$REPLY
  cpu_ticks_builtin "$tp_pid"
  tp_server0=$REPLY
  rq_trace_start
  [ -w "$tracing/trace_marker" ] && echo "tp-mark python-start $EPOCHREALTIME" >"$tracing/trace_marker"
}
# $1 kind, $2 dir, $3 mount start, $4 mount return, $5 python start, $6 python end (epoch s).
tp_measure_after() {
  local cpu1 server1 log dev
  [ -w "$tracing/trace_marker" ] && echo "tp-mark python-end $EPOCHREALTIME" >"$tracing/trace_marker"
  cpu_busy_builtin
  cpu1=$REPLY
  cpu_ticks_builtin "$tp_pid"
  server1=$REPLY
  rq_trace_stop "$tp_base.blk.txt"
  dev=$(block_device_of "$2")
  {
    echo "mount_start $3"
    echo "mount_return $4"
    echo "python_start $5"
    echo "python_end $6"
    echo "device $dev read_ahead_kb $(cat "/sys/block/$dev/queue/read_ahead_kb")" \
      "max_sectors_kb $(cat "/sys/block/$dev/queue/max_sectors_kb")"
    echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "cpu_busy_total_before $tp_cpu0"
    echo "cpu_busy_total_after $cpu1"
    echo "server_pid ${tp_pid:--} server_cpu_ticks_during_python $((server1 - tp_server0))"
  } >"$tp_base.txt"
  if [ -n "$tp_pid" ]; then
    cli list --json >"$tp_base.list1.json" 2>/dev/null
    sleep 1 # the prefetch may still log its summary
    log=$(server_log_of "$tp_pid")
    [ -n "$log" ] && cp "$log" "$tp_base.server.log"
  fi
}
trace_python_20ms() {
  local dir=/mnt/bench-tp tsv=$out/trace-python.tsv i t0 t1 t2 t3 mount_s python_s python_ok kind code
  command -v python3.11 >/dev/null || { log "[trace-python-20ms] no python3.11"; return 1; }
  mkdir -p "$dir" "$tp_dir"
  mounted+=("$dir")
  : >"$tsv"
  netem_on || return 1
  rq_trace_setup
  log "[trace-python-20ms] recording the trace (NBD, +20 ms)"
  t0=$(now)
  if ! cli trace "$ref" --backend nbd --push -- python3.11 -B -c "$(python_code "{}")" \
    >"$work/trace-record.log" 2>&1; then
    log "[trace-python-20ms] trace FAILED: $(tail -3 "$work/trace-record.log")"
    netem_off
    return 1
  fi
  log "[trace-python-20ms] trace recorded in $(seconds_since "$t0") s: $(tail -1 "$work/trace-record.log")"
  code=$(python_code "$dir")
  for i in $(seq "$trace_python_runs"); do
    for kind in local untraced traced; do
      drop_caches
      t0=$EPOCHREALTIME
      case $kind in
      local) mount -t erofs -o ro,loop "$work/image.erofs" "$dir" ;;
      untraced) cli mount "$ref" "$dir" --backend nbd --no-disk-cache --no-prefetch >/dev/null ;;
      traced) cli mount "$ref" "$dir" --backend nbd --no-disk-cache >/dev/null ;;
      esac || { log "[trace-python-20ms] $kind mount FAILED"; netem_off; return 1; }
      t1=$EPOCHREALTIME
      tp_measure_before "$kind" "$i" "$dir"
      t2=$EPOCHREALTIME
      python_ok=1
      timeout -k 10 "$step_timeout_s" python3.11 -B -c "$code" >/dev/null || python_ok=0
      t3=$EPOCHREALTIME
      tp_measure_after "$kind" "$dir" "$t0" "$t1" "$t2" "$t3"
      mount_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
      python_s=FAILED
      [ "$python_ok" = 1 ] && python_s=$(awk -v a="$t2" -v b="$t3" 'BEGIN { printf "%.2f", b - a }')
      printf '%s\t%s\t%s\t%s\n' "$kind" "$i" "$mount_s" "$python_s" >>"$tsv"
      log "[trace-python-20ms] $kind run $i: mount ${mount_s}s, cold python ${python_s}s"
      if [ "$kind" = local ]; then umount "$dir"; else oci_umount "$dir" >/dev/null; fi ||
        { log "[trace-python-20ms] umount FAILED"; netem_off; return 1; }
    done
  done
  netem_off
  python3 - "$tsv" "$trace_python_runs" "$python_imports" >"$out/trace-python.md" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
runs = {}
for kind, i, mount_s, python_s in rows:
    runs.setdefault(kind, {})[i] = (float(mount_s), float(python_s))
local = runs["local"]
print(f"Kernel NBD in the VM, +20 ms RTT (netem on lo), python3.11 -B -c '{sys.argv[3]}', "
      f"median of {sys.argv[2]} interleaved rounds, memory-only cache\n")
print("| run | mount | cold python right after | vs local (median of per-round ratios) |")
print("|---|---|---|---|")
for kind, name in (("local", "local loop mount"), ("untraced", "erofs-oci NBD, no trace"),
                   ("traced", "erofs-oci NBD, trace prefetch")):
    r = runs[kind]
    mount = statistics.median(m for m, _ in r.values())
    python = statistics.median(p for _, p in r.values())
    ratio = statistics.median(p / local[i][1] for i, (_, p) in r.items())
    print(f"| {name} | {mount:.2f} s | {python:.2f} s | {ratio:.2f}× |")
PY
  cat "$out/trace-python.md" >&2
}

for variant in $variants; do
  case $variant in
  local-loop)
    measure "$variant" /mnt/bench-local local_mount local_umount no_pid "$step_timeout_s" \
      "$step_timeout_s" trace
    ;;
  erofs-oci-nbd)
    measure "$variant" /mnt/bench-nbd oci_nbd_mount oci_umount oci_pid "$step_timeout_s" \
      "$step_timeout_s" trace
    ;;
  erofs-oci-nbd-20ms)
    measure "$variant" /mnt/bench-nbd20 oci_nbd_20ms_mount oci_nbd_20ms_umount oci_pid \
      "$step_timeout_s" "$step_timeout_s" || netem_off
    ;;
  erofs-oci-fuse)
    measure "$variant" /mnt/bench-fuse oci_fuse_mount oci_umount oci_pid "$step_timeout_s" \
      "$slow_tar_timeout_s"
    ;;
  trace-python-20ms) trace_python_20ms || netem_off ;;
  erofs-oci-nbd-local)
    measure "$variant" /mnt/bench-nbd-local oci_nbd_local_mount oci_umount oci_pid \
      "$step_timeout_s" "$step_timeout_s"
    ;;
  qemu-nbd-local)
    command -v qemu-nbd >/dev/null || { log "[$variant] qemu-nbd not installed (qemu-utils)"; continue; }
    measure "$variant" /mnt/bench-qemu-nbd qemu_nbd_mount qemu_nbd_umount no_pid \
      "$step_timeout_s" "$step_timeout_s"
    ;;
  peer-mount.erofs)
    measure "$variant" /mnt/bench-peer peer_mount peer_umount peer_pid "$peer_find_timeout_s" \
      "$slow_tar_timeout_s"
    ;;
  *) log "unknown variant $variant" ;;
  esac
done

[ "$registry_log" = "$out/registry.log" ] || cp "$registry_log" "$out/registry.log" 2>/dev/null
cp "$work"/mount-*.log "$work"/tar-*.err "$work/peer-mount.log" "$work/qemu-nbd.log" "$out/" \
  2>/dev/null
# The kernel's side of the run (NBD request timeouts, dropped connections), for the record.
dmesg >"$out/dmesg.txt" 2>/dev/null
grep -F "\"GET " "$registry_log" | tail -n 3 >&2
log "done"
