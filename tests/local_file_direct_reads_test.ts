/**
 * A local EROFS file's mount (FUSE): its reads are answered by the reader thread itself
 * (LocalFile direct reads: the file reopened, every chunk present), not through the server's
 * event loop, and every byte is right.
 */
import assert from "node:assert/strict";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { expectedManifest, manifestOf, mountSandbox } from "./_support/mounts.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";

Deno.test({
  name: "mount FILE (FUSE): the reader thread answers the file's reads itself",
  ignore: requires(root(), path("/dev/fuse"), path(`${FIXTURES}/basic.erofs`, "shared fixtures")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      assertSuccess(
        await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
        }),
      );
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      const listed = await runCli(["list", "--json"], { env: sandbox.env });
      assertSuccess(listed);
      const [mount] = JSON.parse(listed.stdout) as { layers: { directReads?: number }[] }[];
      assert((mount.layers[0].directReads ?? 0) > 0, listed.stdout);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
    }
  },
});
