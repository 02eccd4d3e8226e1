/**
 * A FUSE server that dies (SIGKILL) under a mounted EROFS: the FUSE mount answers ENOTCONN,
 * EROFS keeps what it cached, uncached reads fail with EIO, and both unmount normally.
 */
import assert from "node:assert/strict";
import { unmountErofs } from "../lib/mount/erofs_file.ts";
import { umountOffThread } from "../lib/sys/mount_task.ts";
import { readMountInfo } from "../lib/sys/mountinfo.ts";
import { deadline } from "./_support/fuse_stack.ts";
import { FIXTURES, path, REPO_ROOT, requires, root } from "./_support/requires.ts";

const MNT_DETACH = 2;

function mountsUnder(prefix: string): string[] {
  return readMountInfo().map((m) => m.mountPoint).filter((p) => p.startsWith(prefix));
}

async function waitForLine(stream: ReadableStream<Uint8Array>, wanted: string): Promise<void> {
  let text = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    text += chunk;
    if (text.split("\n").includes(wanted)) return;
  }
  throw new Error(`child ended before "${wanted}": ${text}`);
}

Deno.test({
  name:
    "fuse: after the server is killed, FUSE is ENOTCONN, EROFS serves its cache, EIO beyond, both unmount",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const base = await Deno.makeTempDir({ prefix: "erofs-oci-fuse-death-" });
    const fuseDir = `${base}/fuse`;
    const target = `${base}/mnt`;
    await Deno.mkdir(target);
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${REPO_ROOT}/tests/_support/fuse_child.ts`,
        `${FIXTURES}/basic.erofs`,
        fuseDir,
        target,
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    try {
      await deadline(waitForLine(child.stdout, "ready"), "child mount", 30_000);
      assert.deepEqual(mountsUnder(base), [fuseDir, target]);
      const lorem = await Deno.readFile(`${target}/lorem.txt`);
      assert.equal(lorem.length, 300001);

      child.kill("SIGKILL");
      await child.status;

      await assert.rejects(() => Deno.stat(`${fuseDir}/blob`), /not connected/);
      assert.deepEqual(
        await Deno.readFile(`${target}/lorem.txt`),
        lorem,
        "cached data stays readable",
      );
      await assert.rejects(() => Deno.readFile(`${target}/big-1m3.bin`), /Input\/output error/);

      await unmountErofs(target);
      const fuse = await umountOffThread(fuseDir, 0);
      assert.equal(fuse.errno, 0, "FUSE unmounts after EROFS");
      assert.deepEqual(mountsUnder(base), []);
    } finally {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await child.status;
      for (const mountPoint of mountsUnder(base).reverse()) {
        await umountOffThread(mountPoint, MNT_DETACH);
      }
      await Deno.remove(base, { recursive: true });
    }
  },
});
