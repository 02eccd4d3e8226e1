#!/usr/bin/env bash
# Host benchmark (real CPU, FUSE backend): the speed benchmark's image (scripts/bench/
# build-image.sh, ~136 MB) from a loopback docker-registry against a local file-backed mount of
# the same file — mount, cold find, cold python start, cold full read, GETs per step, bytes
# fetched / image, server peak RSS; runs with an empty disk cache, a remount on it, and
# --no-disk-cache. Prints a Markdown table; JSON of the run in .cache/bench/host-latest.json.
# BENCH_CLI=dist: builds dist/erofs-oci (scripts/build.sh) and times it instead of the source.
# Root (mounts, drop_caches). Usage: [BENCH_CLI=dist] scripts/bench-host.sh [CACHE_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${1:-$here/.cache/bench}
[ "$(id -u)" = 0 ] || { echo "bench-host: needs root" >&2; exit 1; }
command -v docker-registry >/dev/null || { echo "bench-host: docker-registry missing" >&2; exit 1; }
image=$("$here/scripts/bench/build-image.sh" "$cache")
if [ "${BENCH_CLI:-}" = dist ]; then "$here/scripts/build.sh" >&2; fi
exec "$here/tools/bin/deno" run -A "$here/scripts/bench_host.ts" "$image" "$cache/host-latest.json"
