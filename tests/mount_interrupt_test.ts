/**
 * Ctrl-C (SIGINT) in the middle of `mount`, after the server got its spec: the mount must be
 * undone (server stopped, FUSE mounts and keeper gone, runtime dir removed, nothing at the
 * target) and the command must say so with exit 130. Before lib/cli/interrupt.ts the signal
 * ended the CLI at once and left a running server with its FUSE mounts and keeper that no
 * state file named: `list` did not show them and `umount` could not find them.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertCliError, runCli, startCli, type StartedCli, stopCli } from "./_support/cli.ts";
import {
  killMountServersOf,
  mountSandbox,
  mountsBelow,
  mountServersOf,
  runningKeepersOf,
} from "./_support/mounts.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGet, startFaultProxy } from "./_support/fault_proxy.ts";
import { TEST_PAUSE_ENV } from "../lib/test_pause.ts";
import { waitFor } from "./_support/wait.ts";
import { HoldPoint } from "./_support/hold.ts";

function mountDirs(runtimeDir: string): string[] {
  try {
    return [...Deno.readDirSync(`${runtimeDir}/mounts`)].map((e) => e.name);
  } catch {
    return [];
  }
}

function assertNothingLeft(sandbox: { target: string; runtimeDir: string }): void {
  assert.deepEqual(mountsBelow(sandbox.target), [], "nothing mounted at the target");
  assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "no FUSE or layer mount left");
  assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "no server left");
  assert.deepEqual(runningKeepersOf(sandbox.runtimeDir), [], "no FUSE keeper left");
  assert.deepEqual(mountDirs(sandbox.runtimeDir), [], "the mount's runtime dir was removed");
}

Deno.test({
  name: "SIGINT while a slow server starts: it is waited for, stopped, and nothing is left",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const image = `${registry.host}/interrupt/app:v1`;
    const pushed = await runCli(["push", image, `${FIXTURES}/basic.erofs`, "--plain-http"]);
    assert.equal(pushed.code, 0, pushed.stderr);
    // Every blob read takes 1.5 s: the server gets its spec long before it can be ready.
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGet, fault: { kind: "delay", ms: 1_500 } },
    ]);
    const sandbox = await mountSandbox();
    let mounting: StartedCli | undefined;
    try {
      mounting = startCli(
        [
          "mount",
          image.replace(registry.host, proxy.host),
          sandbox.target,
          "--backend",
          "fuse",
          "--plain-http",
          "--no-disk-cache",
        ],
        sandbox.env,
      );
      // The runtime dir appears just before the spec goes to the server.
      await waitFor("the mount's runtime dir", () => mountDirs(sandbox.runtimeDir).length > 0);
      mounting.child.kill("SIGINT");
      const result = await mounting.result;
      mounting = undefined;
      assertCliError(result, 130, /mount interrupted: nothing is left mounted/);
      assertNothingLeft(sandbox);
    } finally {
      await stopCli(mounting);
      await sandbox.cleanup();
    }
  },
});

// A hangup is undone as Ctrl-C is, but exits as a hangup does (129).
for (
  const [signal, code] of [["SIGINT", 130], ["SIGHUP", 129]] as const
) {
  Deno.test({
    name: `${signal} while the server hangs before ready: killed after the grace, nothing left`,
    ignore: requires(root(), path("/dev/fuse")),
    async fn() {
      const sandbox = await mountSandbox();
      let mounting: StartedCli | undefined;
      try {
        mounting = startCli(
          ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
          // The server stops for good once its keeper runs (lib/test_pause.ts).
          { ...sandbox.env, [TEST_PAUSE_ENV]: "fuse-keeper-started" },
        );
        await waitFor("the keeper", () => runningKeepersOf(sandbox.runtimeDir).length > 0);
        const startedMs = Date.now();
        mounting.child.kill(signal);
        const result = await mounting.result;
        mounting = undefined;
        assertCliError(result, code, /mount interrupted: nothing is left mounted/);
        assert(Date.now() - startedMs < 15_000, "the hung server is not waited for long");
        assertNothingLeft(sandbox);
      } finally {
        await stopCli(mounting);
        killMountServersOf(sandbox.runtimeDir);
        await sandbox.cleanup();
      }
    },
  });
}

Deno.test({
  name: "SIGINT while the image is resolved: exit 130 at once, no server left",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    // A "registry" that accepts connections and never answers.
    const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held: Deno.Conn[] = [];
    const accepting = (async () => {
      for await (const conn of silent) held.push(conn);
    })().catch(() => {});
    const sandbox = await mountSandbox();
    let mounting: StartedCli | undefined;
    try {
      const port = (silent.addr as Deno.NetAddr).port;
      mounting = startCli(
        [
          "mount",
          `127.0.0.1:${port}/app:v1`,
          sandbox.target,
          "--backend",
          "fuse",
          "--plain-http",
        ],
        sandbox.env,
      );
      await waitFor("the manifest request", () => held.length > 0);
      const startedMs = Date.now();
      mounting.child.kill("SIGINT");
      const result = await mounting.result;
      mounting = undefined;
      assertCliError(result, 130, /mount interrupted/);
      assert(Date.now() - startedMs < 5_000, "resolving is abandoned at once");
      assertNothingLeft(sandbox);
    } finally {
      await stopCli(mounting);
      silent.close();
      for (const conn of held) conn.close();
      await accepting;
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "SIGINT once DIR is mounted and recorded: undoes nothing, says so, exits as mounted",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    using hold = new HoldPoint("mount-mounted", `${sandbox.target}.hold`);
    let mounting: StartedCli | undefined;
    try {
      mounting = startCli(
        ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
        { ...sandbox.env, ...hold.env },
      );
      await hold.reached("the mount done and recorded");
      // Its default action (as once the CLI stopped catching it here) killed the CLI with
      // DIR mounted: exit 130, the "mounted" line not printed.
      mounting.child.kill("SIGINT");
      await new Promise((resolve) => setTimeout(resolve, 200));
      hold.release();
      const result = await mounting.result;
      mounting = undefined;
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /^mounted .*basic\.erofs at /);
      assert.match(result.stderr, /the interrupt came after .* was mounted: it stays mounted/);
      assert.ok(Deno.statSync(`${sandbox.target}`).isDirectory);
      assert.notDeepEqual(mountsBelow(sandbox.target), [], "still mounted");
      assert.equal(mountDirs(sandbox.runtimeDir).length, 1, "still recorded");
    } finally {
      await stopCli(mounting);
      await sandbox.cleanup();
    }
  },
});
