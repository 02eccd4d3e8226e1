/**
 * A mount whose server dies before it is ready says where to read the server's log, and that
 * file exists: before, the hint named server.log in the mount's runtime dir, which the failed
 * mount's undo had just removed. The server is held before ready by EROFS_OCI_TEST_PAUSE_AT and
 * killed there by pid.
 */
import assert from "node:assert/strict";
import { path, requires, root } from "./_support/requires.ts";
import { type CliResult, describe } from "./_support/cli.ts";
import { killMountServersOf, mountSandbox } from "./_support/mounts.ts";
import { mountPausedAtKeeper, pausedServerOf } from "./_support/paused_mount.ts";

Deno.test({
  name: "server killed before ready: the hint names the server log, kept where it still is",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    let mounting: Promise<CliResult> | undefined;
    try {
      mounting = mountPausedAtKeeper(sandbox);
      Deno.kill(await pausedServerOf(sandbox.runtimeDir), "SIGKILL");
      const result = await mounting;
      mounting = undefined;
      assert.match(result.stderr, /exited .*before it was ready/, describe(result));
      const named = result.stderr.match(/kept at (\S+)\)/)?.[1];
      assert(named, `the hint names a kept log:\n${describe(result)}`);
      assert(named.startsWith(`${sandbox.runtimeDir}/`), named);
      assert.match(Deno.readTextFileSync(named), /\S/, "the kept log has the server's lines");
      assert.deepEqual(
        [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)],
        [],
        "the mount's runtime dir itself was still removed",
      );
    } finally {
      killMountServersOf(sandbox.runtimeDir);
      await mounting?.catch(() => {});
      await sandbox.cleanup();
    }
  },
});
