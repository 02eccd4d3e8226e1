/**
 * mount(2) off the main thread: the pool-thread attempt serves the common case, and a failure
 * still reports the kernel's errno (the worker tries again to learn it).
 */
import assert from "node:assert/strict";
import { mountOffThread, umountOffThread } from "../lib/sys/mount_task.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";

const MS_RDONLY = 1;
const ENOENT = 2;
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
