#!/usr/bin/env bash
# Builds dist/erofs-oci. With a denort runtime (DENORT_BIN, or downloadable) that is one
# self-contained executable from `deno compile`; otherwise a single bundled JS file
# (dist/erofs-oci.js) plus a launcher script that runs it with the project's Deno.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
deno=tools/bin/deno
perms=$(grep -v '^#' scripts/permissions)
mkdir -p dist
rm -f dist/erofs-oci dist/erofs-oci.js

# shellcheck disable=SC2086
if NO_COLOR=1 $deno compile -q $perms --no-check --output dist/erofs-oci main.ts 2>dist/compile.log; then
  rm -f dist/compile.log
  echo "built dist/erofs-oci: single executable (deno compile)"
  dist/erofs-oci --version
  exit 0
fi
# The first "Caused by" line says why (typically: the denort runtime cannot be downloaded).
reason=$(grep -m1 -E '^ +1: ' dist/compile.log | sed 's/^ *1: //' | cut -c1-200 || true)
echo "deno compile unavailable: ${reason:-$(head -1 dist/compile.log)}" >&2
echo "falling back to a bundled single file (set DENORT_BIN to a denort binary to compile)" >&2
$deno bundle -q --output dist/erofs-oci.js main.ts
cp "$(readlink -f $deno)" dist/deno
cat > dist/erofs-oci <<LAUNCHER
#!/bin/sh
# Launcher for the bundled erofs-oci (no denort runtime was available at build time).
here=\$(dirname "\$(readlink -f "\$0")")
exec "\$here/deno" run -q --no-config --no-lock $perms "\$here/erofs-oci.js" "\$@"
LAUNCHER
chmod +x dist/erofs-oci
rm -f dist/compile.log
echo "built dist/erofs-oci: bundled single file dist/erofs-oci.js + launcher (copy dist/ as a whole)"
dist/erofs-oci --version
