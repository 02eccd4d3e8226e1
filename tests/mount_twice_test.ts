/**
 * Mounting on a directory that already holds an erofs-oci mount says so and how to undo it;
 * it said "mount point DIR is not empty", which hid why. The first mount is left as it was.
 */
import assert from "node:assert/strict";
import { assertCliError, assertSuccess, runCli } from "./_support/cli.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { mountSandbox, mountsBelow, serverPids } from "./_support/mounts.ts";

Deno.test({
  name: "mount on a directory erofs-oci already mounted: 'already mounted', first mount kept",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const mount = () =>
        runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
        });
      assertSuccess(await mount());
      assertCliError(
        await mount(),
        1,
        /is already mounted by erofs-oci \(.*basic\.erofs\)/,
      );
      assert.equal(mountsBelow(sandbox.target).length, 1, "the first mount is there, alone");
      assert.equal(serverPids(sandbox.runtimeDir).length, 1);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "mount on a directory something else is mounted on: 'already mounted (tmpfs)'",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const tmpfs = await new Deno.Command("mount", {
        args: ["-t", "tmpfs", "-o", "size=1m", "erofs-oci-test", sandbox.target],
      }).output();
      assert.ok(tmpfs.success, new TextDecoder().decode(tmpfs.stderr));
      Deno.writeTextFileSync(`${sandbox.target}/file`, "x");
      assertCliError(
        await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
        }),
        1,
        /mount point .* is already mounted \(tmpfs\)/,
      );
      assert.equal(Deno.readTextFileSync(`${sandbox.target}/file`), "x", "left as it was");
    } finally {
      await new Deno.Command("umount", { args: [sandbox.target] }).output();
      await sandbox.cleanup();
    }
  },
});
