#!/bin/sh
# erofs-oci @VERSION@: one self-contained file (scripts/build.sh, used when `deno compile` has no
# denort runtime). This shell header is followed by the bundled program (@BUNDLE_BYTES@ bytes)
# and the Deno runtime (@DENO_BYTES@ bytes). The first run unpacks both into a cache directory
# named by their content hash, checks their sha256 there and only then makes the directory
# visible (atomic rename); later runs start from it directly. The cache directory and its parent
# must belong to the caller and be writable by nobody else, else the launcher refuses to run:
# whoever can write there could swap the program that runs as root. Deno's own caches (V8's code
# cache of the bundle: its ~1 MB parse costs every start ~20 ms on a real CPU, ~0.5 s under QEMU
# TCG) live in deno-dir there, checked the same way: compiled code someone else can write would
# run as the caller. The caller's DENO_DIR is not used for the same reason (sudo may keep a
# user's HOME).
# Env: EROFS_OCI_RUNTIME_CACHE (default /var/cache/erofs-oci/runtime for root,
# ${XDG_CACHE_HOME:-$HOME/.cache}/erofs-oci/runtime otherwise).
payload_offset=@PAYLOAD_OFFSET@
bundle_bytes=@BUNDLE_BYTES@
bundle_sha256=@BUNDLE_SHA256@
deno_bytes=@DENO_BYTES@
deno_sha256=@DENO_SHA256@
runtime_id=@RUNTIME_ID@

fail() {
  printf 'erofs-oci: %s\n' "$*" >&2
  exit 1
}

# The effective uid, read with shell builtins: `$(id -u)` is a fork and an exec, which cost a
# start ~0.13 s in the QEMU TCG guest of the benchmark (0.3-0.5 s under load). `id` only
# where /proc is missing.
uid=
if [ -r /proc/self/status ]; then
  while read -r key _ euid _; do
    [ "$key" = Uid: ] && uid=$euid && break
  done </proc/self/status
fi
case $uid in '' | *[!0-9]*) uid=$(id -u) ;; esac
if [ -n "${EROFS_OCI_RUNTIME_CACHE:-}" ]; then
  base=$EROFS_OCI_RUNTIME_CACHE
elif [ "$uid" = 0 ]; then
  base=/var/cache/erofs-oci/runtime
else
  base=${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/erofs-oci/runtime
fi
dir=$base/$runtime_id

# Refuses to go on unless every PATH belongs to the caller and is writable by nobody else: the
# first COUNT must exist, the others are checked when they do (Deno's cache files, which come and
# go). One stat for all of them: this runs on every start, where each fork costs the command ~1-3
# ms. stat prints the paths it could read in the order given, so the first COUNT lines must be the
# first COUNT paths.
check_trusted() {
  required=$1
  shift
  listing=$(stat -L -c '%u %a %n' -- "$@" 2>/dev/null)
  while read -r owner mode path; do
    [ -n "$owner" ] || continue
    if [ "$required" -gt 0 ]; then
      [ "$path" = "$1" ] ||
        fail "refusing to run the unpacked runtime: $1 cannot be read (remove it, or set EROFS_OCI_RUNTIME_CACHE)"
      shift
      required=$((required - 1))
    fi
    why=
    if [ "$owner" != "$uid" ]; then
      why="$path belongs to uid $owner, not $uid"
    elif [ $((0$mode & 022)) -ne 0 ]; then
      why="$path is writable by others (mode $mode)"
    fi
    [ -z "$why" ] || fail "refusing to run the unpacked runtime: $why (remove it, or set EROFS_OCI_RUNTIME_CACHE)"
  done <<EOF
$listing
EOF
  [ "$required" -eq 0 ] ||
    fail "refusing to run the unpacked runtime: $1 cannot be read (remove it, or set EROFS_OCI_RUNTIME_CACHE)"
}

# Removes runtimes of other versions that no process runs (each is about 92 MB). A running mount
# server or CLI of an older version keeps its runtime.
prune_other_versions() {
  for old in "$base"/*; do
    name=${old##*/}
    [ "$name" != "$runtime_id" ] && [ ${#name} -eq 32 ] && [ -d "$old" ] || continue
    case $name in *[!0-9a-f]*) continue ;; esac
    # shellcheck disable=SC2012 # the link targets are what is wanted here
    if ! ls -l /proc/[0-9]*/exe 2>/dev/null | grep -qF -- "-> $old/deno"; then
      { chmod -R u+w -- "$old" && rm -rf -- "$old"; } 2>/dev/null
    fi
  done
}

unpack() {
  self=$(readlink -f -- "$0") || fail "cannot find this program's own file ($0)"
  [ -r "$self" ] || fail "cannot read this program's own file $self"
  command -v sha256sum >/dev/null || fail "sha256sum not found (coreutils) to check the unpacked runtime"
  old_umask=$(umask)
  umask 077
  mkdir -p -- "$base" || fail "cannot create $base"
  check_trusted 2 "$base/.." "$base"
  tmp=$(mktemp -d -- "$base/.unpack.XXXXXX") || fail "cannot create a directory in $base"
  if ! { tail -c +$((payload_offset + 1)) -- "$self" | head -c "$bundle_bytes" >"$tmp/erofs-oci.js" &&
    tail -c +$((payload_offset + bundle_bytes + 1)) -- "$self" >"$tmp/deno"; } 2>/dev/null; then
    rm -rf -- "$tmp"
    fail "cannot write the runtime into $base (disk full?)"
  fi
  got_bundle=$(sha256sum <"$tmp/erofs-oci.js")
  got_deno=$(sha256sum <"$tmp/deno")
  if [ "${got_bundle%% *}" != "$bundle_sha256" ] || [ "${got_deno%% *}" != "$deno_sha256" ] ||
    [ "$(stat -c %s -- "$tmp/deno")" != "$deno_bytes" ]; then
    rm -rf -- "$tmp"
    fail "$self is damaged (sha256 of its payload does not match); copy it again"
  fi
  # Deno's cache directory, private like the rest (umask 077); the first run fills it.
  mkdir -m 0700 -- "$tmp/deno-dir" && chmod 0500 "$tmp/deno" && chmod 0400 "$tmp/erofs-oci.js" &&
    ln -- "$tmp/erofs-oci.js" "$tmp/erofs-oci-jit.js" &&
    chmod 0500 "$tmp" ||
    fail "chmod in $tmp failed"
  # Another process may have unpacked the same runtime meanwhile: keep the first one.
  mv -T -- "$tmp" "$dir" 2>/dev/null || { chmod 0700 "$tmp" && rm -rf -- "$tmp"; }
  [ -d "$dir" ] || fail "cannot unpack the runtime into $dir"
  prune_other_versions
  umask "$old_umask"
}

# V8 reserves (not uses) tens of GiB of address space at start and aborts with a C stack trace
# when it cannot: below ~64 GiB of `ulimit -v` the runtime died at random (--version below ~40
# GiB, a mount server at 48). Read with builtins: no fork on every start.
if [ -r /proc/self/limits ]; then
  while read -r max address space soft _; do
    [ "$max $address $space" = "Max address space" ] || continue
    case $soft in
    unlimited | *[!0-9]*) ;;
    *)
      [ "$soft" -ge 68719476736 ] ||
        fail "the address-space limit (ulimit -v) is $((soft / 1048576)) MiB, below the 64 GiB the Deno runtime reserves (not uses): lift it (ulimit -v unlimited) and bound memory with a cgroup instead (systemd MemoryMax=)"
      ;;
    esac
    break
  done </proc/self/limits
fi

[ -x "$dir/deno" ] && [ -f "$dir/erofs-oci.js" ] && [ -f "$dir/erofs-oci-jit.js" ] || unpack
# Deno's cache files are SQLite databases (*_v2, with -wal and -shm beside them); a pattern that
# matches none stays as it is and is skipped as missing.
check_trusted 7 "$base/.." "$base" "$dir" "$dir/deno" "$dir/erofs-oci.js" "$dir/erofs-oci-jit.js" \
  "$dir/deno-dir" "$dir/deno-dir"/*_v2*
export DENO_NO_UPDATE_CHECK=1
# V8's code cache of the bundle is written after the first event-loop turn of a run (main.ts
# makes sure there is one), then every start reads it instead of compiling. The mount server
# inherits it.
export DENO_DIR="$dir/deno-dir"
# glibc raises its mmap threshold each time a large block is freed, and from then on keeps freed
# buffers in its heap instead of giving them back: a 1,000,000-member tar build peaked at 197-232
# MB so, 184-194 MB with the threshold fixed at 128 KiB (docs/build.md). Unless the caller set it.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_-131072}"
JIT_COMMANDS="@JIT_COMMANDS@"
@JIT_FOR_COMMAND@
exec "$dir/deno" run -q --no-config --no-lock --no-prompt @PERMISSIONS@ @V8_FLAGS@ $jit \
  "$dir/erofs-oci$jit_suffix.js" "$@"
