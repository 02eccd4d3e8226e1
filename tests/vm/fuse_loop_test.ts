/**
 * The FUSE backend on a kernel without file-backed EROFS (Debian 6.1 in the VM): mount(2) on
 * the FUSE file fails with ENOTBLK and mountErofsFile falls back to read-only autoclear loop
 * devices — for the image and for its extra devices — with the same trees as on the host.
 */
import assert from "node:assert/strict";
import {
  expected,
  manifest,
  openTracked,
  overlayOfFixtureLayers,
  withFuseStack,
} from "../_support/fuse_stack.ts";
import { FIXTURES } from "../_support/requires.ts";
import { NOT_IN_VM } from "../_support/vm.ts";

async function attached(device: string): Promise<boolean> {
  try {
    await Deno.stat(`/sys/block/${device.replace("/dev/", "")}/loop/backing_file`);
    return true;
  } catch {
    return false;
  }
}

async function waitDetached(devices: string[]): Promise<string[]> {
  for (let i = 0; i < 100; i++) {
    const still = [];
    for (const device of devices) if (await attached(device)) still.push(device);
    if (still.length === 0) return [];
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return devices;
}

Deno.test({
  name: "vm fuse: EROFS on a FUSE blob goes through a loop device on 6.1 and reads the same tree",
  ignore: NOT_IN_VM,
  async fn() {
    let devices: string[] = [];
    await withFuseStack(async (stack, sources) => {
      const blob = await stack.blob(await openTracked(sources, `${FIXTURES}/basic.erofs`), "fuse");
      const { loopDevices } = await stack.erofs(blob.filePath, "mnt");
      devices = loopDevices;
      assert.equal(loopDevices.length, 1, "the 6.1 kernel has no file-backed EROFS");
      assert.equal(await manifest(`${stack.root}/mnt`), await expected("basic.txt"));
    });
    assert.deepEqual(await waitDetached(devices), [], "autoclear detached the loop device");
  },
});

Deno.test({
  name: "vm fuse: tar-index meta image with the tar on FUSE, both through loop devices",
  ignore: NOT_IN_VM,
  async fn() {
    let devices: string[] = [];
    await withFuseStack(async (stack, sources) => {
      const tar = await stack.blob(await openTracked(sources, `${FIXTURES}/layer.tar`), "fuse-tar");
      const { loopDevices } = await stack.erofs(`${FIXTURES}/layer.meta.erofs`, "mnt", {
        extraDevices: [tar.filePath],
      });
      devices = loopDevices;
      assert.equal(loopDevices.length, 2);
      assert.equal(await manifest(`${stack.root}/mnt`), await expected("layer.meta.txt"));
    });
    assert.deepEqual(await waitDetached(devices), []);
  },
});

Deno.test({
  name: "vm fuse: three FUSE layers through loop devices under an overlay equal the merged tree",
  ignore: NOT_IN_VM,
  async fn() {
    await withFuseStack(async (stack, sources) => {
      const merged = await overlayOfFixtureLayers(stack, sources);
      assert.equal(await manifest(merged), await expected("merged.txt"));
    });
  },
});
