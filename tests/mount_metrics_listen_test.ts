/**
 * `mount --metrics-listen` on an address that cannot be taken (a port in use): refused before
 * anything starts, one line. Before, the mount went on and its server only logged that it
 * served no metrics: the option was silently dropped. Also when the address is taken only after
 * the CLI checked it (two mounts started at once with the same address): the server's own bind
 * fails the mount before it is ready.
 */
import assert from "node:assert/strict";
import { assertCliError, assertSuccess, runCli, startCli, stopCli } from "./_support/cli.ts";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import {
  expectedManifest,
  killMountServersOf,
  manifestOf,
  mountSandbox,
  mountsBelow,
  mountServersOf,
  pidAlive,
  runningKeepersOf,
  serverPids,
} from "./_support/mounts.ts";
import { HoldPoint } from "./_support/hold.ts";
import { waitFor } from "./_support/wait.ts";

Deno.test({
  name: "mount --metrics-listen on a unix socket in a runtime dir not made yet: mounts, serves",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      // The first mount of this runtime dir makes it: the socket's directory is not there yet.
      assert.throws(() => Deno.statSync(sandbox.runtimeDir), Deno.errors.NotFound);
      const socket = `${sandbox.runtimeDir}/metrics.sock`;
      assertSuccess(
        await runCli([
          "mount",
          `${FIXTURES}/basic.erofs`,
          sandbox.target,
          "--backend",
          "fuse",
          "--metrics-listen",
          `unix:${socket}`,
        ], { env: sandbox.env, timeoutMs: 60_000 }),
      );
      assert.ok(Deno.lstatSync(socket).isSocket, `${socket} is a socket`);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
    }
  },
});

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

Deno.test({
  name: "mount --metrics-listen taken by another mount after the check: fails, nothing left",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    // Beside the first target, not below its path (mountsBelow matches by prefix).
    const second = sandbox.target.replace(/[^/]+$/, "second");
    Deno.mkdirSync(second);
    using hold = new HoldPoint("server-metrics-listen", `${sandbox.runtimeDir}-hold`);
    const free = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (free.addr as Deno.NetAddr).port;
    free.close();
    const mountArgs = (target: string) => [
      "mount",
      `${FIXTURES}/basic.erofs`,
      target,
      "--backend",
      "fuse",
      "--metrics-listen",
      `tcp:127.0.0.1:${port}`,
    ];
    // The first mount's check finds the port free; its server is held before it binds.
    const first = startCli(mountArgs(sandbox.target), { ...sandbox.env, ...hold.env });
    try {
      await hold.reached("the first server to reach its bind");
      // Meanwhile a second mount with the same address takes the port.
      assertSuccess(await runCli(mountArgs(second), { env: sandbox.env, timeoutMs: 60_000 }));
      const [secondServer] = serverPids(sandbox.runtimeDir);
      hold.release();
      const result = await first.result;
      assertCliError(
        result,
        1,
        new RegExp(
          `^erofs-oci: --metrics-listen tcp:127\\.0\\.0\\.1:${port}: cannot listen on ` +
            `127\\.0\\.0\\.1:${port}: .*in use`,
        ),
      );
      assert.deepEqual(mountsBelow(sandbox.target), [], "nothing mounted at the first target");
      await waitFor(
        "the first mount's server and keeper to end",
        () =>
          mountServersOf(sandbox.runtimeDir).length === 1 &&
          runningKeepersOf(sandbox.runtimeDir).length === 1,
      );
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), [secondServer]);
      const recorded = [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)];
      assert.equal(recorded.length, 1, "only the second mount's runtime dir is left");
      // The second mount serves its metrics at the address.
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      assert.ok(text.includes(second), text);
    } finally {
      await stopCli(first);
      if (mountsBelow(second).length) {
        await runCli(["umount", second], { env: sandbox.env, timeoutMs: 30_000 });
      }
      killMountServersOf(sandbox.runtimeDir);
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "reattach with the recorded --metrics-listen taken: serves the mount, warns in its log",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    let taken: Deno.Listener | undefined;
    try {
      const free = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = (free.addr as Deno.NetAddr).port;
      free.close();
      assertSuccess(
        await runCli([
          "mount",
          `${FIXTURES}/basic.erofs`,
          sandbox.target,
          "--backend",
          "fuse",
          "--metrics-listen",
          `tcp:127.0.0.1:${port}`,
        ], { env: sandbox.env, timeoutMs: 60_000 }),
      );
      const [first] = mountServersOf(sandbox.runtimeDir);
      Deno.kill(first, "SIGKILL");
      await waitFor("the server to die", () => !pidAlive(first), 10_000);
      // Someone else takes its port before the reattach (free once all its threads are gone).
      await waitFor("the dead server's port to be free", () => {
        try {
          taken = Deno.listen({ hostname: "127.0.0.1", port });
          return true;
        } catch {
          return false;
        }
      }, 10_000);
      // Failing here would leave the mount with no server at all: it is served without metrics.
      assertSuccess(
        await runCli(["reattach", sandbox.target], { env: sandbox.env, timeoutMs: 60_000 }),
      );
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      await sandbox.serverLogMatch(
        new RegExp(`--metrics-listen tcp:127\\.0\\.0\\.1:${port}: .*in use.*; serving no metrics`),
      );
    } finally {
      taken?.close();
      await sandbox.cleanup();
    }
  },
});
