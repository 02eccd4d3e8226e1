/**
 * `mount --metrics-listen` on an address that cannot be taken (a port in use): refused before
 * anything starts, one line. Before, the mount went on and its server only logged that it
 * served no metrics: the option was silently dropped.
 */
import assert from "node:assert/strict";
import { assertCliError, runCli } from "./_support/cli.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { mountSandbox, mountsBelow, mountServersOf } from "./_support/mounts.ts";

Deno.test({
  name: "mount --metrics-listen on a port in use: refused, nothing mounted",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      const port = (taken.addr as Deno.NetAddr).port;
      const result = await runCli([
        "mount",
        `${FIXTURES}/basic.erofs`,
        sandbox.target,
        "--backend",
        "fuse",
        "--metrics-listen",
        `tcp:127.0.0.1:${port}`,
      ], { env: sandbox.env });
      assertCliError(result, 1, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: .*in use`));
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), []);
    } finally {
      taken.close();
      await sandbox.cleanup();
    }
  },
});
