/**
 * Verified reads through a kernel NBD device: a layer reply with a flipped byte makes the
 * reader's read fail with EIO, never return wrong bytes; the rest of the image reads.
 */
import assert from "node:assert/strict";
import { startFaultProxy } from "../_support/fault_proxy.ts";
import { assertSuccess, runCli } from "../_support/cli.ts";
import { mountSandbox } from "../_support/mounts.ts";
import { NOT_IN_VM } from "../_support/vm.ts";
import {
  flipRule,
  pushWithTables,
  readError,
  setup,
  SMALL_TEXT,
} from "../_support/verify_image.ts";

Deno.test({
  name: "vm verified nbd: flipped layer bytes → EIO through /dev/nbdN, never wrong bytes",
  ignore: NOT_IN_VM,
  async fn() {
    await using s = await setup();
    const cli = (args: string[], env: Record<string, string> = {}) =>
      runCli(args, { env, timeoutMs: 180_000 });
    const layer = await pushWithTables(s, "v/nbd");
    await using proxy = await startFaultProxy(s.registry.host, [
      flipRule(layer.digest, s.flipOffset),
    ]);
    const sandbox = await mountSandbox();
    const env = {
      ...sandbox.env,
      EROFS_OCI_CACHE_DIR: `${sandbox.runtimeDir}-cache`,
      EROFS_OCI_STATE_DIR: `${sandbox.runtimeDir}-state`,
    };
    try {
      assertSuccess(
        await cli([
          "mount",
          `${proxy.host}/v/nbd:v1`,
          sandbox.target,
          "--plain-http",
          "--backend",
          "nbd",
          "--require-verified",
        ], env),
      );
      assert.equal(await Deno.readTextFile(`${sandbox.target}/small.txt`), SMALL_TEXT);
      const error = await readError(`${sandbox.target}/big.bin`);
      assert.match(error ?? "read succeeded", /Input\/output error|EIO/, sandbox.serverLogs());
      assert.match(sandbox.serverLogs(), /do not match the chunk-digest table again/);
      assertSuccess(await cli(["umount", sandbox.target], env));
    } finally {
      await sandbox.cleanup();
      await Deno.remove(env.EROFS_OCI_CACHE_DIR, { recursive: true }).catch(() => {});
      await Deno.remove(env.EROFS_OCI_STATE_DIR, { recursive: true }).catch(() => {});
    }
  },
});
