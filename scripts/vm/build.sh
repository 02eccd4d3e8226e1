#!/usr/bin/env bash
# Builds the kernel-test VM into .cache/vm/: the newest Debian bookworm 6.1 kernel
# (vmlinuz) and an initramfs (busybox + the modules below + scripts/vm/init.sh as /init).
# Idempotent: a second run only checks the stamp. Safe to run concurrently (flock).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # depmod, modprobe
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VM_CACHE_DIR:-$repo/.cache/vm}
mkdir -p "$cache/dl"

log() { printf 'vm-build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Modules the guest needs, by name; modprobe resolves their dependencies and load order.
# virtio_pci + 9pnet_virtio + 9p: host root and result share; virtio_rng: entropy for TLS.
WANTED_MODULES=(virtio_pci virtio_rng 9pnet_virtio 9p overlay loop nbd erofs fuse crc32c_generic)
# Parameters given to insmod (name -> args). nbds_max=16 is the 6.1 default; stated so the
# device count does not change with a future kernel.
declare -A MODULE_ARGS=([nbd]="nbds_max=16")

for tool in apt-cache apt-get dpkg depmod modprobe cpio gzip; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh)"
done
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox missing (apt-get install busybox-static)"
"$busybox" --list | grep -x insmod >/dev/null || die "$busybox lacks insmod (need busybox-static)"

exec 9>"$cache/build.lock"
flock 9

pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' |
  sort -V | tail -1)
if [ -z "$pkg" ]; then
  # Offline or no apt lists: keep using what was built before.
  if [ -f "$cache/stamp" ] && [ -f "$cache/vmlinuz" ] && [ -f "$cache/initrd.gz" ]; then
    log "no linux-image-6.1.0-*-amd64 in apt lists; using cached $(head -1 "$cache/stamp")"
    exit 0
  fi
  die "no linux-image-6.1.0-*-amd64 in apt lists (run apt-get update)"
fi
kver=${pkg#linux-image-}
stamp="$pkg $(cat "$here/build.sh" "$here/init.sh" "$busybox" | sha256sum | cut -c1-16)"
if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$stamp" ] &&
  [ -f "$cache/vmlinuz" ] && [ -f "$cache/initrd.gz" ]; then
  exit 0
fi

start=$(date +%s.%N)
deb=$(ls "$cache/dl/${pkg}_"*.deb 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$deb" ]; then
  log "downloading $pkg"
  # apt-get download writes to the current directory; as root it warns that the download is
  # unsandboxed (the _apt user cannot write here): harmless.
  (cd "$cache/dl" && apt-get download -q "$pkg" 2>&1 | grep -v -i 'unsandboxed' >&2) || true
  deb=$(ls "$cache/dl/${pkg}_"*.deb 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$deb" ] || die "apt-get download $pkg failed"
fi

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "extracting $(basename "$deb")"
dpkg -x "$deb" "$work/kroot"
moddir=$work/kroot/lib/modules/$kver
[ -d "$moddir" ] || die "no modules for $kver in $deb"
depmod -b "$work/kroot" "$kver"

# Resolve load order: "insmod PATH [opts]" lines per module, deduplicated in first-seen order;
# "builtin NAME" lines need nothing. -C /dev/null ignores the host's modprobe.d options.
ird=$work/initramfs
mkdir -p "$ird"/{bin,lib/modules,proc,sys,dev,lower,rw,newroot}
declare -A seen=()
: >"$ird/modules.list"
for want in "${WANTED_MODULES[@]}"; do
  deps=$(modprobe -C /dev/null -d "$work/kroot" -S "$kver" --show-depends "$want") ||
    die "modprobe cannot resolve module $want in $kver"
  while IFS= read -r line; do
    # Matched up to the module suffix: the cache path may hold spaces (a checkout path).
    [[ $line =~ ^insmod\ (.*\.ko(\.xz|\.zst|\.gz)?)(\ |$) ]] || continue
    path=${BASH_REMATCH[1]}
    file=$(basename "$path")
    name=${file%%.ko*}
    [ -z "${seen[$name]:-}" ] || continue
    seen[$name]=1
    case "$file" in
    *.ko) cp "$path" "$ird/lib/modules/$name.ko" ;;
    *.ko.xz) xz -dc "$path" >"$ird/lib/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$path" >"$ird/lib/modules/$name.ko" ;;
    *.ko.gz) gzip -dc "$path" >"$ird/lib/modules/$name.ko" ;;
    *) die "unknown module format: $file" ;;
    esac
    # Module names use "_" in MODULE_ARGS even when the file uses "-".
    echo "$name.ko ${MODULE_ARGS[${name//-/_}]:-}" >>"$ird/modules.list"
  done <<<"$deps"
done

cp "$busybox" "$ird/bin/busybox"
cp "$here/init.sh" "$ird/init"
chmod 755 "$ird/init" "$ird/bin/busybox"
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"
cp "$work/kroot/boot/vmlinuz-$kver" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$cache/vmlinuz"
mv -f "$work/initrd.gz" "$cache/initrd.gz"
cp "$ird/modules.list" "$cache/modules.list"
echo "$stamp" >"$cache/stamp"
# Older kernel packages are no longer needed.
find "$cache/dl" -name 'linux-image-*.deb' ! -name "$(basename "$deb")" -delete
log "built $kver: $(wc -l <"$cache/modules.list") modules, initrd $(du -k "$cache/initrd.gz" | cut -f1) KiB in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}') s"
