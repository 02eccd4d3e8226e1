#!/usr/bin/env bash
# Builds dist/erofs-oci, one self-contained executable file to copy to a host:
# - with a denort runtime (DENORT_BIN, or downloadable by deno) from `deno compile`;
# - otherwise the bundled program and the pinned Deno runtime appended to a shell launcher
#   (scripts/launcher.sh), unpacked on first run into a cache directory named by content hash
#   and checked by sha256 there.
# Prints which one it made, its size and its start-up time (first run, then a warm one).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
deno=tools/bin/deno
perms=$(grep -v '^#' scripts/permissions | tr '\n' ' ' | sed 's/ *$//')
jit_commands=$(grep -v '^#' scripts/jit-commands | tr '\n' ' ' | sed 's/ *$//')
# The program's V8 flags, kept with the server's re-exec that passes them too (self_exec.ts).
v8_flags=--v8-flags=$($deno eval -q 'import { V8_FLAGS } from "./lib/daemon/self_exec.ts"; console.log(V8_FLAGS.join(","))')
work=.cache/build
mkdir -p dist "$work"
# One build at a time (tests/build_test.ts and a developer may run it together).
exec 9>.cache/build.lock
flock 9
rm -rf dist/erofs-oci dist/erofs-oci.js dist/deno "$work"/*

elapsed_s() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN{printf "%.2f", e-s}'; }

# Start-up cost as a user meets it: --version from an empty runtime cache, then again.
report() {
  local kind=$1 cache start first warm
  cache=$(mktemp -d)
  start=$(date +%s.%N)
  EROFS_OCI_RUNTIME_CACHE=$cache/runtime dist/erofs-oci --version >/dev/null
  first=$(elapsed_s "$start")
  start=$(date +%s.%N)
  EROFS_OCI_RUNTIME_CACHE=$cache/runtime dist/erofs-oci --version
  warm=$(elapsed_s "$start")
  chmod -R u+w "$cache" && rm -rf "$cache"
  echo "built dist/erofs-oci: $kind, $(du -m dist/erofs-oci | cut -f1) MB;" \
    "start-up (--version): first run ${first} s, warm ${warm} s"
}

# shellcheck disable=SC2086
if NO_COLOR=1 $deno compile -q $perms "$v8_flags" --no-check --output dist/erofs-oci main.ts 2>"$work/compile.log"; then
  report "single executable (deno compile)"
  exit 0
fi
# The first "Caused by" line says why (typically: the denort runtime cannot be downloaded).
reason=$(grep -m1 -E '^ +1: ' "$work/compile.log" | sed 's/^ *1: //' | cut -c1-200 || true)
echo "deno compile unavailable: ${reason:-$(head -1 "$work/compile.log")}" >&2
echo "falling back to launcher + Deno runtime + bundle in one file (set DENORT_BIN to compile)" >&2
rm -f dist/erofs-oci
# Minified: every start reads, scans and compiles what it loads of the bundle, at a cost that grows
# with its size (host: a 1 MB never-called function costs a start +60 ms of CPU, a 1 MB comment
# +28 ms). 1.06 MB -> 0.49 MB: --version 121 -> 100 ms of CPU, `inspect` 130 -> 113 ms, for each of
# a mount's two processes (and ~10x that under QEMU TCG). Messages are unchanged; a --debug stack
# trace names minified functions.
$deno bundle -q --minify --output "$work/erofs-oci.js" main.ts
deno_real=$(readlink -f $deno)

sha() { sha256sum <"$1" | cut -d' ' -f1; }
bundle_sha256=$(sha "$work/erofs-oci.js")
deno_sha256=$(sha "$deno_real")
version=$($deno eval -q 'import { VERSION } from "./lib/version.ts"; console.log(VERSION)')
# What the launcher expects in an unpacked runtime, part of its id: a directory unpacked by a
# launcher that made a different layout (here: before deno-dir) is never taken for this one. The
# V8 flags too: a code cache V8 compiled under other flags is refused at every start.
runtime_layout="deno-dir erofs-oci-jit.js $v8_flags jit:$jit_commands"
# The launcher's header holds its own length; a fixed-width number keeps that length constant.
fill() {
  sed -e "s|@VERSION@|$version|" \
    -e "s|@PAYLOAD_OFFSET@|$(printf '%-10s' "$1")|" \
    -e "s|@BUNDLE_BYTES@|$(stat -c %s "$work/erofs-oci.js")|g" \
    -e "s|@BUNDLE_SHA256@|$bundle_sha256|" \
    -e "s|@DENO_BYTES@|$(stat -c %s "$deno_real")|g" \
    -e "s|@DENO_SHA256@|$deno_sha256|" \
    -e "s|@RUNTIME_ID@|$(printf '%s %s %s' "$bundle_sha256" "$deno_sha256" "$runtime_layout" | sha256sum | cut -c1-32)|" \
    -e "s|@PERMISSIONS@|$perms|" \
    -e "s|@JIT_COMMANDS@|$jit_commands|" \
    -e "/^@JIT_FOR_COMMAND@\$/{r scripts/jit_for_command.sh" -e "d}" \
    -e "/^@ADDRESS_SPACE_CHECK@\$/{r scripts/address_space_check.sh" -e "d}" \
    -e "s|@V8_FLAGS@|$v8_flags|" \
    scripts/launcher.sh
}
header_bytes=$(fill 0 | wc -c)
fill "$header_bytes" >"$work/launcher.sh"
[ "$(wc -c <"$work/launcher.sh")" = "$header_bytes" ] || { echo "launcher length changed" >&2; exit 1; }
cat "$work/launcher.sh" "$work/erofs-oci.js" "$deno_real" >dist/erofs-oci.tmp
chmod 0755 dist/erofs-oci.tmp
mv -f dist/erofs-oci.tmp dist/erofs-oci
rm -f "$work/compile.log"
report "one file: launcher + Deno $($deno --version | head -1 | cut -d' ' -f2) + bundled program"
