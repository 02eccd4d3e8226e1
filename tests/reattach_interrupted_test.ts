/**
 * `reattach` killed after it started the new server, before it recorded it: the server must
 * not go on serving unrecorded. It did, for good: the record still named the dead server, so
 * the next reattach started a second server on the same FUSE connection, and `umount` stopped
 * only the recorded one (a helper's chaos rounds collected 24 such servers). Now the server ends
 * as a crashed one would, and the next reattach brings the mount back.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { describe, runCli } from "./_support/cli.ts";
import {
  expectedManifest,
  killMountServersOf,
  manifestOf,
  mountSandbox,
  mountServersOf,
  pidAlive,
} from "./_support/mounts.ts";
import { HoldPoint } from "./_support/hold.ts";
import { waitFor } from "./_support/wait.ts";

/**
 * basic.erofs mounted (FUSE) in a sandbox, its server killed, and a `reattach` started that holds
 * at `hold` (reattach-before-state) once its new server runs; `fn` goes on from there. Whatever
 * it leaves (the reattach, servers, the sandbox) is ended after it.
 */
async function withHeldReattach(
  fn: (
    sandbox: Awaited<ReturnType<typeof mountSandbox>>,
    reattach: Deno.ChildProcess,
    hold: HoldPoint,
  ) => Promise<void>,
): Promise<void> {
  const sandbox = await mountSandbox();
  using hold = new HoldPoint("reattach-before-state", `${sandbox.runtimeDir}-hold`);
  let reattach: Deno.ChildProcess | undefined;
  try {
    const mounted = await runCli(
      ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
      { env: sandbox.env, timeoutMs: 120_000 },
    );
    assert.equal(mounted.code, 0, describe(mounted));
    const [first] = mountServersOf(sandbox.runtimeDir);
    Deno.kill(first, "SIGKILL");
    await waitFor("the server to die", () => !pidAlive(first), 10_000);
    reattach = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
      args: ["reattach", sandbox.target],
      env: { ...sandbox.env, ...hold.env },
      stdout: "null",
      stderr: "null",
    }).spawn();
    await hold.reached("reattach to start its server");
    await fn(sandbox, reattach, hold);
  } finally {
    try {
      reattach?.kill("SIGKILL");
      await reattach?.status;
    } catch { /* ended */ }
    killMountServersOf(sandbox.runtimeDir);
    await sandbox.cleanup();
  }
}

Deno.test({
  name: "reattach killed before recording its server: the server ends, the next reattach works",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () =>
    withHeldReattach(async (sandbox, reattach) => {
      const [unrecorded] = mountServersOf(sandbox.runtimeDir);
      assert.ok(unrecorded, "reattach's server runs");
      reattach.kill("SIGKILL");
      await reattach.status;

      await waitFor("the unrecorded server to end", () => !pidAlive(unrecorded), 15_000);

      const again = await runCli(["reattach", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 120_000,
      });
      assert.equal(again.code, 0, describe(again));
      assert.equal(mountServersOf(sandbox.runtimeDir).length, 1, "one server, recorded");
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));

      const unmounted = await runCli(["umount", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 60_000,
      });
      assert.equal(unmounted.code, 0, describe(unmounted));
      await waitFor(
        "no server left",
        () => mountServersOf(sandbox.runtimeDir).length === 0,
        15_000,
      );
    }),
});

Deno.test({
  name:
    "a SIGTERM to reattach's server before reattach recorded it keeps the mount's crash recovery",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () =>
    withHeldReattach(async (sandbox, reattach, hold) => {
      const [started] = mountServersOf(sandbox.runtimeDir);
      assert.ok(started, "reattach's server runs");
      // Stopped on purpose (a service manager, an admin) in the moment before the record: it
      // ends leaving the FUSE keeper and its record, as a crash would. Before, it stopped the
      // keeper: the mount was dead for good ("no keeper: umount it").
      Deno.kill(started, "SIGTERM");
      await waitFor("reattach's server to end", () => !pidAlive(started), 15_000);
      hold.release();
      await reattach.status;

      const again = await runCli(["reattach", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 120_000,
      });
      assert.equal(again.code, 0, describe(again));
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      const unmounted = await runCli(["umount", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 60_000,
      });
      assert.equal(unmounted.code, 0, describe(unmounted));
    }),
});

Deno.test({
  name: "a reattach that read the records before another one recorded its server leaves it alone",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () =>
    withHeldReattach(async (sandbox, first, firstHold) => {
      // The second reattach has read the records (the server dead) when the first one, already
      // holding the mount's lock, records its new server and ends; then the second claims the
      // lock. It started a second server on the same FUSE connection, unrecorded.
      using secondHold = new HoldPoint("reattach-before-claim", `${sandbox.runtimeDir}-hold2`);
      const second = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
        args: ["reattach", sandbox.target],
        env: { ...sandbox.env, ...secondHold.env },
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      try {
        await secondHold.reached("the second reattach to read the records");
        firstHold.release();
        assert.equal((await first.status).code, 0, "the first reattach succeeds");
        const [recorded] = mountServersOf(sandbox.runtimeDir);
        secondHold.release();
        const output = await second.output();
        const text = new TextDecoder().decode(output.stdout) +
          new TextDecoder().decode(output.stderr);
        assert.equal(output.code, 0, text);
        assert.match(text, /left alone/);
        assert.deepEqual(mountServersOf(sandbox.runtimeDir), [recorded], "one server: the first's");
        assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
        const unmounted = await runCli(["umount", sandbox.target], {
          env: sandbox.env,
          timeoutMs: 60_000,
        });
        assert.equal(unmounted.code, 0, describe(unmounted));
      } finally {
        try {
          second.kill("SIGKILL");
        } catch { /* ended */ }
        await second.status;
      }
    }),
});
