#!/usr/bin/env bash
# Builder benchmark: `erofs-oci build` against mkfs.erofs 1.9.3 on the speed benchmark's tree
# (python3.11 + perl + C headers, ~136 MB, see scripts/bench/build-image.sh), both
# uncompressed with the same timestamp and UUID, from the directory and from a tar of it
# (mkfs.erofs --tar=f). Prints wall and CPU time and peak RSS of each build,
# image sizes, fsck.erofs of ours, and the packed-layout effect: how many pages / 2 MiB chunks
# (= registry GETs of a lazy mount's cache) hold the metadata a cold `find` needs.
# The lazy-mount GETs and times also go to .cache/bench/build-latest.json (README speed table:
# scripts/bench/readme_table.ts).
# Usage: scripts/bench-build.sh [WORK_DIR]   (default: a temp dir, removed at the end)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
peer=${EROFS_OCI_PEER_BIN:-$here/../shared/peer/bin}
deno=$here/tools/bin/deno
SOURCES=(usr/lib/python3.11 usr/share/perl usr/include)
EXCLUDES=(usr/include/node)
BUILD_TIME=1700000000
UUID=6265a0c8-0000-4000-8000-65726f667362

[ -x "$peer/mkfs.erofs" ] || { echo "bench-build: $peer/mkfs.erofs not found" >&2; exit 1; }
if [ -n "${1:-}" ]; then work=$1; mkdir -p "$work"; keep=1; else work=$(mktemp -d); keep=0; fi
cleanup() { [ "$keep" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT

stage=$work/tree
if [ ! -d "$stage" ]; then
  mkdir -p "$stage"
  tar -C / $(printf -- '--exclude=%s ' "${EXCLUDES[@]}") -cf - "${SOURCES[@]}" | tar -C "$stage" -xf -
fi
echo "tree: $(du -sm --apparent-size "$stage" | cut -f1) MB, $(find "$stage" | wc -l) entries"
[ -f "$work/tree.tar" ] || tar -C "$stage" -cf "$work/tree.tar" .

# Runs a command, prints "<label>: <seconds> s (CPU <user+sys> s), peak RSS <MB> MB" (RSS of
# the child tree's largest process, from getrusage(RUSAGE_CHILDREN)). CPU time is the steadier
# figure on a shared, loaded host, where wall time varies 2-3x between runs.
measure() {
  local label=$1
  shift
  python3 - "$label" "$@" <<'PY'
import resource, subprocess, sys, time
label, cmd = sys.argv[1], sys.argv[2:]
start = time.monotonic()
result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
elapsed = time.monotonic() - start
if result.returncode != 0:
    sys.stderr.write(result.stderr.decode())
    sys.exit(f"{label}: exit {result.returncode}")
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
rss_mb = usage.ru_maxrss / 1024
cpu = usage.ru_utime + usage.ru_stime
print(f"{label:<22} {elapsed:7.2f} s (CPU {cpu:5.2f} s)   peak RSS {rss_mb:6.1f} MB")
PY
}

sync
# Interleaved runs (BENCH_RUNS, default 3): on a shared host one run says little.
for _ in $(seq "${BENCH_RUNS:-3}"); do
  measure "mkfs.erofs 1.9.3" "$peer/mkfs.erofs" --quiet -T"$BUILD_TIME" -U"$UUID" "$work/peer.erofs" "$stage"
  measure "erofs-oci build" "$here/scripts/erofs-oci-dev" build "$stage" -o "$work/ours.erofs" \
    --timestamp "$BUILD_TIME" --uuid "$UUID"
  measure "mkfs.erofs --tar=f" "$peer/mkfs.erofs" --quiet --tar=f -T"$BUILD_TIME" -U"$UUID" \
    "$work/peer-tar.erofs" "$work/tree.tar"
  measure "erofs-oci build (tar)" "$here/scripts/erofs-oci-dev" build "$work/tree.tar" \
    -o "$work/ours-tar.erofs" --timestamp "$BUILD_TIME" --uuid "$UUID"
done
echo "sizes: mkfs.erofs $(stat -c %s "$work/peer.erofs") B, erofs-oci build $(stat -c %s "$work/ours.erofs") B"
"$peer/fsck.erofs" "$work/ours.erofs" >/dev/null && echo "fsck.erofs 1.9.3: ours OK"
echo "metadata a lazy mount must fetch (pages of 4 KiB; a 2 MiB chunk = one registry GET):"
"$deno" run -A "$here/scripts/bench_build_layout.ts" "$work/peer.erofs" "$work/ours.erofs"
if command -v docker-registry >/dev/null && [ -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then
  echo "lazy mount through a loopback docker-registry (FUSE backend), blob GETs and times:"
  "$deno" run -A "$here/scripts/bench_build_gets.ts" "mkfs.erofs=$work/peer.erofs" \
    "erofs-oci-build=$work/ours.erofs"
else
  echo "(registry GET counts skipped: needs root, /dev/fuse and docker-registry)"
fi
