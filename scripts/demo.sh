#!/usr/bin/env bash
# The main job on its built-in default: sets up the machine (scripts/setup.sh), starts a
# throw-away registry on loopback, pushes the demo EROFS images (the erofs-utils fixtures),
# inspects them, and mounts the 3-layer demo image without pulling it; then cleans up.
# Needs root for the mount step (FUSE or NBD); without root it stops after inspect/pull.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
fixtures=${EROFS_OCI_FIXTURES:-$PWD/../shared/fixtures}
cli=(scripts/erofs-oci-dev)
work=$(mktemp -d /tmp/erofs-oci-demo.XXXXXX)
registry_pid=""
mounted=""
cleanup() {
  [ -n "$mounted" ] && "${cli[@]}" umount "$work/mnt" || true
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
image=127.0.0.1:$port/demo/layers:latest

echo "== push the demo image (3 EROFS layers) to a loopback registry"
"${cli[@]}" push "$image" "$fixtures/layer1.erofs" "$fixtures/layer2.erofs" "$fixtures/layer3.erofs"
echo "== inspect"
"${cli[@]}" inspect "$image"
echo "== pull the top layer and verify it"
"${cli[@]}" pull "$image" --layer 2 -o "$work/layer3.erofs"
cmp "$work/layer3.erofs" "$fixtures/layer3.erofs" && echo "pulled layer equals $fixtures/layer3.erofs"

if [ "$(id -u)" != 0 ]; then
  echo "== not root: skipping the mount step (run as root to mount)"
  exit 0
fi
if ! "${cli[@]}" --help | grep -q '^  mount'; then
  echo "== mount is not available in this build yet"
  exit 0
fi
mkdir "$work/mnt"
echo "== mount $image at $work/mnt (no pull)"
"${cli[@]}" mount "$image" "$work/mnt"
mounted=1
"${cli[@]}" list
echo "== merged tree:"
(cd "$work/mnt" && find . | sort | head -40)
echo "== etc/config.txt: $(cat "$work/mnt/etc/config.txt")"
"${cli[@]}" umount "$work/mnt"
mounted=""
echo "== done: mounted, read and unmounted"
