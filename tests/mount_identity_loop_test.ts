/**
 * A mount's recorded identity (lib/sys/mountinfo.ts) on a loop device, as kernels before
 * file-backed EROFS mount a FUSE layer: after a plain umount frees it, the next
 * `mount -o loop` of another file gets the same mount id, /dev/loopN and 7:N (each handed out
 * lowest free first), so only the loop device's backing file tells the two apart.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { identityOf, isMount, readMountInfo } from "../lib/sys/mountinfo.ts";

const run = (cmd: string, args: string[]) =>
  new Deno.Command(cmd, { args, stderr: "piped" }).output();

Deno.test({
  name: "mount identity: another file on the freed loop device is not the recorded mount",
  ignore: requires(root(), path("/dev/loop-control"), command("losetup"), path(FIXTURES)),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-loop-identity-" });
    const [ours, theirs] = [`${work}/ours`, `${work}/theirs`];
    const mountedOn = (dir: string) => readMountInfo().findLast((e) => e.mountPoint === dir);
    try {
      Deno.mkdirSync(ours);
      Deno.mkdirSync(theirs);
      Deno.copyFileSync(`${FIXTURES}/basic.erofs`, `${work}/ours.erofs`);
      Deno.copyFileSync(`${FIXTURES}/basic.erofs`, `${work}/theirs.erofs`);
      const loopMount = async (file: string, dir: string) => {
        const out = await run("mount", ["-t", "erofs", "-o", "loop,ro", file, dir]);
        assert.ok(out.success, new TextDecoder().decode(out.stderr));
        return mountedOn(dir)!;
      };
      const recorded = identityOf(await loopMount(`${work}/ours.erofs`, ours));
      assert.match(recorded.source, /^\/dev\/loop\d+$/);
      assert.equal(recorded.backingFile, `${work}/ours.erofs`);
      assert.ok((await run("umount", [ours])).success);

      const other = await loopMount(`${work}/theirs.erofs`, theirs);
      // Usually the kernel hands the other mount our id and loop device by itself; under load
      // another mount may take them first, so the other's id, source and device are given.
      const reused = { ...identityOf(other), backingFile: recorded.backingFile };
      assert.equal(isMount(other, reused), false, "the other file's mount is not ours");
      assert.equal(isMount(other, identityOf(other)), true);
    } finally {
      for (const dir of [ours, theirs]) if (mountedOn(dir)) await run("umount", [dir]);
      await Deno.remove(work, { recursive: true });
    }
  },
});
