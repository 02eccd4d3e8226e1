/**
 * `umount PATH` where a user's symlink now stands at PATH, leading to another erofs-oci mount
 * (root's): that other mount stays. A helper moved their mount's directory away, put a symlink
 * to root's mount at its old path, and root's `umount` of the old path unmounted root's mount
 * (findState matched the symlink's target first).
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { readMountInfo } from "../lib/sys/mountinfo.ts";

Deno.test({
  name: "umount of a path a user's symlink now holds: the mount it leads to stays",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-umount-link-" });
    const mounted = (dir: string) => readMountInfo().some((m) => m.mountPoint === dir);
    const cli = (args: string[]) => runCli(args, { env: sandbox.env });
    try {
      await Deno.mkdir(`${work}/home/c/mnt`, { recursive: true });
      await Deno.mkdir(`${work}/roots/app`, { recursive: true });
      const image = `${FIXTURES}/basic.erofs`;
      assertSuccess(await cli(["mount", image, `${work}/roots/app`, "--backend", "fuse"]));
      assertSuccess(await cli(["mount", image, `${work}/home/c/mnt`, "--backend", "fuse"]));
      await Deno.rename(`${work}/home/c`, `${work}/home/c.old`);
      await Deno.mkdir(`${work}/home/c`);
      await Deno.symlink(`${work}/roots/app`, `${work}/home/c/mnt`);
      const chowned = await new Deno.Command("chown", {
        args: ["-h", "65534:65534", `${work}/home/c/mnt`],
      }).output();
      assert(chowned.success);

      await cli(["umount", `${work}/home/c/mnt`]);
      assert(mounted(`${work}/roots/app`), "root's mount behind the user's symlink was unmounted");
      assertSuccess(await cli(["umount", `${work}/roots/app`]));
    } finally {
      await cli(["umount", "--all"]);
      await sandbox.cleanup();
      for (const dir of [`${work}/home/c.old/mnt`, `${work}/roots/app`]) {
        if (mounted(dir)) await new Deno.Command("umount", { args: ["-l", dir] }).output();
      }
      await Deno.remove(work, { recursive: true });
    }
  },
});
