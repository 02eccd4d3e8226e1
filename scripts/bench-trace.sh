#!/usr/bin/env bash
# Recorded-prefetch benchmark (host, FUSE backend): cold python start right after a cold mount,
# without and with a trace (`erofs-oci trace --push`), against a local file-backed mount of the
# same image (scripts/bench/build-image.sh, ~136 MB). Prints a Markdown table; JSON of the run
# in .cache/bench/trace-latest.json. Root (mounts, drop_caches). BENCH_RUNS=N (default 3),
# BENCH_DELAY_MS=N (each registry request delayed N ms in a proxy: an added round trip).
# Usage: scripts/bench-trace.sh [CACHE_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${1:-$here/.cache/bench}
[ "$(id -u)" = 0 ] || { echo "bench-trace: needs root" >&2; exit 1; }
command -v docker-registry >/dev/null || { echo "bench-trace: docker-registry missing" >&2; exit 1; }
command -v python3.11 >/dev/null || { echo "bench-trace: python3.11 missing" >&2; exit 1; }
image=$("$here/scripts/bench/build-image.sh" "$cache")
exec "$here/tools/bin/deno" run -A "$here/scripts/bench_trace.ts" "$image" "$cache/trace-latest.json"
