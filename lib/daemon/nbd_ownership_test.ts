import assert from "node:assert/strict";
import { layerOnDevice, nbdDeviceIsLayers } from "./nbd_ownership.ts";
import { formatRecoveryLine } from "../state/recovery_record.ts";

/** A recovery file naming mount `mountId` (or, unless given, none: mount.erofs's). */
function recoveryFile(dir: string, name: string, mountId?: string): string {
  const path = `${dir}/${name}`;
  Deno.writeTextFileSync(path, formatRecoveryLine({ kind: "LOCAL", path: "/srv/blob" }) + "\n");
  if (mountId !== undefined) {
    Deno.writeTextFileSync(`${path}.erofs-oci.json`, JSON.stringify({ mountId }));
  }
  return path;
}

Deno.test("nbd ownership: a device is a record's layer only while connected with its recovery file for its mount", () => {
  const dir = Deno.makeTempDirSync({ prefix: "nbd-ownership-" });
  try {
    const ours = recoveryFile(dir, "mountnbd_ours", "m1");
    const layer = { recoveryFile: ours };
    assert.equal(nbdDeviceIsLayers(3, layer, "m1", ours), true);
    // Freed (dead-connection timeout, nbd-client -d), then taken by another mount.
    assert.equal(nbdDeviceIsLayers(3, layer, "m1", undefined), false, "not connected");
    const theirs = recoveryFile(dir, "mountnbd_theirs", "m2");
    const live = (id: string) => id === "m2";
    assert.equal(nbdDeviceIsLayers(3, layer, "m1", theirs, live), false, "another mount's device");
    assert.equal(nbdDeviceIsLayers(3, layer, "m1", "/other/tool/backend"), false);
    // The same file naming another mount that is recorded: a record copied from its.
    assert.equal(nbdDeviceIsLayers(3, { recoveryFile: theirs }, "m1", theirs, live), false);
    // Naming a mount no longer recorded: adopted by `reattach` under a record of its own.
    assert.equal(nbdDeviceIsLayers(3, { recoveryFile: theirs }, "a1", theirs, () => false), true);
    // mount.erofs's own records (adopted mounts) name no mount; older records no file.
    const peers = recoveryFile(dir, "mountnbd_peer");
    assert.equal(nbdDeviceIsLayers(3, { recoveryFile: peers }, "adopted", peers), true);
    assert.equal(nbdDeviceIsLayers(3, {}, "m1", "/anything"), true);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("nbd ownership: layerOnDevice is the layer the device is, by name and recovery file", () => {
  const dir = Deno.makeTempDirSync({ prefix: "nbd-ownership-" });
  try {
    const first = recoveryFile(dir, "mountnbd_first", "m1");
    const second = recoveryFile(dir, "mountnbd_second", "m1");
    const state = {
      id: "m1",
      layers: [
        { device: "nbd0", recoveryFile: first },
        { device: "nbd1", recoveryFile: second },
      ],
    };
    assert.equal(layerOnDevice(state, { index: 1, backend: second }), 1);
    assert.equal(layerOnDevice(state, { index: 0, backend: first }), 0);
    // nbd1 connected by another mount since; nbd2 is none of its layers.
    assert.equal(layerOnDevice(state, { index: 1, backend: "/other/backend" }), -1);
    assert.equal(layerOnDevice(state, { index: 2, backend: second }), -1);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
