/**
 * `mount` killed (SIGKILL) after its server reported ready and it had mounted the layer, but
 * before it recorded the mount: the server sees its parent gone with no record, detaches what
 * `mount` had mounted on its exports, and stops, keeper and FUSE mounts included. It ran on
 * before, unrecorded: neither `list` nor `umount --all` knew of it. Held at that point with
 * EROFS_OCI_TEST_PAUSE_AT=mount-before-state, killed there by pid. Also when `mount` died
 * before its server's runtime had started (the server then took init for its `mount`).
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, REPO_ROOT, requires, root } from "./_support/requires.ts";
import {
  killMountServersOf,
  type MountSandbox,
  mountSandbox,
  mountsBelow,
  mountServersOf,
  runningKeepersOf,
} from "./_support/mounts.ts";
import { TEST_PAUSE_ENV } from "../lib/test_pause.ts";
import { HoldPoint } from "./_support/hold.ts";
import { runCli } from "./_support/cli.ts";
import { settledWithin, waitFor } from "./_support/wait.ts";

interface RunningMount {
  sandbox: MountSandbox;
  mount: Deno.ChildProcess;
  output: Promise<Deno.CommandOutput>;
}

/**
 * `mount` of a local file (FUSE) with `env(sandbox)` added to its environment; the mount, its
 * server and the sandbox are cleaned up whatever `body` did.
 */
async function withMount(
  env: (sandbox: MountSandbox) => Record<string, string>,
  body: (running: RunningMount) => Promise<void>,
) {
  const sandbox = await mountSandbox();
  try {
    const mount = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
      args: ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "fuse"],
      env: { ...sandbox.env, ...env(sandbox) },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const output = mount.output();
    try {
      await body({ sandbox, mount, output });
    } finally {
      try {
        mount.kill("SIGKILL");
      } catch { /* ended */ }
      await output.catch(() => {});
    }
  } finally {
    killMountServersOf(sandbox.runtimeDir);
    await sandbox.cleanup();
  }
}

/** withMount held at testHold(`holdAt`) until `body` releases the hold. */
async function withHeldMount(
  holdAt: string,
  body: (held: RunningMount & { hold: HoldPoint }) => Promise<void>,
) {
  let hold: HoldPoint | undefined;
  try {
    await withMount(
      (sandbox) => (hold = new HoldPoint(holdAt, `${sandbox.runtimeDir}-hold`)).env,
      (running) => body({ ...running, hold: hold! }),
    );
  } finally {
    hold?.[Symbol.dispose]();
  }
}

/** Held with DIR mounted and nothing recorded (TEST_PAUSE_ENV). */
const PAUSED_BEFORE_STATE = () => ({ [TEST_PAUSE_ENV]: "mount-before-state" });

Deno.test({
  name: "mount killed after its layer mount, before recording it: the server undoes it all",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () =>
    withMount(PAUSED_BEFORE_STATE, async ({ sandbox, mount, output }) => {
      await waitFor("DIR mounted", () => mountsBelow(sandbox.target).length > 0, 60_000);
      assert.equal(mountServersOf(sandbox.runtimeDir).length, 1);
      mount.kill("SIGKILL");
      await output.catch(() => {});
      await waitFor(
        "the server to undo the mount",
        () =>
          mountsBelow(sandbox.target).length === 0 &&
          mountServersOf(sandbox.runtimeDir).length === 0,
        15_000,
      );
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "its FUSE mounts went too");
      await waitFor("the keeper to end", () => runningKeepersOf(sandbox.runtimeDir).length === 0);
      const left = [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)].map((e) => e.name);
      assert.deepEqual(left, [], "its runtime dir was removed");
    }),
});

Deno.test({
  name: "server signalled before mount recorded the mount: it undoes the mount, nothing left",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    // The server must not leave DIR for a reattach (nothing would find it unrecorded), nor end
    // its keeper under a busy DIR (ENOTCONN for good): it detaches what `mount` made, and `mount`,
    // killed afterwards, has nothing left to undo.
    await withMount(PAUSED_BEFORE_STATE, async ({ sandbox, mount, output }) => {
      await waitFor("DIR mounted", () => mountsBelow(sandbox.target).length > 0, 60_000);
      const [server] = mountServersOf(sandbox.runtimeDir);
      Deno.kill(server, "SIGTERM");
      await waitFor("the server to stop", () => mountServersOf(sandbox.runtimeDir).length === 0);
      mount.kill("SIGKILL");
      await output.catch(() => {});
      assert.deepEqual(mountsBelow(sandbox.target), [], "DIR is not left mounted");
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "its FUSE mounts went too");
      await waitFor("the keeper to end", () => runningKeepersOf(sandbox.runtimeDir).length === 0);
    });
  },
});

Deno.test({
  name: "mount whose server dies while it mounts the layers fails in one line, leaving nothing",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () =>
    withHeldMount("mount-layers", async ({ sandbox, output, hold }) => {
      // The server is ready and its keeper holds the FUSE connection; the layer mount is next.
      await hold.reached("mount to reach its layers");
      const [server] = mountServersOf(sandbox.runtimeDir);
      Deno.kill(server, "SIGKILL");
      hold.release();
      // mount(2) waited for the dead server's answer for good (the keeper kept the connection).
      const done = await settledWithin(output, 30_000);
      assert(done, "mount still hangs 30 s after its server died");
      assert.equal(done.code, 1);
      const stderr = new TextDecoder().decode(done.stderr);
      assert.match(stderr, /the mount server \(pid \d+\) died while the layers were being mounted/);
      assert.equal(stderr.trim().split("\n").filter((l) => l.startsWith("erofs-oci:")).length, 1);
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "no FUSE mount left");
      await waitFor("the keeper to end", () => runningKeepersOf(sandbox.runtimeDir).length === 0);
    }),
});

Deno.test({
  name: "mount whose server is stopped while it mounts the layers ends it, freeing the lock",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () =>
    withHeldMount("mount-target-rechecked", async ({ sandbox, output, hold }) => {
      // Holding the lock of all mount changes, right before the layer's mount(2).
      await hold.reached("mount to hold the lock of mount changes");
      const [server] = mountServersOf(sandbox.runtimeDir);
      Deno.kill(server, "SIGSTOP");
      try {
        hold.release();
        // mount(2) waited on the stopped server for good, and with it every umount, reattach
        // and mount of the host (the lock).
        const done = await settledWithin(output, 60_000);
        assert(done, "mount still waits 60 s after its server was stopped");
        assert.equal(done.code, 1);
        const stderr = new TextDecoder().decode(done.stderr);
        assert.match(stderr, /the mount server \(pid \d+\) was stopped for \d+ s .*ended/);
        assert.deepEqual(mountsBelow(sandbox.target), []);
        const other = await runCli(["list"], { env: sandbox.env, timeoutMs: 30_000 });
        assert.equal(other.code, 0, "the lock is free again");
      } finally {
        try {
          Deno.kill(server, "SIGCONT");
        } catch { /* killed */ }
      }
    }),
});

Deno.test({
  name: "mount interrupted while another command holds the lock of mount changes ends at once",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () =>
    withHeldMount("mount-target-rechecked", async ({ sandbox, hold }) => {
      await hold.reached("the first mount to hold the lock of mount changes");
      const secondDir = `${sandbox.target}-second`;
      Deno.mkdirSync(secondDir);
      const second = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
        args: ["mount", `${FIXTURES}/basic.erofs`, secondDir, "--backend", "fuse"],
        env: sandbox.env,
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const output = second.output();
      try {
        // Its server up: it then waits for the lock.
        await waitFor("the second mount's server", () =>
          mountServersOf(sandbox.runtimeDir).length === 2, 60_000);
        await new Promise((resolve) =>
          setTimeout(resolve, 1000)
        );
        second.kill("SIGINT");
        // It waited until the first mount let go of the lock.
        const done = await settledWithin(output, 15_000);
        assert(done, "the interrupted mount still waits for the lock 15 s later");
        assert.equal(done.code, 130, new TextDecoder().decode(done.stderr));
        assert.match(new TextDecoder().decode(done.stderr), /mount interrupted/);
        assert.deepEqual(mountsBelow(secondDir), []);
      } finally {
        try {
          second.kill("SIGKILL");
        } catch { /* ended */ }
        await output.catch(() => {});
        hold.release();
      }
    }),
});

Deno.test({
  name: "mount killed before its server started: the server, once up, undoes its mounts and stops",
  ignore: requires(root(), path("/dev/fuse")),
  fn: () =>
    withHeldMount("server-main", async ({ sandbox, mount, output, hold }) => {
      // The server's runtime is up, before it has looked at anything; its spec is on the way.
      await hold.reached("the server's start");
      assert.equal(mountServersOf(sandbox.runtimeDir).length, 1);
      mount.kill("SIGKILL");
      await output.catch(() => {});
      hold.release();
      await waitFor(
        "the server to stop with nothing mounted",
        () =>
          mountServersOf(sandbox.runtimeDir).length === 0 &&
          mountsBelow(sandbox.runtimeDir).length === 0,
        30_000,
      );
      assert.deepEqual(mountsBelow(sandbox.target), []);
      await waitFor("the keeper to end", () => runningKeepersOf(sandbox.runtimeDir).length === 0);
    }),
});

for (const [layers, how] of [[1, "umount DIR"], [3, "umount --all"]] as const) {
  Deno.test({
    name: `mount and its server killed together before recording (${layers} layer(s)): ` +
      `${how} clears what they left`,
    ignore: requires(root(), path("/dev/fuse")),
    async fn() {
      const sandbox = await mountSandbox();
      const base = sandbox.target.replace(/\/mnt$/, "");
      let mount: Deno.ChildProcess | undefined;
      try {
        let image = `${FIXTURES}/basic.erofs`;
        if (layers === 3) {
          const { writeOciLayout } = await import("./_support/oci_layout_writer.ts");
          const blobs = [];
          for (const name of ["layer1", "layer2", "layer3"]) {
            blobs.push({
              bytes: await Deno.readFile(`${FIXTURES}/${name}.erofs`),
              mediaType: "application/vnd.erofs",
            });
          }
          await writeOciLayout(`${base}/layout`, blobs);
          image = `oci:${base}/layout:v1`;
        }
        mount = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
          args: ["mount", image, sandbox.target, "--backend", "fuse"],
          env: { ...sandbox.env, ...PAUSED_BEFORE_STATE() },
          stdout: "null",
          stderr: "null",
        }).spawn();
        await waitFor("DIR mounted", () => mountsBelow(sandbox.target).length > 0, 60_000);
        // Both at once, as a service's stop kills its whole cgroup: nobody undoes anything.
        const [server] = mountServersOf(sandbox.runtimeDir);
        mount.kill("SIGKILL");
        Deno.kill(server, "SIGKILL");
        await mount.status;
        await waitFor("the server to end", () => mountServersOf(sandbox.runtimeDir).length === 0);
        assert.ok(mountsBelow(sandbox.target).length > 0, "DIR stays mounted");
        assert.equal(runningKeepersOf(sandbox.runtimeDir).length, 1, "the keeper stays");

        // `list` says what is left and how to clear it; before, it showed nothing.
        const listed = await runCli(["list"], { env: sandbox.env });
        assert.match(listed.stderr, /killed with its server before it recorded.*umount/);
        const cleared = await runCli(
          how === "umount DIR" ? ["umount", sandbox.target] : ["umount", "--all"],
          { env: sandbox.env },
        );
        assert.equal(cleared.code, 0, cleared.stderr);
        assert.match(cleared.stderr, /cleared .*mnt: what a mount left there/);
        assert.deepEqual(mountsBelow(base), [], "nothing left mounted");
        await waitFor("the keeper to end", () => runningKeepersOf(sandbox.runtimeDir).length === 0);
        assert.deepEqual([...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)], []);
      } finally {
        try {
          mount?.kill("SIGKILL");
        } catch { /* ended */ }
        await mount?.status;
        await runCli(["umount", "--all", "--lazy"], { env: sandbox.env }).catch(() => {});
        killMountServersOf(sandbox.runtimeDir);
        await sandbox.cleanup();
      }
    },
  });
}

/** A runtime dir left as `mount` and its server leave it killed before recording (both gone). */
function plantOrphan(runtimeDir: string, id: string, target: string): string {
  const dir = `${runtimeDir}/mounts/${id}`;
  Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  // A pid no process has now, with a start time no process had.
  Deno.writeTextFileSync(
    `${dir}/pending.json`,
    JSON.stringify({ pid: 2 ** 22 - 3, startTicks: "1", target }),
  );
  return dir;
}

Deno.test({
  name: "an orphan's layer on a loop device (kernels before file-backed EROFS) is unmounted too",
  ignore: requires(root(), command("losetup")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const dir = plantOrphan(sandbox.runtimeDir, "0a0b0c0d", sandbox.target);
      Deno.copyFileSync(`${FIXTURES}/basic.erofs`, `${dir}/layer.erofs`);
      const mounted = await new Deno.Command("mount", {
        args: ["-t", "erofs", "-o", "ro,loop", `${dir}/layer.erofs`, sandbox.target],
      }).output();
      assert.equal(mounted.code, 0, new TextDecoder().decode(mounted.stderr));
      const cleared = await runCli(["umount", sandbox.target], { env: sandbox.env });
      // It was left mounted, said "cleared", and its notes were gone: nothing found it again.
      assert.equal(cleared.code, 0, cleared.stderr);
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual([...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)], []);
    } finally {
      await new Deno.Command("umount", { args: ["-l", sandbox.target], stderr: "null" }).output();
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "clearing an orphan leaves another instance's overlay at the same DIR alone",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    // The other instance's runtime dir has a ',' in it: its overlay names its lower dirs relative.
    const otherEnv = { ...sandbox.env, EROFS_OCI_RUNTIME_DIR: `${base}/run,b` };
    try {
      plantOrphan(sandbox.runtimeDir, "0e0f0a0b", sandbox.target);
      const { writeOciLayout } = await import("./_support/oci_layout_writer.ts");
      const blobs = [];
      for (const name of ["layer1", "layer2"]) {
        blobs.push({
          bytes: await Deno.readFile(`${FIXTURES}/${name}.erofs`),
          mediaType: "application/vnd.erofs",
        });
      }
      await writeOciLayout(`${base}/layout`, blobs);
      const mounted = await runCli(
        ["mount", `oci:${base}/layout:v1`, sandbox.target, "--backend", "fuse"],
        { env: otherEnv, timeoutMs: 60_000 },
      );
      assert.equal(mounted.code, 0, mounted.stderr);
      const cleared = await runCli(["umount", sandbox.target], { env: sandbox.env });
      assert.equal(cleared.code, 0, cleared.stderr);
      // The other instance's mount serves on (it was detached as the orphan's).
      assert.ok(mountsBelow(sandbox.target).length > 0, "the other mount stays");
      const listed = await runCli(["list", "--json"], { env: otherEnv });
      assert.equal(JSON.parse(listed.stdout)[0].mounted, true, listed.stdout);
      assert.equal((await runCli(["umount", sandbox.target], { env: otherEnv })).code, 0);
    } finally {
      await runCli(["umount", "--all", "--lazy"], { env: otherEnv }).catch(() => {});
      killMountServersOf(`${base}/run,b`);
      await sandbox.cleanup();
    }
  },
});
