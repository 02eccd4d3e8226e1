/**
 * mount(2) and umount2(2) off the main thread: the pool-thread attempt serves the common case,
 * and a failure still reports the kernel's errno (the worker tries again to learn it).
 */
import assert from "node:assert/strict";
import { mountOffThread, umountOffThread } from "../lib/sys/mount_task.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";

const MS_RDONLY = 1;
const ENOENT = 2;
const EBUSY = 16;
const EINVAL = 22;
const ignore = requires(root(), path(`${FIXTURES}/basic.erofs`));

Deno.test({
  name: "mountOffThread: mounts a file-backed EROFS image; a failure carries its errno",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-mount-task-" });
    try {
      const image = `${FIXTURES}/basic.erofs`;
      const call = { source: image, fsType: "erofs", flags: MS_RDONLY, data: "" };
      const missing = await mountOffThread({ ...call, target: `${dir}/missing` });
      assert.deepEqual(missing, { errno: ENOENT, call: "mount" });

      const mounted = await mountOffThread({ ...call, target: dir });
      assert.equal(mounted.errno, 0);
      try {
        assert((await Array.fromAsync(Deno.readDir(dir))).length > 0, "the image's root lists");
      } finally {
        assert.equal((await umountOffThread(dir, 0)).errno, 0);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Runs `fn` with the global Worker counting the threads started meanwhile. */
async function countingWorkers(fn: (started: () => number) => Promise<void>): Promise<void> {
  const original = globalThis.Worker;
  let started = 0;
  globalThis.Worker = class extends original {
    constructor(...args: ConstructorParameters<typeof Worker>) {
      super(...args);
      started++;
    }
  };
  try {
    await fn(() => started);
  } finally {
    globalThis.Worker = original;
  }
}

Deno.test({
  // A worker per umount2 (~100 ms to start) made `umount` of a 419-layer mount take 50 s: the
  // CLI unmounts every layer, the server every layer's FUSE mount.
  name: "umountOffThread: a umount that succeeds starts no worker; a refused one says why",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-umount-task-" });
    try {
      const call = { source: `${FIXTURES}/basic.erofs`, fsType: "erofs", flags: MS_RDONLY };
      assert.equal((await mountOffThread({ ...call, target: dir, data: "" })).errno, 0);
      await countingWorkers(async (started) => {
        const open = await Deno.open(dir);
        try {
          assert.deepEqual(await umountOffThread(dir, 0), { errno: EBUSY, call: "umount" });
        } finally {
          open.close();
        }
        const afterRefusal = started();
        assert.deepEqual(await umountOffThread(dir, 0), { errno: 0, call: "umount" });
        assert.equal(started(), afterRefusal, "no worker thread for a umount that succeeds");
        assert.deepEqual(await umountOffThread(dir, 0), { errno: EINVAL, call: "umount" });
      });
    } finally {
      await umountOffThread(dir, 2 /* MNT_DETACH */);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
