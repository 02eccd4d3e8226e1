/**
 * A `mount` killed after its server was ready and before it recorded its mount: the server
 * undoes what that mount made, and only that. It detached whatever was mounted at DIR since it
 * was ready, so a second `mount` to the same DIR that finished meanwhile lost its mount (its
 * record and server left: "not mounted").
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
} from "./_support/mounts.ts";
import { HoldPoint } from "./_support/hold.ts";
import { waitFor } from "./_support/wait.ts";

Deno.test({
  name: "a mount killed before its record undoes its own mount only, not another's at DIR",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    using hold = new HoldPoint("mount-layers", `${sandbox.runtimeDir}-hold`);
    let first: Deno.ChildProcess | undefined;
    try {
      first = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
        args: ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
        env: { ...sandbox.env, ...hold.env },
        stdout: "null",
        stderr: "null",
      }).spawn();
      await hold.reached("the first mount's server to be ready");
      const [firstServer] = mountServersOf(sandbox.runtimeDir);
      const second = await runCli(
        ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
        { env: sandbox.env, timeoutMs: 120_000 },
      );
      assert.equal(second.code, 0, describe(second));
      first.kill("SIGKILL");
      await first.status;
      await waitFor(
        "the first mount's server to undo its mount and end",
        () => !mountServersOf(sandbox.runtimeDir).includes(firstServer),
        20_000,
      );
      assert.equal(
        await manifestOf(sandbox.target),
        expectedManifest("basic.txt"),
        "the second mount is still there",
      );
      const unmounted = await runCli(["umount", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 60_000,
      });
      assert.equal(unmounted.code, 0, describe(unmounted));
      assert.match(unmounted.stderr, /^unmounted /m, "it was mounted until umount");
    } finally {
      try {
        first?.kill("SIGKILL");
        await first?.status;
      } catch { /* ended */ }
      killMountServersOf(sandbox.runtimeDir);
      await sandbox.cleanup();
    }
  },
});
