/**
 * A ',' in the image's path or the mount target is no option separator: both are mount(2)'s
 * own arguments (the target through /proc/self/fd/N), so the mount works; before, it was
 * refused, and only once the server had started.
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { expectedManifest, manifestOf, mountSandbox } from "./_support/mounts.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";

Deno.test({
  name: "mount FILE DIR with a ',' in both paths: mounted, then unmounted",
  ignore: requires(root(), path("/dev/fuse"), path(`${FIXTURES}/basic.erofs`, "shared fixtures")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    const image = `${base}/basic,1.erofs`;
    const target = `${base}/mnt,x`;
    try {
      await Deno.copyFile(`${FIXTURES}/basic.erofs`, image);
      await Deno.mkdir(target);
      assertSuccess(
        await runCli(["mount", image, target, "--backend", "fuse"], { env: sandbox.env }),
      );
      assert.equal(await manifestOf(target), expectedManifest("basic.txt"));
      assertSuccess(await runCli(["umount", target], { env: sandbox.env }));
    } finally {
      await new Deno.Command("umount", { args: ["-l", target] }).output().catch(() => {});
      await sandbox.cleanup();
    }
  },
});
