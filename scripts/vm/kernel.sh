# Sourced by the scripts/vm/ scripts (after `repo` is set): the VM kernel chosen by VM_KERNEL
# and its cache directory. 6.1 (default): Debian bookworm's kernel, through the system's apt
# lists, in .cache/vm/. backports: the newest linux-image-6.*-amd64 of bookworm-backports
# (6.12 and later: 512-byte EROFS blocks, Linux >= 6.4), fetched and verified by build.sh
# without touching the apt sources, in .cache/vm-bpo/. VM_CACHE_DIR overrides the directory.
# shellcheck shell=bash
vm_kernel=${VM_KERNEL:-6.1}
case $vm_kernel in
6.1) cache=${VM_CACHE_DIR:-$repo/.cache/vm} ;;
backports) cache=${VM_CACHE_DIR:-$repo/.cache/vm-bpo} ;;
*)
  printf 'VM_KERNEL=%s: use 6.1 (default) or backports\n' "$vm_kernel" >&2
  exit 2
  ;;
esac
