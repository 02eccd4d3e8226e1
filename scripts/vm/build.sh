#!/usr/bin/env bash
# Builds the kernel-test VM: a kernel (vmlinuz) and an initramfs (busybox + the modules below +
# scripts/vm/init.sh as /init). VM_KERNEL (scripts/vm/kernel.sh) picks the kernel:
#   6.1 (default)  the newest Debian bookworm linux-image-6.1.0-N-amd64 (system apt lists),
#                  into .cache/vm/;
#   backports      the newest bookworm-backports linux-image-6.*-amd64 (6.12...), into
#                  .cache/vm-bpo/. The system's apt sources are not touched: InRelease is
#                  fetched and checked with gpgv against the Debian archive keyring, Packages.xz
#                  against its SHA256 there, the .deb against its SHA256 in Packages.
# Idempotent: a second run only checks the stamp. Safe to run concurrently (flock).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # depmod, modprobe
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=kernel.sh
. "$here/kernel.sh"
mkdir -p "$cache/dl"

log() { printf 'vm-build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Modules the guest needs, by name; modprobe resolves their dependencies and load order.
# virtio_pci + 9pnet_virtio + 9p: host root and result share; virtio_rng: entropy for TLS.
WANTED_MODULES=(virtio_pci virtio_rng virtio_net 9pnet_virtio 9p overlay loop nbd erofs fuse crc32c_generic)
# Parameters given to insmod (name -> args). nbds_max=16 is the 6.1 default; stated so the
# device count does not change with a future kernel.
declare -A MODULE_ARGS=([nbd]="nbds_max=16")

for tool in apt-cache apt-get dpkg depmod modprobe cpio gzip xz; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh)"
done
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox missing (apt-get install busybox-static)"
"$busybox" --list | grep -x insmod >/dev/null || die "$busybox lacks insmod (need busybox-static)"

exec 9>"$cache/build.lock"
flock 9

# Offline or no package lists: keep using what was built before.
use_cached_build() {
  if [ -f "$cache/stamp" ] && [ -f "$cache/vmlinuz" ] && [ -f "$cache/initrd.gz" ]; then
    log "$1; using cached $(head -1 "$cache/stamp" | cut -d' ' -f1)"
    exit 0
  fi
  die "$1"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# bookworm-backports, verified by hand (the system's apt sources stay as they are).
BPO_MIRROR=${VM_BPO_MIRROR:-http://deb.debian.org/debian}
BPO_SUITE=bookworm-backports
BPO_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Signed images only (the -unsigned, -cloud and -rt flavours are other packages).
BPO_PACKAGE_RE='^linux-image-6\.[0-9]+\.[0-9]+\+deb12(\.[0-9]+)?-amd64$'

# Sets pkg, pkg_version, deb_path, deb_sha256 and deb_bytes from the verified index. Returns 1
# when the mirror is unreachable; a bad signature or checksum is fatal.
resolve_backports() {
  local dl=$cache/dl release packages_sha packages_bytes best="" best_version=""
  local name version filename sha size
  for tool in curl gpgv; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh)"
  done
  [ -f "$BPO_KEYRING" ] || die "$BPO_KEYRING missing (apt-get install debian-archive-keyring)"
  curl -fsS --retry 2 --max-time 60 -o "$dl/InRelease.new" \
    "$BPO_MIRROR/dists/$BPO_SUITE/InRelease" 2>"$dl/curl.log" || {
    log "cannot fetch $BPO_MIRROR/dists/$BPO_SUITE/InRelease: $(tail -1 "$dl/curl.log")"
    return 1
  }
  # Only what gpgv writes out (the signed text) is used, never the file around the signature.
  gpgv --keyring "$BPO_KEYRING" --output "$dl/Release.new" "$dl/InRelease.new" 2>"$dl/gpgv.log" ||
    die "$BPO_SUITE InRelease: bad signature: $(cat "$dl/gpgv.log")"
  release=$dl/Release.new
  local valid_until
  valid_until=$(sed -n 's/^Valid-Until: //p' "$release")
  if [ -n "$valid_until" ] && [ "$(date -d "$valid_until" +%s)" -lt "$(date +%s)" ]; then
    die "$BPO_SUITE Release expired at $valid_until (a stale mirror or replayed file)"
  fi
  # The SHA256 section: " <sha256> <size> main/binary-amd64/Packages.xz".
  read -r packages_sha packages_bytes < <(awk '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 }
    s && $3 == "main/binary-amd64/Packages.xz" { print $1, $2; exit }' "$release") || true
  [ -n "${packages_sha:-}" ] || die "$BPO_SUITE Release lists no main/binary-amd64/Packages.xz"
  if [ ! -f "$dl/Packages.xz" ] || [ "$(sha256_of "$dl/Packages.xz")" != "$packages_sha" ]; then
    curl -fsS --retry 2 --max-time 300 -o "$dl/Packages.xz.new" \
      "$BPO_MIRROR/dists/$BPO_SUITE/main/binary-amd64/Packages.xz" 2>"$dl/curl.log" || {
      log "cannot fetch $BPO_SUITE Packages.xz: $(tail -1 "$dl/curl.log")"
      return 1
    }
    [ "$(sha256_of "$dl/Packages.xz.new")" = "$packages_sha" ] &&
      [ "$(stat -c %s "$dl/Packages.xz.new")" = "$packages_bytes" ] ||
      die "$BPO_SUITE Packages.xz does not match the SHA256/size in its signed Release"
    mv -f "$dl/Packages.xz.new" "$dl/Packages.xz"
  fi
  mv -f "$dl/Release.new" "$dl/Release"
  rm -f "$dl/InRelease.new"
  # One stanza per line (fields joined by |), kernel images only; the newest Version wins.
  while IFS='|' read -r name version filename sha size; do
    [[ $name =~ $BPO_PACKAGE_RE ]] || continue
    if [ -z "$best" ] || dpkg --compare-versions "$version" gt "$best_version"; then
      best="$name|$version|$filename|$sha|$size"
      best_version=$version
    fi
  done < <(xz -dc "$dl/Packages.xz" | awk -v RS= -F '\n' '/(^|\n)Package: linux-image-6\./ {
      for (i = 1; i <= NF; i++) { split($i, kv, ": "); f[kv[1]] = kv[2] }
      print f["Package"] "|" f["Version"] "|" f["Filename"] "|" f["SHA256"] "|" f["Size"]
      delete f }')
  [ -n "$best" ] || die "no linux-image-6.*-amd64 in $BPO_SUITE"
  IFS='|' read -r pkg pkg_version filename deb_sha256 deb_bytes <<<"$best"
  [[ $filename =~ ^pool/[A-Za-z0-9/._+~-]+\.deb$ ]] || die "odd Filename in Packages: $filename"
  deb_url=$BPO_MIRROR/$filename
  deb_path=$dl/$(basename "$filename")
}

if [ "$vm_kernel" = backports ]; then
  resolve_backports || use_cached_build "$BPO_SUITE unreachable"
else
  pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' |
    sort -V | tail -1)
  [ -n "$pkg" ] || use_cached_build "no linux-image-6.1.0-*-amd64 in apt lists (run apt-get update)"
  pkg_version=
fi
kver=${pkg#linux-image-}
stamp="$pkg${pkg_version:+ $pkg_version} $(cat "$here/build.sh" "$here/init.sh" "$busybox" | sha256sum | cut -c1-16)"
if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$stamp" ] &&
  [ -f "$cache/vmlinuz" ] && [ -f "$cache/initrd.gz" ]; then
  exit 0
fi

start=$(date +%s.%N)
if [ "$vm_kernel" = backports ]; then
  deb=$deb_path
  if [ ! -f "$deb" ] || [ "$(sha256_of "$deb")" != "$deb_sha256" ]; then
    log "downloading $pkg $pkg_version ($((deb_bytes >> 20)) MiB) from $BPO_MIRROR"
    curl -fsS --retry 2 --max-time 1200 -o "$deb.part" "$deb_url" 2>"$cache/dl/curl.log" ||
      die "download $deb_url failed: $(tail -1 "$cache/dl/curl.log")"
    [ "$(sha256_of "$deb.part")" = "$deb_sha256" ] ||
      die "$(basename "$deb") does not match the SHA256 in $BPO_SUITE Packages"
    mv -f "$deb.part" "$deb"
  fi
else
  deb=$(ls "$cache/dl/${pkg}_"*.deb 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$deb" ]; then
    log "downloading $pkg"
    # apt-get download writes to the current directory; as root it warns that the download is
    # unsandboxed (the _apt user cannot write here): harmless.
    (cd "$cache/dl" && apt-get download -q "$pkg" 2>&1 | grep -v -i 'unsandboxed' >&2) || true
    deb=$(ls "$cache/dl/${pkg}_"*.deb 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$deb" ] || die "apt-get download $pkg failed"
  fi
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
