/**
 * A mount whose server dies before it is ready says where to read the server's log, and that
 * file exists: before, the hint named server.log in the mount's runtime dir, which the failed
 * mount's undo had just removed. The server is held before ready by EROFS_OCI_TEST_PAUSE_AT and
 * killed there by pid.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { type CliResult, describe, runCli } from "./_support/cli.ts";
import {
  killMountServersOf,
  mountSandbox,
  mountServersOf,
  runningKeepersOf,
} from "./_support/mounts.ts";
import { TEST_PAUSE_ENV } from "../lib/daemon/test_pause.ts";
import { waitFor } from "./_support/wait.ts";

Deno.test({
  name: "server killed before ready: the hint names the server log, kept where it still is",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    let mounting: Promise<CliResult> | undefined;
    try {
      mounting = runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
        env: { ...sandbox.env, [TEST_PAUSE_ENV]: "fuse-keeper-started" },
        timeoutMs: 90_000,
      });
      await waitFor("the keeper", () => runningKeepersOf(sandbox.runtimeDir).length > 0);
      const servers = mountServersOf(sandbox.runtimeDir);
      assert.equal(servers.length, 1, "one paused server");
      Deno.kill(servers[0], "SIGKILL");
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
