#!/usr/bin/env bash
# The main job on its built-in default, needing nothing outside this repository: sets up the
# machine (scripts/setup.sh), starts a throw-away registry on loopback, builds a 3-layer demo
# image with `erofs-oci build` from small trees made here (the third layer deletes a file with
# an OCI whiteout), pushes, inspects, pulls and verifies it, mounts it without pulling, shows the
# merged tree and unmounts. Then `erofs-oci convert`s an ordinary tar+gzip image (made by umoci,
# or written by hand when umoci is missing) into EROFS layers and mounts that too.
# DEMO_WITHOUT_UMOCI=1 takes the hand-written path even when umoci is installed.
# Needs root for the mount steps (FUSE or NBD); without root it stops after inspect/pull.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cli=(scripts/erofs-oci-dev)
work=$(mktemp -d /tmp/erofs-oci-demo.XXXXXX)
# The demo's registry is gone once it ends: its layers are cached, and its state kept, in $work,
# removed with it, not in the host's /var/cache/erofs-oci and /var/lib/erofs-oci.
export EROFS_OCI_CACHE_DIR=$work/disk-cache EROFS_OCI_STATE_DIR=$work/state
registry_pid=""
mounted=()
cleanup() {
  for dir in "${mounted[@]}"; do "${cli[@]}" umount "$dir" || true; done
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
storage: { filesystem: { rootdirectory: $work/storage } }
http: { addr: 127.0.0.1:$port }
log: { level: error, accesslog: { disabled: true } }
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
registry=127.0.0.1:$port
image=$registry/demo/layers:latest

echo "== build 3 EROFS layers from small trees (erofs-oci build)"
mkdir -p "$work/l1/etc" "$work/l1/usr/share/doc" "$work/l2/etc" "$work/l2/app" "$work/l3"
echo "base config" > "$work/l1/etc/config.txt"
echo "to be deleted by layer 3" > "$work/l1/etc/obsolete.conf"
echo "docs from the base layer" > "$work/l1/usr/share/doc/README"
echo "layer 2 config" > "$work/l2/etc/config.txt"
printf '#!/bin/sh\necho hello from the demo app\n' > "$work/l2/app/run.sh"
chmod 755 "$work/l2/app/run.sh"
# Layer 3 is a tar with an OCI whiteout: build turns .wh.obsolete.conf into what overlayfs
# understands, so the file disappears from the merged tree.
mkdir -p "$work/l3tree/etc"
echo "added by layer 3" > "$work/l3tree/etc/motd"
: > "$work/l3tree/etc/.wh.obsolete.conf"
tar -C "$work/l3tree" --owner=0 --group=0 -czf "$work/l3.tar.gz" etc
for n in 1 2; do "${cli[@]}" build "$work/l$n" -o "$work/layer$n.erofs" --timestamp 0; done
"${cli[@]}" build "$work/l3.tar.gz" -o "$work/layer3.erofs" --timestamp 0

echo "== push the demo image (3 EROFS layers) to a loopback registry"
"${cli[@]}" push "$image" "$work/layer1.erofs" "$work/layer2.erofs" "$work/layer3.erofs"
echo "== inspect"
"${cli[@]}" inspect "$image"
echo "== pull the top layer and verify it"
"${cli[@]}" pull "$image" --layer 2 -o "$work/pulled3.erofs"
cmp "$work/pulled3.erofs" "$work/layer3.erofs" && echo "pulled layer equals the built layer3.erofs"

if [ "$(id -u)" != 0 ]; then
  echo "== not root: skipping the mount steps (run as root to mount)"
  exit 0
fi
mkdir "$work/mnt"
echo "== mount $image at $work/mnt (no pull)"
"${cli[@]}" mount "$image" "$work/mnt"
mounted+=("$work/mnt")
"${cli[@]}" list
echo "== what the mount fetched so far, in the disk cache"
"${cli[@]}" cache
echo "== merged tree:"
(cd "$work/mnt" && find . | sort)
echo "== etc/config.txt: $(cat "$work/mnt/etc/config.txt")"
[ ! -e "$work/mnt/etc/obsolete.conf" ] && echo "== etc/obsolete.conf is gone (whiteout in layer 3)"
"${cli[@]}" umount "$work/mnt"
mounted=()
echo "== unmounted"

echo "== an ordinary image: tar+gzip layers in an OCI layout"
src=$work/ordinary
mkdir -p "$work/o1/etc" "$work/o1/var/lib" "$work/o2/etc"
echo "ordinary base" > "$work/o1/etc/issue"
echo "state" > "$work/o1/var/lib/state"
echo "second layer" > "$work/o2/etc/hostname"
if [ -z "${DEMO_WITHOUT_UMOCI:-}" ] && command -v umoci >/dev/null; then
  umoci init --layout "$src"
  umoci new --image "$src:v1"
  umoci unpack --image "$src:v1" "$work/bundle" >/dev/null
  cp -a "$work/o1/." "$work/bundle/rootfs/"
  umoci repack --image "$src:v1" "$work/bundle"
  rm -rf "$work/bundle"
  umoci unpack --image "$src:v1" "$work/bundle" >/dev/null
  cp -a "$work/o2/." "$work/bundle/rootfs/"
  rm -rf "$work/bundle/rootfs/var/lib/state"
  umoci repack --image "$src:v1" "$work/bundle"
  echo "(made by umoci)"
else
  # Without umoci: the same by hand (OCI image-spec image-layout.md, manifest.md, config.md).
  mkdir -p "$src/blobs/sha256"
  mkdir -p "$work/o2/var/lib"
  : > "$work/o2/var/lib/.wh.state"
  blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$src/blobs/sha256/$d"; echo "$d"; }
  tar -C "$work/o1" --owner=0 --group=0 -czf "$work/o1.tar.gz" etc var
  tar -C "$work/o2" --owner=0 --group=0 -czf "$work/o2.tar.gz" etc var
  d1=$(blob "$work/o1.tar.gz"); d2=$(blob "$work/o2.tar.gz")
  u1=$(gzip -dc "$work/o1.tar.gz" | sha256sum | cut -d' ' -f1)
  u2=$(gzip -dc "$work/o2.tar.gz" | sha256sum | cut -d' ' -f1)
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' \
    "$u1" "$u2" > "$work/config.json"
  c=$(blob "$work/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
    "$c" "$(stat -c %s "$work/config.json")" "$d1" "$(stat -c %s "$work/o1.tar.gz")" "$d2" "$(stat -c %s "$work/o2.tar.gz")" > "$work/manifest.json"
  m=$(blob "$work/manifest.json")
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
    "$m" "$(stat -c %s "$work/manifest.json")" > "$src/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$src/oci-layout"
  echo "(written by hand, without umoci)"
fi
"${cli[@]}" inspect "oci:$src:v1"
converted=$registry/demo/converted:v1
echo "== convert oci:$src:v1 → $converted (one EROFS layer per tar layer)"
"${cli[@]}" convert "oci:$src:v1" "$converted"
"${cli[@]}" inspect "$converted"
mkdir "$work/mnt2"
"${cli[@]}" mount "$converted" "$work/mnt2"
mounted+=("$work/mnt2")
echo "== converted image, merged tree:"
(cd "$work/mnt2" && find . | sort)
echo "== etc/hostname: $(cat "$work/mnt2/etc/hostname")"
[ ! -e "$work/mnt2/var/lib/state" ] && echo "== var/lib/state is gone (deleted in the second layer)"
"${cli[@]}" umount "$work/mnt2"
mounted=()
echo "== done: built, pushed, pulled, mounted, converted, mounted again and unmounted"
