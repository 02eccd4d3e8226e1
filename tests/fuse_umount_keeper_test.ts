/**
 * `umount` of a FUSE mount whose server does not stop when asked (here: stopped with SIGSTOP):
 * after the wait, umount kills the server, and it must also end the server's FUSE keeper (a
 * `sleep` holding the /dev/fuse descriptors, lib/fuse/keeper.ts), which only the server ended
 * before: nothing of the mount may be left running.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import {
  mountSandbox,
  mountsBelow,
  pidAlive,
  runningKeepersOf,
  serverPids,
} from "./_support/mounts.ts";

Deno.test({
  name: "umount of a FUSE mount whose server hangs: server killed, keeper ended, nothing mounted",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    let server: number | undefined;
    try {
      assertSuccess(
        await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
          timeoutMs: 60_000,
        }),
      );
      [server] = serverPids(sandbox.runtimeDir);
      assert(server, "the mount's server");
      assert.equal(runningKeepersOf(sandbox.runtimeDir).length, 1, sandbox.serverLogs());
      Deno.kill(server, "SIGSTOP");
      // umount asks the server to stop, waits 15 s for it, then kills it.
      assertSuccess(
        await runCli(["umount", sandbox.target], { env: sandbox.env, timeoutMs: 60_000 }),
      );
      assert(!pidAlive(server), "the hung server was killed");
      assert.deepEqual(runningKeepersOf(sandbox.runtimeDir), [], "the keeper was ended");
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
    } finally {
      if (server && pidAlive(server)) Deno.kill(server, "SIGKILL");
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "umount of a FUSE mount whose recovery record is gone or damaged still ends its keeper",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    for (const damage of ["remove", "garbage"] as const) {
      const sandbox = await mountSandbox();
      try {
        assertSuccess(
          await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"], {
            env: sandbox.env,
            timeoutMs: 60_000,
          }),
        );
        assert.equal(runningKeepersOf(sandbox.runtimeDir).length, 1, sandbox.serverLogs());
        const [record] = [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)].map((e) =>
          `${sandbox.runtimeDir}/mounts/${e.name}/fuse-recovery.json`
        );
        if (damage === "remove") Deno.removeSync(record);
        else Deno.writeTextFileSync(record, "{not json");
        assertSuccess(
          await runCli(["umount", sandbox.target], { env: sandbox.env, timeoutMs: 60_000 }),
        );
        assert.deepEqual(runningKeepersOf(sandbox.runtimeDir), [], `keeper left (${damage})`);
        assert.deepEqual(mountsBelow(sandbox.target), []);
      } finally {
        await sandbox.cleanup();
      }
    }
  },
});
