#!/usr/bin/env bash
# Speed benchmark (issue 4): prints figures, it is not a test. `deno task bench` runs it.
# Builds the benchmark EROFS image on the host (cached in .cache/bench/), boots the kernel-test
# VM once (scripts/vm/run.sh) and compares, in that VM: a local loop mount of the image (the
# limit), erofs-oci over NBD with the registry on loopback, the same with 20 ms added round
# trip (netem on lo), erofs-oci over FUSE, and erofs-utils 1.9.3 `mount.erofs -t erofs.nbd`;
# erofs-oci-nbd-local / qemu-nbd-local (BENCH_VARIANTS only): NBD from the tmpfs copy, no
# registry: our server against qemu-nbd, a C server, for the transport's own cost under TCG;
# trace-python-20ms: a cold python start after a cold NBD mount with a recorded trace, +20 ms
# (per run: block requests, CPU, prefetch timing; scripts/bench/trace_python_breakdown.ts).
# Method and recorded figures: docs/benchmarks.md.
# Env: BENCH_VARIANTS (subset, see scripts/bench/guest.sh), BENCH_SLOW_TAR_TIMEOUT_S (60: FUSE
#      and peer full reads), BENCH_PEER_FIND_TIMEOUT_S (120), BENCH_STEP_TIMEOUT_S (300),
#      BENCH_VM_TIMEOUT_S (1200), BENCH_TRACE_RUNS (3), BENCH_CLI (dist, default: the single-file
#      artifact as users run it, built by scripts/build.sh from HEAD, or BENCH_REV for an A/B;
#      source: the working tree
#      through scripts/erofs-oci-dev, as before), BENCH_FILL_TRACE=1 (the servers' fill traces in
#      the run directory, with each step's start in steps.tsv), BENCH_SCHED_TRACE=1 (the cold
#      find's context switches, wake-ups and request completions in trace-NAME.sched.txt; summed up
#      by scripts/bench/sched_trace_report.ts), BENCH_REGISTRY=host (experiment: the registry runs
#      on the host, reached through QEMU's user-mode network, so that only the mount's own work
#      shares the guest's two emulated CPUs; default: in the guest, on its loopback).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=$repo/.cache/bench
deno=$repo/tools/bin/deno
mkdir -p "$cache/runs"

log() { printf 'bench: %s\n' "$*" >&2; }

image=$("$repo/scripts/bench/build-image.sh" "$cache")

# sch_netem for the 20 ms variant, taken from the same kernel package the VM boots (the VM's
# initramfs does not carry it; the guest sees the host's / and can insmod it from here).
"$repo/scripts/vm/build.sh"
pkg=$(head -1 "$repo/.cache/vm/stamp" | cut -d' ' -f1)
kver=${pkg#linux-image-}
netem_ko=$cache/modules/$kver/sch_netem.ko
if [ ! -f "$netem_ko" ]; then
  deb=$(ls "$repo/.cache/vm/dl/${pkg}_"*.deb 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$deb" ]; then
    tmp=$(mktemp -d "$cache/netem.XXXXXX")
    dpkg --fsys-tarfile "$deb" | tar -C "$tmp" -x --wildcards '*/sch_netem.ko*' || true
    found=$(find "$tmp" -name 'sch_netem.ko*' | head -1)
    mkdir -p "$(dirname "$netem_ko")"
    case $found in
    *.ko) cp "$found" "$netem_ko" ;;
    *.ko.xz) xz -dc "$found" >"$netem_ko" ;;
    *.ko.zst) zstd -qdc "$found" >"$netem_ko" ;;
    esac
    rm -rf "$tmp"
  fi
  [ -f "$netem_ko" ] || log "no sch_netem.ko in $pkg: the 20 ms variant will be skipped"
fi

# The guest has no network: fill the Deno cache on the host first.
export DENO_DIR=${DENO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deno}
"$deno" cache -q "$repo/main.ts"

# dist: the artifact is built from the committed tree (git archive HEAD into
# .cache/bench/vm-cli-src), not from the shared checkout, whose uncommitted edits belong to work
# in progress; the guest runs a copy of it. source: the working tree as it is, from source.
cli_desc="source of the working tree (scripts/erofs-oci-dev)"
if [ "${BENCH_CLI:-dist}" = dist ]; then
  head=$(git -C "$repo" rev-parse --short "${BENCH_REV:-HEAD}")
  rm -rf "$cache/vm-cli-src"
  mkdir -p "$cache/vm-cli-src" "$cache/vm-cli"
  git -C "$repo" archive "$head" | tar -x -C "$cache/vm-cli-src"
  ln -s "$repo/tools" "$cache/vm-cli-src/tools"
  "$cache/vm-cli-src/scripts/build.sh" >&2
  cp "$cache/vm-cli-src/dist/erofs-oci" "$cache/vm-cli/erofs-oci.tmp"
  mv -f "$cache/vm-cli/erofs-oci.tmp" "$cache/vm-cli/erofs-oci"
  rm -rf "$cache/vm-cli-src"
  export BENCH_CLI_BIN=$cache/vm-cli/erofs-oci
  VM_ENV="BENCH_CLI_BIN ${VM_ENV:-}"
  cli_desc="dist/erofs-oci built from $head (scripts/build.sh)"
fi

run=$cache/runs/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$run"
export BENCH_IMAGE=$image BENCH_NETEM_KO=$netem_ko BENCH_OUT=/run/vm BENCH_REPO=$repo
BENCH_PEER_BIN=${EROFS_OCI_PEER_BIN:-$repo/../shared/peer/bin}
# Resolved here: a ../shared that is a symlink under /tmp (a worktree's) does not exist in the
# guest, whose /tmp is its own; run.sh binds back only the real directories under /tmp.
if real=$(realpath -e -- "$BENCH_PEER_BIN" 2>/dev/null); then
  BENCH_PEER_BIN=$real
else
  log "erofs-utils 1.9.3 not found in $BENCH_PEER_BIN (set EROFS_OCI_PEER_BIN): the peer variant will fail"
fi
export BENCH_PEER_BIN
# The guest covers /tmp and /run with tmpfs; run.sh binds these back when they live there.
export VM_HOST_PATHS="$DENO_DIR"$'\n'"$BENCH_PEER_BIN"
export VM_ENV="DENO_DIR BENCH_IMAGE BENCH_NETEM_KO BENCH_OUT BENCH_REPO BENCH_PEER_BIN ${VM_ENV:-}"
for name in BENCH_VARIANTS BENCH_SLOW_TAR_TIMEOUT_S BENCH_PEER_FIND_TIMEOUT_S BENCH_STEP_TIMEOUT_S \
  BENCH_TRACE_RUNS BENCH_FILL_TRACE BENCH_SCHED_TRACE; do
  [ -n "${!name:-}" ] && VM_ENV+=" $name"
done

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores, kernel $(uname -r)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "image: $(stat -c %s "$image") bytes ($(basename "$image"), $(cat "$cache/bench.key"))"
  echo "code: HEAD $(git -C "$repo" rev-parse --short HEAD) ($(git -C "$repo" status --short -- lib ffi main.ts | wc -l) files under lib/ffi uncommitted); CLI: $cli_desc"
} >"$run/host.txt"
cat "$run/host.txt" >&2

if [ "${BENCH_REGISTRY:-guest}" = host ]; then
  registry_dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf '%s\n' "version: 0.1" "log:" "  level: warn" "  accesslog:" "    disabled: false" \
    "storage:" "  filesystem:" "    rootdirectory: $registry_dir/data" "http:" \
    "  addr: 127.0.0.1:$port" "health:" "  storagedriver:" "    enabled: false" \
    >"$registry_dir/registry.yml"
  docker-registry serve "$registry_dir/registry.yml" >"$run/registry-host.log" 2>&1 </dev/null &
  registry_pid=$!
  trap 'kill "$registry_pid" 2>/dev/null; wait "$registry_pid" 2>/dev/null || true; rm -rf "$registry_dir"' EXIT
  export BENCH_REGISTRY_ADDR=10.0.2.2:$port VM_NET=user
  VM_ENV+=" BENCH_REGISTRY_ADDR"
  echo "registry: on the host (127.0.0.1:$port, the guest's $BENCH_REGISTRY_ADDR)" >>"$run/host.txt"
fi

rc=0
VM_OUT_DIR=$run "$repo/scripts/vm/run.sh" "$repo/scripts/bench/guest.sh" \
  "${BENCH_VM_TIMEOUT_S:-1200}" >"$run/console.txt" 2>&1 || rc=$?
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$run/host.txt"
# The emulator's setting that moves our variants' figures (scripts/vm/run.sh VM_TB_SIZE_MB).
tcg=$(grep -m1 -o 'translation buffer [^,]*' "$run/console.txt" || true)
[ -n "$tcg" ] && echo "tcg: $tcg" >>"$run/host.txt"
grep -E '^(bench|vm-run):' "$run/console.txt" >&2 || true
[ "$rc" = 0 ] || log "VM run exited with $rc (console: $run/console.txt)"

echo
cat "$run/host.txt"
cat "$run/meta.txt" 2>/dev/null || true
echo
if [ -f "$run/trace-python.md" ]; then
  cat "$run/trace-python.md"
  echo
fi
if [ -d "$run/trace-python" ]; then
  "$deno" run -q --allow-read "$repo/scripts/bench/trace_python_breakdown.ts" "$run" |
    tee "$run/trace-python-breakdown.md"
  echo
fi
# Only trace-python-20ms (BENCH_VARIANTS) leaves no results.tsv rows: nothing more to report.
if [ -s "$run/results.tsv" ]; then
  "$deno" run -q --allow-read "$repo/scripts/bench/report.ts" "$run" | tee "$run/report.md"
fi
if [ -s "$run/mount-timeline.tsv" ]; then
  echo
  echo "mount timeline (s since the mount command started):"
  column -t -s $'\t' "$run/mount-timeline.tsv" 2>/dev/null || cat "$run/mount-timeline.tsv"
fi
exit "$rc"
