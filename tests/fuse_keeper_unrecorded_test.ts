/**
 * A FUSE mount's server killed (SIGKILL) after it started its keeper (lib/fuse/keeper.ts) and
 * before it wrote `fuse-recovery.json`, the only place that named the keeper: the failed
 * `mount` must still end the keeper and leave nothing mounted. Before `fuse-keeper.pending`
 * (lib/daemon/fuse_recovery.ts) such a keeper ran on forever, holding the dead FUSE mount.
 * The server is held at that point by EROFS_OCI_TEST_PAUSE_AT and killed there by pid.
 */
import assert from "node:assert/strict";
import { path, requires, root } from "./_support/requires.ts";
import { type CliResult, describe } from "./_support/cli.ts";
import {
  killMountServersOf,
  mountSandbox,
  mountsBelow,
  mountServersOf,
  pidAlive,
  runningKeepersOf,
} from "./_support/mounts.ts";
import { mountPausedAtKeeper, pausedServerOf } from "./_support/paused_mount.ts";

function mountDirs(runtimeDir: string): string[] {
  try {
    return [...Deno.readDirSync(`${runtimeDir}/mounts`)].map((e) =>
      `${runtimeDir}/mounts/${e.name}`
    );
  } catch {
    return [];
  }
}

Deno.test({
  name: "FUSE server killed between starting its keeper and recording it: mount ends the keeper",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    let mounting: Promise<CliResult> | undefined;
    try {
      mounting = mountPausedAtKeeper(sandbox);
      const server = await pausedServerOf(sandbox.runtimeDir);
      const [keeper] = runningKeepersOf(sandbox.runtimeDir);
      const [dir] = mountDirs(sandbox.runtimeDir);
      assert(dir, "the mount's runtime dir");
      // The window: the keeper runs, and no record names it.
      assert.throws(() => Deno.statSync(`${dir}/fuse-recovery.json`), Deno.errors.NotFound);

      Deno.kill(server, "SIGKILL");
      const result = await mounting;
      mounting = undefined;
      assert.notEqual(result.code, 0, describe(result));
      assert(!result.timedOut, describe(result));
      assert.match(result.stderr, /exited .*before it was ready/, describe(result));

      assert(!pidAlive(keeper), `the keeper (pid ${keeper}) still runs after the failed mount`);
      assert.deepEqual(runningKeepersOf(sandbox.runtimeDir), []);
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), []);
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "the dead FUSE mount was detached");
      assert.deepEqual(mountDirs(sandbox.runtimeDir), [], "the mount's runtime dir was removed");
    } finally {
      killMountServersOf(sandbox.runtimeDir);
      await mounting?.catch(() => {});
      await sandbox.cleanup();
    }
  },
});
