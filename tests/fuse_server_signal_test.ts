/**
 * SIGTERM, SIGINT or SIGHUP to a background FUSE mount server while DIR is mounted: the FUSE
 * files are still in use, so the server leaves their connections to the keeper and its record
 * (as a crash would) instead of ending the keeper under DIR, which left DIR answering ENOTCONN
 * with nothing able to serve it again. `list` says "dead, awaiting reattach", `reattach DIR` (or
 * `reattach --watch`) serves it again, a file kept open reads right across it, and `umount`
 * leaves nothing. With DIR unmounted by another tool first, a signal still stops on purpose:
 * keeper ended, record gone.
 */
import assert from "node:assert/strict";
import { path, requires, root } from "./_support/requires.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import {
  expectedManifest,
  manifestOf,
  type MountSandbox,
  mountSandbox,
  mountsBelow,
  mountServersOf,
  pidAlive,
  runningKeepersOf,
} from "./_support/mounts.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { writeOciLayout } from "./_support/oci_layout_writer.ts";
import { startWatcher } from "./_support/watcher.ts";
import { keeperPids, killKeepers } from "./_support/kill_mid_read.ts";
import { waitFor } from "./_support/wait.ts";

/** Mounts the basic fixture from an OCI layout with the FUSE backend; its server's pid. */
async function fuseMount(sandbox: MountSandbox): Promise<number> {
  const base = sandbox.target.replace(/\/mnt$/, "");
  const fixture = await loadFixture("basic.erofs");
  await writeOciLayout(`${base}/layout`, [{ bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE }]);
  assertSuccess(
    await runCli(["mount", `oci:${base}/layout:v1`, sandbox.target, "--backend", "fuse"], {
      env: sandbox.env,
      timeoutMs: 60_000,
    }),
  );
  const listed = await runCli(["list", "--json"], { env: sandbox.env });
  assertSuccess(listed);
  return JSON.parse(listed.stdout)[0].serverPid;
}

async function signalAndWait(pid: number, signal: Deno.Signal): Promise<void> {
  Deno.kill(pid, signal);
  await waitFor(`server ${pid} to exit on ${signal}`, () => !pidAlive(pid), 20_000);
}

async function listed(sandbox: MountSandbox) {
  const json = await runCli(["list", "--json"], { env: sandbox.env });
  assertSuccess(json);
  const table = await runCli(["list"], { env: sandbox.env });
  assertSuccess(table);
  return { mount: JSON.parse(json.stdout)[0], table: table.stdout };
}

/** `umount DIR` leaves no mount, server or keeper. */
async function umountLeavesNothing(sandbox: MountSandbox, keepers: number[]): Promise<void> {
  assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
  assert.deepEqual(mountsBelow(sandbox.target), []);
  assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "no FUSE mount left");
  assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "no server left");
  await waitFor("the keeper to exit", () => keepers.every((pid) => !pidAlive(pid)), 10_000);
  assert.deepEqual(runningKeepersOf(sandbox.runtimeDir), []);
}

Deno.test({
  name:
    "fuse: SIGTERM to the server of a mounted DIR leaves it for reattach; an open file reads on",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    let keepers: number[] = [];
    let open: Deno.FsFile | undefined;
    try {
      const pid = await fuseMount(sandbox);
      keepers = keeperPids(sandbox.runtimeDir);
      assert.equal(keepers.length, 1, sandbox.serverLogs());
      open = await Deno.open(`${sandbox.target}/lorem.txt`);
      const head = new Uint8Array(100);
      assert.equal(await open.read(head), 100);

      await signalAndWait(pid, "SIGTERM");
      assert.ok(pidAlive(keepers[0]), `the keeper still runs: ${sandbox.serverLogs()}`);
      const dead = await listed(sandbox);
      assert.equal(dead.mount.state, "dead");
      assert.equal(dead.mount.crashRecovery, true, sandbox.serverLogs());
      assert.match(dead.table, /dead, awaiting reattach/);
      assert.match(
        sandbox.serverLogs(),
        /is still mounted and in use: its FUSE connections stay with the keeper/,
      );

      const reattached = await runCli(["reattach", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 60_000,
      });
      assertSuccess(reattached);
      assert.match(reattached.stdout, /reattached/, sandbox.serverLogs());
      // The file opened before the signal reads on, and the whole tree reads right.
      const whole = await Deno.readFile(`${sandbox.target}/lorem.txt`);
      const rest = new Uint8Array(whole.length);
      let got = 0;
      for (;;) {
        const n = await open.read(rest.subarray(got));
        if (n === null) break;
        got += n;
      }
      assert.equal(100 + got, whole.length);
      assert.deepEqual(rest.subarray(0, got), whole.subarray(100));
      open.close();
      open = undefined;
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      assert.equal((await listed(sandbox)).mount.state, "serving");

      await umountLeavesNothing(sandbox, keepers);
    } finally {
      open?.close();
      await sandbox.cleanup();
      killKeepers(keepers);
    }
  },
});

Deno.test({
  name: "fuse: SIGINT to the server of a mounted DIR: reattach --watch serves it again",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    let keepers: number[] = [];
    const watcher = startWatcher(sandbox.env);
    try {
      await watcher.waitFor(/watching/, 60_000);
      const pid = await fuseMount(sandbox);
      keepers = keeperPids(sandbox.runtimeDir);
      await signalAndWait(pid, "SIGINT");
      await watcher.waitFor(/: reattached: new server pid/, 60_000);
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      await watcher.stop();
      await umountLeavesNothing(sandbox, keepers);
    } finally {
      await watcher.stop();
      await sandbox.cleanup();
      killKeepers(keepers);
    }
  },
});

Deno.test({
  name: "fuse: SIGHUP to a server whose DIR was unmounted by another tool still stops on purpose",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    let keepers: number[] = [];
    try {
      const pid = await fuseMount(sandbox);
      keepers = keeperPids(sandbox.runtimeDir);
      const plain = await new Deno.Command("umount", { args: [sandbox.target] }).output();
      assert.equal(plain.code, 0, new TextDecoder().decode(plain.stderr));
      await signalAndWait(pid, "SIGHUP");
      await waitFor("the keeper to exit", () => !pidAlive(keepers[0]), 10_000);
      assert.doesNotMatch(sandbox.serverLogs(), /stay with the keeper|release of .* failed/);
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "the FUSE file released");
      const [id] = [...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)].map((e) => e.name);
      assert.throws(() => Deno.statSync(`${sandbox.runtimeDir}/mounts/${id}/fuse-recovery.json`));
      await umountLeavesNothing(sandbox, keepers);
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
    }
  },
});
