/**
 * A signal to `umount DIR` once it has started changing things: it finishes (the record goes
 * with the mount and the server) and exits with the signal's code and one line. Before, the
 * signal ended it after the mount and the server were gone but before the record was: `list`
 * showed "not mounted" and `mount … DIR` said "DIR is already mounted by erofs-oci". A record
 * left so anyway (SIGKILL) is named as what it is by `mount`, and `umount DIR` clears it.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import {
  assertCliError,
  assertSuccess,
  describe,
  runCli,
  startCli,
  type StartedCli,
  stopCli,
} from "./_support/cli.ts";
import { mountSandbox, mountsBelow, serverPids } from "./_support/mounts.ts";
import { HoldPoint } from "./_support/hold.ts";
import { sleep } from "./_support/wait.ts";

const ignore = requires(root(), path("/dev/fuse"));

/** Starts `umount DIR` and holds it once its mount and server are gone, its record not yet. */
async function umountHeld(
  sandbox: { target: string; env: Record<string, string> },
  hold: HoldPoint,
): Promise<StartedCli> {
  const started = startCli(["umount", sandbox.target], { ...sandbox.env, ...hold.env });
  await hold.reached("umount at its record");
  assert.deepEqual(mountsBelow(sandbox.target), [], "the mount is gone");
  return started;
}

for (const [signal, code] of [["SIGINT", 130], ["SIGHUP", 129]] as const) {
  Deno.test({
    name: `umount interrupt: ${signal} after the mount went: it finishes, exit ${code}`,
    ignore,
    async fn() {
      const sandbox = await mountSandbox();
      using hold = new HoldPoint("umount-record", `${sandbox.target}.hold`);
      let umounting: StartedCli | undefined;
      try {
        const image = `${FIXTURES}/basic.erofs`;
        assertSuccess(await runCli(["mount", image, sandbox.target], { env: sandbox.env }));
        umounting = await umountHeld(sandbox, hold);
        umounting.child.kill(signal);
        await sleep(300); // the signal handled while held
        hold.release();
        const result = await umounting.result;
        assert.deepEqual(serverPids(sandbox.runtimeDir), [], "no record left");
        assert.equal(result.code, code, describe(result));
        assert.match(
          result.stderr,
          /^erofs-oci: umount interrupted: it finished first, .* is unmounted$/m,
        );
        assert.doesNotMatch(result.stderr, /\n\s+at /, "no stack trace");
        const list = await runCli(["list"], { env: sandbox.env });
        assertSuccess(list);
        assert.match(list.stdout, /no active erofs-oci mounts/, describe(list));
        // DIR takes a new mount.
        assertSuccess(await runCli(["mount", image, sandbox.target], { env: sandbox.env }));
        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      } finally {
        await stopCli(umounting);
        await sandbox.cleanup();
      }
    },
  });
}

Deno.test({
  name: "umount interrupt: a record left without its mount is named so by mount; umount clears it",
  ignore,
  async fn() {
    const sandbox = await mountSandbox();
    using hold = new HoldPoint("umount-record", `${sandbox.target}.hold`);
    let umounting: StartedCli | undefined;
    try {
      const image = `${FIXTURES}/basic.erofs`;
      assertSuccess(await runCli(["mount", image, sandbox.target], { env: sandbox.env }));
      umounting = await umountHeld(sandbox, hold);
      umounting.child.kill("SIGKILL"); // no handler runs: only the record is left
      await umounting.result;
      umounting = undefined;

      const refused = await runCli(["mount", image, sandbox.target], { env: sandbox.env });
      assertCliError(
        refused,
        1,
        /a record of an earlier mount at .*\/mnt remains \(not mounted; .*basic\.erofs\)/,
      );
      assert.match(refused.stderr, /run `erofs-oci umount .*\/mnt` to clear it/);
      assert.doesNotMatch(refused.stderr, /already mounted/);

      const cleared = await runCli(["umount", sandbox.target], { env: sandbox.env });
      assertSuccess(cleared);
      assert.match(cleared.stderr, /was no longer mounted: its record is cleared/);
      assertSuccess(await runCli(["mount", image, sandbox.target], { env: sandbox.env }));
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await stopCli(umounting);
      await sandbox.cleanup();
    }
  },
});
