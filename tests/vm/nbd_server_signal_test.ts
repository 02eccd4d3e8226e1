/**
 * SIGTERM or SIGHUP to an NBD mount server (in the VM). While DIR is mounted, a signal leaves
 * the device as a crash (kill -9) does: connected with no server, its recovery file and the
 * record kept, so readers wait and `reattach DIR` serves it again; before, the server
 * disconnected the device under DIR and every read failed with EIO for good. `list` says "dead,
 * awaiting reattach", a reader started while no server runs finishes with the right bytes after
 * `reattach`, a file opened before reads on, and `umount` leaves nothing. With DIR unmounted by
 * another tool first, a signal still stops on purpose: device disconnected, recovery file gone.
 */
import assert from "node:assert/strict";
import { FIXTURES, REPO_ROOT } from "../_support/requires.ts";
import { TEST_PAUSE_ENV } from "../../lib/test_pause.ts";
import { readMountInfo } from "../../lib/sys/mountinfo.ts";
import { assertSuccess, describe, runCli } from "../_support/cli.ts";
import {
  expectedManifest,
  manifestOf,
  type MountSandbox,
  mountSandbox,
  mountsBelow,
  mountServersOf,
  pidAlive,
} from "../_support/mounts.ts";
import { NOT_IN_VM } from "../_support/vm.ts";
import { exists, waitFor } from "../_support/wait.ts";
import { startForegroundMount } from "../_support/output_stream.ts";

/** big-1m3.bin of basic.erofs (fixtures/expected/basic.txt). */
const BIG = { name: "big-1m3.bin", size: 1048579 };
const BIG_SHA256 = "c5c1ae9ba8a184cdeb822b182ee2054a404340ade9d67f91858b60197e9131f3";

/** Mounts basic.erofs over NBD; its server's pid and device index. */
async function nbdMount(sandbox: MountSandbox): Promise<{ pid: number; index: number }> {
  assertSuccess(
    await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "nbd"], {
      env: sandbox.env,
      timeoutMs: 180_000,
    }),
  );
  const mount = (await listed(sandbox)).mount;
  assert.equal(mount.devices.length, 1, JSON.stringify(mount));
  const index = Number(/^nbd(\d+)$/.exec(mount.devices[0])?.[1]);
  assert.ok(Number.isInteger(index), JSON.stringify(mount));
  return { pid: mount.serverPid, index };
}

async function listed(sandbox: MountSandbox) {
  const json = await runCli(["list", "--json"], { env: sandbox.env });
  assertSuccess(json);
  const table = await runCli(["list"], { env: sandbox.env });
  assertSuccess(table);
  return { mount: JSON.parse(json.stdout)[0], table: table.stdout };
}

/** The device's backend identifier (its recovery file's path); undefined once disconnected. */
function backendOf(index: number): string | undefined {
  try {
    return Deno.readTextFileSync(`/sys/block/nbd${index}/backend`).trim() || undefined;
  } catch {
    return undefined;
  }
}

async function signalAndWait(pid: number, signal: Deno.Signal): Promise<void> {
  Deno.kill(pid, signal);
  await waitFor(`server ${pid} to exit on ${signal}`, () => !pidAlive(pid), 60_000);
}

async function dropCaches(): Promise<void> {
  await new Deno.Command("sh", { args: ["-c", "echo 3 > /proc/sys/vm/drop_caches"] }).output();
}

function hex(bytes: ArrayBuffer): string {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** `umount DIR` leaves no mount, server, connected device or recovery file. */
async function umountLeavesNothing(
  sandbox: MountSandbox,
  index: number,
  recoveryFile: string,
): Promise<void> {
  assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
  assert.deepEqual(mountsBelow(sandbox.target), []);
  assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
  assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "no server left");
  assert.equal(backendOf(index), undefined, `nbd${index} is disconnected`);
  assert.ok(!exists(recoveryFile), `${recoveryFile} removed`);
}

Deno.test({
  name: "vm nbd: SIGTERM to the server of a mounted DIR leaves its device for reattach",
  ignore: NOT_IN_VM,
  async fn() {
    const sandbox = await mountSandbox();
    let open: Deno.FsFile | undefined;
    let reader: Deno.ChildProcess | undefined;
    try {
      const { pid, index } = await nbdMount(sandbox);
      const recoveryFile = backendOf(index);
      assert.ok(recoveryFile && exists(recoveryFile), `nbd${index} backend: ${recoveryFile}`);
      open = await Deno.open(`${sandbox.target}/${BIG.name}`);
      const head = new Uint8Array(4096);
      assert.equal(await open.read(head), head.length);

      await signalAndWait(pid, "SIGTERM");
      assert.equal(backendOf(index), recoveryFile, `nbd${index} stays connected`);
      assert.ok(exists(recoveryFile), "the recovery file is kept");
      const dead = await listed(sandbox);
      assert.equal(dead.mount.state, "dead");
      assert.match(dead.table, /dead, awaiting reattach/);
      assert.match(
        sandbox.serverLogs(),
        new RegExp(`is still mounted: its NBD device\\(s\\) nbd${index} stay connected`),
      );
      assert.doesNotMatch(sandbox.serverLogs(), /release of .* failed/);

      // A reader started while no server runs waits (it got EIO at once when the server
      // disconnected the device) and finishes with the right bytes after reattach.
      await dropCaches();
      reader = new Deno.Command("sha256sum", {
        args: [`${sandbox.target}/${BIG.name}`],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const reattached = await runCli(["reattach", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 180_000,
      });
      assertSuccess(reattached);
      assert.match(reattached.stdout, /reattached/, sandbox.serverLogs());
      const read = await reader.output();
      reader = undefined;
      const readOut = new TextDecoder().decode(read.stdout);
      assert.equal(read.code, 0, `sha256sum: ${new TextDecoder().decode(read.stderr)}`);
      assert.equal(readOut.split(" ")[0], BIG_SHA256);

      // The file opened before the signal reads on; the whole tree reads right.
      await dropCaches();
      const whole = new Uint8Array(BIG.size);
      whole.set(head);
      let got = head.length;
      for (;;) {
        const n = await open.read(whole.subarray(got));
        if (n === null || n === 0) break;
        got += n;
      }
      open.close();
      open = undefined;
      assert.equal(got, BIG.size);
      assert.equal(hex(await crypto.subtle.digest("SHA-256", whole)), BIG_SHA256);
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      const serving = await listed(sandbox);
      assert.equal(serving.mount.state, "serving", describe(reattached));
      assert.notEqual(serving.mount.serverPid, pid);

      await umountLeavesNothing(sandbox, index, recoveryFile);
    } finally {
      open?.close();
      if (reader) {
        try {
          reader.kill("SIGKILL");
        } catch { /* gone */ }
        await reader.output().catch(() => {});
      }
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "vm nbd: SIGHUP to a server whose DIR was unmounted by another tool still disconnects",
  ignore: NOT_IN_VM,
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const { pid, index } = await nbdMount(sandbox);
      const recoveryFile = backendOf(index);
      assert.ok(recoveryFile && exists(recoveryFile), `nbd${index} backend: ${recoveryFile}`);
      const plain = await new Deno.Command("umount", { args: [sandbox.target] }).output();
      assert.equal(plain.code, 0, new TextDecoder().decode(plain.stderr));
      await signalAndWait(pid, "SIGHUP");
      await waitFor(`nbd${index} to be disconnected`, () => backendOf(index) === undefined, 30_000);
      assert.ok(!exists(recoveryFile), "the recovery file is removed");
      assert.doesNotMatch(sandbox.serverLogs(), /stay connected/);
      await umountLeavesNothing(sandbox, index, recoveryFile);
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "vm nbd: mount --foreground stopped by SIGTERM to its process group leaves no device",
  ignore: NOT_IN_VM,
  async fn() {
    // What a service manager's stop does (KillMode=control-group): the CLI and its server both
    // get it. The server must not leave its device for a reattach: the CLI unmounts DIR and
    // stops it, and nothing may stay connected.
    const sandbox = await mountSandbox();
    const { child, stdout, running, cleanUp } = startForegroundMount(sandbox, "nbd");
    try {
      await stdout.wait(/^mounted /m, 180_000);
      const { mount } = await listed(sandbox);
      const index = Number(/^nbd(\d+)$/.exec(mount.devices[0])?.[1]);
      const recoveryFile = backendOf(index);
      assert.ok(recoveryFile, `nbd${index} backend`);
      Deno.kill(-child.pid, "SIGTERM");
      const [status, out, err] = await running;
      assert.equal(status.code, 0, `exit ${status.code}\n${out}\n${err}`);
      assert.deepEqual(mountsBelow(sandbox.target), [], "DIR is unmounted");
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "no server left");
      await waitFor(`nbd${index} to be disconnected`, () => backendOf(index) === undefined, 30_000);
      assert.ok(!exists(recoveryFile), `${recoveryFile} removed`);
    } finally {
      await cleanUp();
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "vm nbd: mount and its server killed together before recording: umount DIR clears it",
  ignore: NOT_IN_VM,
  async fn() {
    // What SIGKILL of a service's whole cgroup does mid-mount: DIR mounted on a connected
    // device, its recovery file written, and no record. Nothing cleared it before.
    const sandbox = await mountSandbox();
    const mount = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
      args: ["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "nbd"],
      env: { ...sandbox.env, [TEST_PAUSE_ENV]: "mount-before-state" },
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      await waitFor("DIR mounted", () => mountsBelow(sandbox.target).length > 0, 120_000);
      const [server] = mountServersOf(sandbox.runtimeDir);
      mount.kill("SIGKILL");
      Deno.kill(server, "SIGKILL");
      await mount.status;
      await waitFor("the server to end", () => !pidAlive(server), 30_000);
      const device = readMountInfo().findLast((m) => m.mountPoint === sandbox.target)!.source;
      const index = Number(/^\/dev\/nbd(\d+)$/.exec(device)?.[1]);
      const recoveryFile = backendOf(index);
      assert.ok(recoveryFile && exists(recoveryFile), `${device} backend: ${recoveryFile}`);

      const cleared = await runCli(["umount", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 120_000,
      });
      assertSuccess(cleared);
      assert.match(cleared.stderr, /cleared .*: what a mount left there/);
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
      await waitFor(`nbd${index} to be disconnected`, () => backendOf(index) === undefined, 30_000);
      assert.ok(!exists(recoveryFile), "the recovery file is removed");
      assert.deepEqual([...Deno.readDirSync(`${sandbox.runtimeDir}/mounts`)], []);
    } finally {
      try {
        mount.kill("SIGKILL");
      } catch { /* ended */ }
      await mount.status;
      await runCli(["umount", "--all", "--lazy"], { env: sandbox.env }).catch(() => {});
      await sandbox.cleanup();
    }
  },
});
