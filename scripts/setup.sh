#!/usr/bin/env bash
# Installs everything erofs-oci needs for development and tests on a fresh Debian 12 machine:
# the pinned Deno (npm package, into tools/deno, never globally) and the Debian packages the
# tests use (registry, VM, erofs-utils, libnbd clients). Idempotent: a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

DENO_VERSION=2.9.6
APT_PACKAGES=(docker-registry qemu-system-x86 qemu-utils busybox-static cpio kmod erofs-utils
  libnbd-bin nbdkit fuse3 attr curl apache2-utils openssl xz-utils zstd python3 gpgv debian-archive-keyring
  liblz4-1 liblzma5 zlib1g libzstd1 libxxhash0 libssl3 libcurl4 libjson-c5 libuuid1
  libnl-3-200 libnl-genl-3-200 libfuse3-3 umoci skopeo time python3-prometheus-client)

log() { printf 'setup: %s\n' "$*" >&2; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    log "need root to install: ${missing[*]} (run: sudo $0)"
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

deno_bin=tools/deno/node_modules/deno/bin/deno
# The npm package ships the binary for this platform under an optional dependency.
if ! { [ -x tools/bin/deno ] && tools/bin/deno --version 2>/dev/null | grep -q "deno $DENO_VERSION"; }; then
  log "installing deno $DENO_VERSION into tools/deno"
  mkdir -p tools/deno tools/bin
  [ -f tools/deno/package.json ] || echo '{"private":true}' > tools/deno/package.json
  npm install --prefix tools/deno --no-audit --no-fund --silent "deno@$DENO_VERSION" >/dev/null
  real=$(find tools/deno/node_modules -path '*/@deno/*' -name deno -type f -perm -u+x | head -1)
  [ -n "$real" ] || real=$deno_bin
  ln -sf "../../$real" tools/bin/deno
fi
tools/bin/deno --version | head -1 >&2
