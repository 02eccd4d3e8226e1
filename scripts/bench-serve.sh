#!/usr/bin/env bash
# Throughput of `erofs-oci serve` (user-space NBD + CachedSource) measured with nbdcopy, next to
# reading the same image directly and through nbdkit's file plugin (a C reference server).
# A figure, not a test. Usage: scripts/bench-serve.sh [SIZE_MIB=512] [CACHE=64M]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
size_mib=${1:-512}
cache=${2:-64M}
for tool in nbdcopy mkfs.erofs; do
  command -v "$tool" >/dev/null || { echo "bench-serve: needs $tool" >&2; exit 1; }
done

work=$(mktemp -d /tmp/erofs-oci-bench.XXXXXX)
serve_pid="" nbdkit_pid=""
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  [ -n "$nbdkit_pid" ] && kill "$nbdkit_pid" 2>/dev/null && wait "$nbdkit_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/tree"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/tree/random.bin"
mkfs.erofs --quiet "$work/image.erofs" "$work/tree" >/dev/null
rm -rf "$work/tree"
bytes=$(stat -c %s "$work/image.erofs")
cat "$work/image.erofs" >/dev/null # page cache warm for every contender

# seconds → MB/s of the image size
rate() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%8.0f MB/s  (%.2f s)", b / s / 1e6, s }'; }
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'; }

echo "image: $((bytes / 1024 / 1024)) MiB EROFS, cache $cache"
printf '%-40s %s\n' "direct read (cat, page cache)" "$(rate "$(timed cat "$work/image.erofs")")"

"$here/scripts/erofs-oci-dev" serve "$work/image.erofs" --listen "unix:$work/serve.sock" \
  --cache-size "$cache" >"$work/serve.uri" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do [ -s "$work/serve.uri" ] && break; sleep 0.1; done
uri=$(head -1 "$work/serve.uri")
nbdcopy "$uri" "$work/out.img"
cmp -s "$work/out.img" "$work/image.erofs" || { echo "bench-serve: copy differs!" >&2; exit 1; }
rm -f "$work/out.img"
for conns in 1 4; do
  t=$(timed nbdcopy --connections="$conns" "$uri" null:)
  printf '%-40s %s\n' "erofs-oci serve, ${conns} conn" "$(rate "$t")"
done
t=$(timed nbdcopy --connections=1 --request-size=131072 "$uri" null:)
printf '%-40s %s\n' "erofs-oci serve, 1 conn, 128 KiB requests" "$(rate "$t")"
kill "$serve_pid" && wait "$serve_pid" 2>/dev/null || true
serve_pid=""

if command -v nbdkit >/dev/null; then
  nbdkit -f -r -U "$work/nbdkit.sock" file "$work/image.erofs" &
  nbdkit_pid=$!
  for _ in $(seq 50); do [ -S "$work/nbdkit.sock" ] && break; sleep 0.1; done
  for conns in 1 4; do
    t=$(timed nbdcopy --connections="$conns" "nbd+unix:///?socket=$work/nbdkit.sock" null:)
    printf '%-40s %s\n' "nbdkit file plugin (C reference), ${conns} conn" "$(rate "$t")"
  done
fi
