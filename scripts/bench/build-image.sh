#!/usr/bin/env bash
# Builds (or reuses) the benchmark EROFS image from host directories and prints its path.
# Usage: scripts/bench/build-image.sh [CACHE_DIR]   (default: .cache/bench)
# Uncompressed (the VM's 6.1 erofs is LZ4-only and uncompressed is the reference setting),
# deterministic: fixed timestamp, root ownership, fixed UUID. The image is rebuilt only when
# the source listing (paths, sizes, mtimes), this script or mkfs.erofs change.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cache=${1:-$here/.cache/bench}
# erofs-utils 1.9.3 sits next to the checkout (../shared/peer/bin) unless EROFS_OCI_PEER_BIN says.
mkfs=${EROFS_OCI_PEER_BIN:-$here/../shared/peer/bin}/mkfs.erofs
# Trees copied into the image under their own paths. /usr/include/node is left out: it is
# 54 MB of one project's vendored headers and would push the image (and the VM run) past the
# ~130 MB the VM baseline in docs/benchmarks.md was measured on.
SOURCES=(usr/lib/python3.11 usr/share/perl usr/include)
EXCLUDES=(usr/include/node)
BUILD_TIME=1700000000
UUID=6265a0c8-0000-4000-8000-65726f667362

[ -x "$mkfs" ] || { echo "build-image: $mkfs not found" >&2; exit 1; }
mkdir -p "$cache"
image=$cache/bench.erofs
key=$(
  {
    cat "$0"
    "$mkfs" -V 2>&1 | head -1
    cd / && find "${SOURCES[@]}" $(printf -- '-path %s -prune -o ' "${EXCLUDES[@]}") \
      -printf '%p %s %T@ %y %l\n' | LC_ALL=C sort
  } | sha256sum | cut -c1-32
)
if [ -f "$image" ] && [ "$(cat "$cache/bench.key" 2>/dev/null)" = "$key" ]; then
  echo "$image"
  exit 0
fi

stage=$(mktemp -d "$cache/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
tar -C / $(printf -- '--exclude=%s ' "${EXCLUDES[@]}") -cf - "${SOURCES[@]}" | tar -C "$stage" -xf -
"$mkfs" --quiet -T"$BUILD_TIME" --all-root -U"$UUID" "$image.tmp" "$stage" >&2
mv -f "$image.tmp" "$image"
echo "$key" >"$cache/bench.key"
echo "build-image: $(du -m --apparent-size "$image" | cut -f1) MB, $(find "$stage" | wc -l) entries" >&2
echo "$image"
