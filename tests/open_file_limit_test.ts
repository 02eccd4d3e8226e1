/**
 * Mounting under an open-file limit too low for the image. A 20-layer image under `ulimit -n
 * 256` failed with only "the mount server exited (code 1) before it was ready": the server's
 * start failed (pipe2: Too many open files) and its clean-up threw too (opendir /proc) before
 * it told the CLI why. Now the CLI refuses up front, naming the need and the limit; a server
 * that runs out all the same says why; a --foreground mount is not told to use --foreground.
 */
import assert from "node:assert/strict";
import {
  assertCliError,
  assertSuccess,
  type CliResult,
  runCli,
  startCli,
  stopCli,
} from "./_support/cli.ts";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import {
  killMountServersOf,
  type MountSandbox,
  mountSandbox,
  mountsBelow,
  mountServersOf,
  pidAlive,
  runningKeepersOf,
  serverPids,
} from "./_support/mounts.ts";
import { startRegistry, type TestRegistry } from "./_support/registry.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { distinctLayers } from "./_support/distinct_layers.ts";
import { waitFor } from "./_support/wait.ts";
import { HoldPoint } from "./_support/hold.ts";
import { fuseServerDescriptors, nbdServerDescriptors } from "../lib/daemon/open_file_budget.ts";

const LAYERS = 6;
/** Enough for the CLI, short of what a server of LAYERS FUSE layers is counted to need (100). */
const LOW_LIMIT = 96;

/** `LAYERS` distinct one-file EROFS layers pushed as fds/many:v1. */
async function pushLayers(registry: TestRegistry, work: string): Promise<string> {
  await pushImage(registry, "fds/many", "v1", await distinctLayers(work, LAYERS));
  return `${registry.host}/fds/many:v1`;
}

/** The result without the notice that the test layers have no chunk-digest table. */
function withoutTableNotice(result: CliResult): CliResult {
  const stderr = result.stderr.split("\n").filter((l) => !/no chunk-digest table/.test(l));
  return { ...result, stderr: stderr.join("\n") };
}

function mountDirs(runtimeDir: string): string[] {
  try {
    return [...Deno.readDirSync(`${runtimeDir}/mounts`)].map((e) => e.name);
  } catch {
    return [];
  }
}

function assertNothingLeft(sandbox: MountSandbox): void {
  assert.deepEqual(mountsBelow(sandbox.target), [], "nothing mounted at the target");
  assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "no FUSE or layer mount left");
  assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "no server left");
  assert.deepEqual(runningKeepersOf(sandbox.runtimeDir), [], "no FUSE keeper left");
  assert.deepEqual(mountDirs(sandbox.runtimeDir), [], "the mount's runtime dir was removed");
}

const needed = fuseServerDescriptors(LAYERS);
const REFUSAL = new RegExp(
  `this (image|mount)'s ${LAYERS} layers need about ${needed} open files; the limit is ${LOW_LIMIT}`,
);

/** `mount --backend BACKEND` of the LAYERS-layer image under LOW_LIMIT: refused, nothing left. */
async function assertMountRefused(backend: "fuse" | "nbd", counted: number): Promise<void> {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-fds-" });
  const sandbox = await mountSandbox();
  try {
    await using registry = await startRegistry({ auth: "none" });
    const image = await pushLayers(registry, work);
    const result = await runCli(
      ["mount", image, sandbox.target, "--plain-http", "--backend", backend],
      {
        env: sandbox.env,
        openFileLimit: LOW_LIMIT,
        // This host may have no nbd module: one in sight takes the mount as far as it goes
        // before it needs a device, and the count comes before that.
        seeNbdModule: backend === "nbd",
        timeoutMs: 60_000,
      },
    );
    const refusal = `this image's ${LAYERS} layers need about ${counted} open files; ` +
      `the limit is ${LOW_LIMIT}`;
    assertCliError(withoutTableNotice(result), 1, new RegExp(refusal));
    assert.match(result.stderr, new RegExp(`hint: raise it \\(ulimit -n ${counted}\\)`));
    assertNothingLeft(sandbox);
  } finally {
    await sandbox.cleanup();
    await Deno.remove(work, { recursive: true });
  }
}

Deno.test({
  name: "open-file limit: a mount that would run out is refused up front, nothing started",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry"), command("prlimit")),
  fn: () => assertMountRefused("fuse", needed),
});

Deno.test({
  name: "open-file limit: an nbd mount that would run out is refused up front the same way",
  ignore: requires(root(), command("docker-registry"), command("prlimit"), command("unshare")),
  fn: () => assertMountRefused("nbd", nbdServerDescriptors(LAYERS)),
});

Deno.test({
  name: "open-file limit: reattach of a mount that would run out is refused the same way",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry"), command("prlimit")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-fds-" });
    const sandbox = await mountSandbox();
    try {
      await using registry = await startRegistry({ auth: "none" });
      const image = await pushLayers(registry, work);
      assertSuccess(
        await runCli(["mount", image, sandbox.target, "--plain-http", "--backend", "fuse"], {
          env: sandbox.env,
          timeoutMs: 60_000,
        }),
      );
      const [server] = serverPids(sandbox.runtimeDir);
      Deno.kill(server, "SIGKILL");
      await waitFor("the server to end", () => !pidAlive(server));

      const refused = await runCli(["reattach", sandbox.target], {
        env: sandbox.env,
        openFileLimit: LOW_LIMIT,
        timeoutMs: 60_000,
      });
      assert.equal(refused.code, 1, refused.stderr);
      assert.match(refused.stderr, REFUSAL);
      assert.match(refused.stderr, new RegExp(`raise it \\(ulimit -n ${needed}\\)`));
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "no server started");

      // Under the usual limit the same mount is taken over and unmounted.
      assertSuccess(await runCli(["reattach", sandbox.target], { env: sandbox.env }));
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      assertNothingLeft(sandbox);
    } finally {
      await sandbox.cleanup();
      await Deno.remove(work, { recursive: true });
    }
  },
});

/** Open descriptors of `pid`. */
function openDescriptors(pid: number): number {
  return [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
}

Deno.test({
  name:
    "open-file limit: a server that runs out while starting says why, and its clean-up still runs",
  ignore: requires(root(), path("/dev/fuse"), command("prlimit")),
  async fn() {
    const sandbox = await mountSandbox();
    using hold = new HoldPoint("server-metrics-listen", `${sandbox.runtimeDir}.hold`);
    let mounting: ReturnType<typeof startCli> | undefined;
    try {
      // Held once its layer is exported and its keeper runs, before the metrics socket.
      mounting = startCli(
        [
          "mount",
          `${FIXTURES}/basic.erofs`,
          sandbox.target,
          "--backend",
          "fuse",
          "--metrics-listen",
          `unix:${sandbox.runtimeDir}.metrics.sock`,
        ],
        { ...sandbox.env, ...hold.env },
      );
      await hold.reached("the held server");
      const [server] = mountServersOf(sandbox.runtimeDir);
      // Not one descriptor more: the metrics socket fails, then the clean-up's first look at
      // /proc would have (the keeper's record is read through a descriptor too).
      const limited = await new Deno.Command("prlimit", {
        args: ["--pid", String(server), `--nofile=${openDescriptors(server)}:`],
      }).output();
      assert(limited.success, "prlimit");
      hold.release();
      const result = await mounting.result;
      mounting = undefined;
      assertCliError(result, 1, /Too many open files/);
      assert.match(result.stderr, /hint: raise the open file limit \(ulimit -n\)/);
      assertNothingLeft(sandbox);
    } finally {
      await stopCli(mounting);
      killMountServersOf(sandbox.runtimeDir);
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "mount --foreground whose server dies before ready: the hint does not say --foreground",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    using hold = new HoldPoint("server-main", `${sandbox.runtimeDir}.hold`);
    let mounting: ReturnType<typeof startCli> | undefined;
    try {
      mounting = startCli(
        ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse", "--foreground"],
        { ...sandbox.env, ...hold.env },
      );
      await hold.reached("the held server");
      Deno.kill(mountServersOf(sandbox.runtimeDir)[0], "SIGKILL");
      const result = await mounting.result;
      mounting = undefined;
      assertCliError(result, 1, /the mount server exited .* before it was ready/);
      assert.doesNotMatch(result.stderr, /--foreground/);
      assertNothingLeft(sandbox);
    } finally {
      await stopCli(mounting);
      killMountServersOf(sandbox.runtimeDir);
      await sandbox.cleanup();
    }
  },
});
