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
# first COUNT paths. Returns 1 with `missing` set when one of those is missing (a prune may have
# just removed the runtime: the caller looks again).
check_trusted() {
  required=$1
  shift
  listing=$(stat -L -c '%u %a %n' -- "$@" 2>/dev/null)
  while read -r owner mode path; do
    [ -n "$owner" ] || continue
    if [ "$required" -gt 0 ]; then
      [ "$path" = "$1" ] || { missing=$1 && return 1; }
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
  [ "$required" -eq 0 ] || { missing=$1 && return 1; }
}
cannot_read() {
  fail "refusing to run the unpacked runtime: $missing cannot be read (remove it, or set EROFS_OCI_RUNTIME_CACHE)"
}

# Pruning is safe against a launcher of the other version that is starting: its exe is still the
# shell, so /proc/*/exe alone cannot tell. A launcher marks its runtime as started (the mtime of
# $base/.started-ID, written by a redirection of `true`: no fork on every start; a failed one of
# the special builtin `:` would end the shell) and only then looks whether
# a prune holds .pruning-ID and whether the runtime is still whole; a prune takes .pruning-ID
# first and only then reads the mark. Either the prune sees the mark, or the launcher sees the
# prune (and waits for it, then unpacks again if the runtime is gone). A mark protects for a
# minute: a launcher runs a few builtins from its mark to its exec (then /proc/PID/exe covers
# it), so a minute is a wide margin even on a loaded TCG guest; a longer one keeps an old runtime
# used just before an upgrade's first run for longer (.prune-pending-ID: later starts try again).
# Launchers older than the mark leave none: the mtime of their deno-dir's SQLite -shm files
# (each start of Deno writes them) stands for it, which covers a version used in a loop.
recently_started() {
  for t in $(stat -c %Y -- "$base/.started-$1" "$base/$1"/deno-dir/*-shm 2>/dev/null); do
    [ "$t" -lt "$2" ] || return 0
  done
  return 1
}

# Removes runtimes of other versions that no process runs or started in the last minute (each is
# about 92 MB). A running mount server or CLI of an older version keeps its runtime.
prune_other_versions() {
  pending=
  since=$(($(date +%s) - 60))
  for old in "$base"/*; do
    name=${old##*/}
    [ "$name" != "$runtime_id" ] && [ ${#name} -eq 32 ] && [ -d "$old" ] || continue
    case $name in *[!0-9a-f]*) continue ;; esac
    pruning=$base/.pruning-$name
    # A prune that died left its claim: its pid is gone.
    holder=
    [ -e "$pruning" ] && { read -r holder <"$pruning"; } 2>/dev/null
    [ -n "$holder" ] && [ ! -d "/proc/$holder" ] && rm -f -- "$pruning"
    (set -C && echo $$ >"$pruning") 2>/dev/null || continue
    trash=$base/.pruned-$name.$$
    if recently_started "$name" "$since"; then
      pending=1
    # shellcheck disable=SC2012 # the link targets are what is wanted here
    elif ! ls -l /proc/[0-9]*/exe 2>/dev/null | grep -qF -- "-> $old/deno"; then
      # Out of sight at once (launchers unpack it again); removed once the claim is let go.
      mv -T -- "$old" "$trash" 2>/dev/null && rm -f -- "$base/.started-$name" "$base/.prune-pending-$name"
    fi
    rm -f -- "$pruning"
    [ ! -d "$trash" ] || { chmod -R u+w -- "$trash" && rm -rf -- "$trash"; } 2>/dev/null
  done
  # What versions before the mark and dead prunes left: marks of runtimes that are gone, trash.
  for left in "$base"/.started-* "$base"/.prune-pending-* "$base"/.pruned-*; do
    case $left in
    */.pruned-*) [ ! -d "$left" ] || { chmod -R u+w -- "$left" && rm -rf -- "$left"; } 2>/dev/null ;;
    *) [ ! -e "$left" ] || [ -d "$base/${left##*-}" ] || rm -f -- "$left" ;;
    esac
  done
  if [ -n "$pending" ]; then
    { true >"$base/.prune-pending-$runtime_id"; } 2>/dev/null
  else
    rm -f -- "$base/.prune-pending-$runtime_id"
  fi
}

# Whether a prune holds this runtime: .pruning-ID names its pid for a few file operations. A
# claim whose pid is gone is dead (the prune died before deleting) and the next prune clears it.
pruning() {
  [ -e "$base/.pruning-$runtime_id" ] || return 1
  holder=
  { read -r holder <"$base/.pruning-$runtime_id"; } 2>/dev/null
  [ -z "$holder" ] || [ -d "/proc/$holder" ]
}
wait_for_prune() {
  waited=0
  while pruning; do
    [ "$waited" -lt 600 ] ||
      fail "a prune (pid $holder) holds $base/.pruning-$runtime_id for over a minute: remove it if that process is not erofs-oci"
    sleep 0.1
    waited=$((waited + 1))
  done
}

unpack() {
  self=$(readlink -f -- "$0") || fail "cannot find this program's own file ($0)"
  [ -r "$self" ] || fail "cannot read this program's own file $self"
  command -v sha256sum >/dev/null || fail "sha256sum not found (coreutils) to check the unpacked runtime"
  old_umask=$(umask)
  umask 077
  mkdir -p -- "$base" || fail "cannot create $base"
  check_trusted 2 "$base/.." "$base" || cannot_read
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

@ADDRESS_SPACE_CHECK@

whole() { [ -x "$dir/deno" ] && [ -f "$dir/erofs-oci.js" ] && [ -f "$dir/erofs-oci-jit.js" ]; }
# The mark is written once the cache is known to be the caller's alone (a symlink planted there
# would have it truncate any file); the note above recently_started says why in this order.
attempt=0
while :; do
  whole || unpack
  # Deno's cache files are SQLite databases (*_v2, with -wal and -shm beside them); a pattern
  # that matches none stays as it is and is skipped as missing.
  if check_trusted 7 "$base/.." "$base" "$dir" "$dir/deno" "$dir/erofs-oci.js" \
    "$dir/erofs-oci-jit.js" "$dir/deno-dir" "$dir/deno-dir"/*_v2*; then
    { true >"$base/.started-$runtime_id"; } 2>/dev/null
    whole && ! pruning && break
    missing=$dir/deno
  fi
  attempt=$((attempt + 1))
  [ "$attempt" -lt 3 ] || cannot_read
  wait_for_prune
done
[ ! -e "$base/.prune-pending-$runtime_id" ] || prune_other_versions
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
