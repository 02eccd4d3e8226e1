#!/usr/bin/env bash
# Usage: scripts/vm/run.sh GUEST_SCRIPT [TIMEOUT_S]
# Boots the kernel-test VM (QEMU TCG), runs GUEST_SCRIPT with bash inside it as root, prints
# the guest console and exits with the script's exit code. Exit 124 = timeout, 125 = the VM
# did not run the script to the end (boot failure, kernel panic, init failure).
# Env: VM_OUT_DIR  keep results here (the guest's /run/vm; writable); default: a temp dir
#                  that is removed afterwards.
#      VM_ENV      names of host variables to pass into the guest (space-separated);
#                  CI and TEST_FILTER are always passed when set.
#      VM_HOST_PATHS  more host directories the guest needs (one per line), e.g. DENO_DIR;
#                  the checkout always is. Those under /tmp or /run, which the guest covers
#                  with fresh tmpfs, are bound back at the same path.
#      VM_MEM_MB / VM_CPUS  guest size (default 3072 / 2).
#      VM_CPU_MODEL  qemu's -cpu (default: qemu64 with x86-64-v2's SSSE3, SSE4.1/4.2, POPCNT,
#                  CX16). Not `max`: its AVX/AVX2 (glibc's string functions take them) and PCID
#                  are emulated slowly; `deno eval 1` ran 10-25 % faster in the guest without
#                  them, in 6 of 6 interleaved pairs (docs/benchmarks.md, session 56).
#      VM_KERNEL_ARGS  more kernel command-line arguments (experiments).
#      VM_TB_SIZE_MB  TCG's translated-code buffer, MiB (default 256; empty: qemu's own, 1024).
#                  With 1024 a guest that runs a large JIT runtime (the Deno server) emulated
#                  2-3x slower after a while than with 256, while a loop device's find and tar
#                  ran alike (docs/benchmarks.md, session 41).
#      VM_QUEUE_DIR  a host directory shared writable with the guest as 9p tag "queue" (VMs
#                  running at once take test files from it: see run-tests.sh).
#      VM_QEMU_ARGS  more qemu arguments, split at spaces (experiments: e.g. a monitor socket
#                  `-monitor unix:PATH,server=on,wait=off` for `info jit`).
#      VM_NET=user  a virtio NIC on QEMU's user-mode network (the host's loopback is 10.0.2.2
#                  in the guest); default: no network but the guest's own loopback.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=kernel.sh
. "$here/kernel.sh"

log() { printf 'vm-run: %s\n' "$*" >&2; }

if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: $0 GUEST_SCRIPT [TIMEOUT_S]" >&2
  exit 2
fi
script=$1
timeout_s=${2:-300}
qemu=$(command -v qemu-system-x86_64) || { log "qemu-system-x86_64 not installed"; exit 125; }
"$here/build.sh" || { log "VM build failed"; exit 125; }

if [ -n "${VM_OUT_DIR:-}" ]; then
  out=$VM_OUT_DIR
  mkdir -p "$out"
  rm -f "$out/rc"
else
  mkdir -p "$cache/runs"
  out=$(mktemp -d "$cache/runs/run.XXXXXX")
  trap 'rm -rf "$out"' EXIT
fi

cp "$script" "$out/guest.sh"
# The guest's /tmp and /run are empty tmpfs (a clean runtime state for the code under test), so
# a checkout cloned under /tmp would vanish there; list such directories for init.sh to bind
# back. Symlinks are resolved (/var/run is /run).
: >"$out/host-paths"
while IFS= read -r path; do
  [ -n "$path" ] || continue
  real=$(realpath -e -- "$path" 2>/dev/null) || { log "VM_HOST_PATHS: $path does not exist"; exit 125; }
  [[ $real != *$'\n'* ]] || { log "a path with a newline cannot be shared with the VM: $real"; exit 125; }
  case $real in
  /tmp/* | /run/*) printf '%s\n' "$real" >>"$out/host-paths" ;;
  esac
done <<<"$repo
${VM_HOST_PATHS:-}"
{
  echo "# written by scripts/vm/run.sh"
  for name in CI TEST_FILTER ${VM_ENV:-}; do
    [ -n "${!name+x}" ] && printf 'export %s=%q\n' "$name" "${!name}"
  done
  echo 'exec bash /run/vm/guest.sh'
} >"$out/main.sh"

# Prints the serial console without terminal escapes and firmware banners, keeps a copy in
# console.log, and notes the host-side time when the guest script starts.
show_console() {
  local line esc=$'\e'
  while IFS= read -r line; do
    # CRLF line ends; a bare CR (progress rewrites, e.g. deno test's "name ... ok") means the
    # terminal would show only what follows it.
    line=${line%$'\r'}
    line=${line##*$'\r'}
    line=$(sed -E "s/${esc}(\[[0-9;?]*[A-Za-z]|c)//g" <<<"$line")
    case $line in
    "" | SeaBIOS* | "Booting from ROM"*) continue ;;
    "vm-init: guest ready"*) line+=" (host: $(elapsed) s after qemu start)" ;;
    esac
    printf '%s\n' "$line" | tee -a "$out/console.log"
  done
}
elapsed() { awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}'; }

shares=()
if [ -n "${VM_QUEUE_DIR:-}" ]; then
  shares+=(-virtfs "local,path=${VM_QUEUE_DIR//,/,,},mount_tag=queue,security_model=passthrough,multidevs=remap")
fi

tb_size_mb=${VM_TB_SIZE_MB-256}
tb_label=${tb_size_mb:+$tb_size_mb MiB}
start=$(date +%s.%N)
log "booting $(head -1 "$cache/stamp" | cut -d' ' -f1) (TCG, translation buffer ${tb_label:-as qemu sets it}, timeout ${timeout_s} s), out dir $out"
# no_timer_check: under TCG on a loaded host the boot-time IO-APIC timer check can miss its
# ticks and panic ("IO-APIC + timer doesn't work", seen with the 6.12 kernel).
# stdin from /dev/null: qemu must not put a terminal into raw mode. The serial console uses
# CRLF line ends; strip the CR.
timeout -k 5 "$timeout_s" "$qemu" -accel "tcg${tb_size_mb:+,tb-size=$tb_size_mb}" -cpu "${VM_CPU_MODEL:-qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16}" -m "${VM_MEM_MB:-3072}" -smp "${VM_CPUS:-2}" \
  -nographic -no-reboot -nic "${VM_NET:-none}${VM_NET:+,model=virtio-net-pci}" \
  -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 no_timer_check ${VM_KERNEL_ARGS:-}" \
  -device virtio-rng-pci \
  -virtfs local,path=/,mount_tag=host,security_model=passthrough,readonly=on,multidevs=remap \
  -virtfs "local,path=${out//,/,,},mount_tag=out,security_model=passthrough,multidevs=remap" \
  "${shares[@]}" \
  ${VM_QEMU_ARGS:-} </dev/null 2>&1 | show_console
qemu_rc=${PIPESTATUS[0]}
elapsed=$(elapsed)

if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
  log "TIMEOUT: the VM did not finish within ${timeout_s} s (hung guest script or kernel)"
  exit 124
fi
if [ ! -f "$out/rc" ]; then
  log "FAILED: the VM stopped after $elapsed s without an exit code (qemu rc $qemu_rc):" \
    "kernel panic, init failure or qemu error; see the console above"
  exit 125
fi
rc=$(cat "$out/rc")
log "guest script exited with $rc; VM wall time $elapsed s"
exit "$rc"
