#!/bin/sh
# A tar.gz layer mounted lazily from a loopback registry through its pushed index (FUSE):
# time and fetched share for the first file, 10 % of the files, a cold full read, against
# `curl | gunzip | tar x`. Usage: scripts/bench-gzip-mount.sh [LAYER.tar.gz] [bench options]
# (options of scripts/bench_gzip_mount.ts: --span BYTES --runs N --delay-ms MS). Without a
# layer it packs /usr/lib/python3.11 as one gzip -6 layer, as in lib/gzip/README.md. Root only.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=""
cleanup() { [ -z "$tmp" ] || rm -rf "$tmp"; }
trap cleanup EXIT INT TERM
layer="${1:-}"
[ $# -gt 0 ] && shift
if [ -z "$layer" ] || [ "${layer#--}" != "$layer" ]; then
  [ -n "$layer" ] && set -- "$layer" "$@"
  tmp=$(mktemp -d /tmp/bench-gzip-mount.XXXXXX)
  layer="$tmp/layer.tar.gz"
  tar -C / --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner \
    -cf - usr/lib/python3.11 | gzip -n -6 >"$layer"
fi
"$here/tools/bin/deno" run -A "$here/scripts/bench_gzip_mount.ts" "$layer" "$@"
