#!/bin/sh
# Benchmark of gzip random access (zinfo build, sequential and random reads through
# checkpoints) on one tar.gz layer. Usage: scripts/bench-gzip.sh [LAYER.tar.gz]
# Without an argument it packs /usr/lib/python3.11 (+ /usr/share/perl) as one gzip -6 layer,
# close to the issue-11 benchmark tree. The erofs-utils 1.9.3 peer is timed when present.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
deno="$here/tools/bin/deno"
peer="${EROFS_OCI_PEER_BIN:-$here/../shared/peer/bin}"
layer="${1:-}"
tmp=""
cleanup() { [ -z "$tmp" ] || rm -rf "$tmp"; }
trap cleanup EXIT INT TERM
if [ -z "$layer" ]; then
  tmp=$(mktemp -d /tmp/bench-gzip.XXXXXX)
  layer="$tmp/layer.tar.gz"
  dirs=""
  for d in /usr/lib/python3.11 /usr/share/perl; do [ -d "$d" ] && dirs="$dirs ${d#/}"; done
  # shellcheck disable=SC2086 # word splitting of the directory list is intended
  tar -C / --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner -cf - $dirs \
    | gzip -n -6 >"$layer"
fi
[ -x "$peer/mkfs.erofs" ] || peer=""
"$deno" run -A "$here/scripts/bench_gzip.ts" "$layer" ${peer:+"$peer"}
