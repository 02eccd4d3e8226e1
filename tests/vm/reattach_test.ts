/**
 * Crash recovery in the VM: the server of an NBD mount is killed with SIGKILL in the middle of
 * a long sequential read; `erofs-oci reattach` brings the devices back and the reader finishes
 * with the exact bytes and no error — for a single layer and for a 3-layer overlay. Also the
 * recovery files' modes and life cycle, and bad input to reattach.
 */
import assert from "node:assert/strict";
import { FIXTURES } from "../_support/requires.ts";
import {
  assertCliError,
  assertSuccess,
  describe,
  runCli,
  startCli,
  stopCli,
} from "../_support/cli.ts";
import {
  type MountSandbox,
  mountSandbox,
  mountsBelow,
  mountServersOf,
  pidAlive,
} from "../_support/mounts.ts";
import { HoldPoint } from "../_support/hold.ts";
import { waitFor } from "../_support/wait.ts";
import { NOT_IN_VM } from "../_support/vm.ts";
import { startRegistry } from "../_support/registry.ts";
import { startFaultProxy } from "../_support/fault_proxy.ts";
import { killMidRead, killServer, type ReadGate, withBigImage } from "../_support/kill_mid_read.ts";

const RECOVERY_DIR = "/var/run/erofsmount/nbd";

function recoveryFiles(): string[] {
  try {
    return [...Deno.readDirSync(RECOVERY_DIR)].map((e) => e.name).filter((n) =>
      /^mountnbd_/.test(n) && !n.endsWith(".json")
    );
  } catch {
    return [];
  }
}

function sha256Reader(path: string) {
  // A separate process, as an application would be: it must neither fail nor see wrong bytes.
  return new Deno.Command("sha256sum", { args: [path], stdout: "piped", stderr: "piped" })
    .spawn();
}

/**
 * killMidRead with `reattach …reattachArg` as the recovery: the mount is listed dead before it,
 * serving (another server) after it, and a second reattach leaves the live server alone.
 */
async function killAndReattach(
  sandbox: { target: string; runtimeDir: string; env: Record<string, string> },
  gate: ReadGate,
  file: string,
  sha256: string,
  reattachArg: string[],
) {
  let started = 0;
  const { killedPid, killedAtMs, recoveredMs } = await killMidRead(
    sandbox.runtimeDir,
    gate,
    file,
    sha256,
    async () => {
      const listed = await runCli(["list", "--json"], { env: sandbox.env });
      assertSuccess(listed);
      assert.equal(JSON.parse(listed.stdout)[0].state, "dead", describe(listed));
      started = Date.now();
      const reattached = await runCli(["reattach", ...reattachArg], {
        env: sandbox.env,
        timeoutMs: 120_000,
      });
      assertSuccess(reattached);
      assert.match(reattached.stdout, /reattached/);
    },
    // TCG-emulated: the rest of the 48 MiB can take long after reattach; no tighter bound here.
    { readerTimeoutMs: 600_000 },
  );
  console.log(`reader finished ${killedAtMs + recoveredMs - started} ms after reattach started`);

  const after = JSON.parse((await runCli(["list", "--json"], { env: sandbox.env })).stdout)[0];
  assert.equal(after.state, "serving");
  assert.ok(after.reattachedAt, "list shows when it was reattached");
  assert.notEqual(after.serverPid, killedPid);

  // Twice in a row: the live server is left alone.
  const again = await runCli(["reattach", ...reattachArg], { env: sandbox.env });
  assertSuccess(again);
  assert.match(again.stdout, /alive/);
}

/** `erofs-oci mount SOURCE TARGET --backend nbd` in the sandbox, which must succeed. */
async function mountNbdOk(sandbox: MountSandbox, source: string, env = sandbox.env): Promise<void> {
  assertSuccess(
    await runCli(["mount", source, sandbox.target, "--backend", "nbd"], {
      env,
      timeoutMs: 120_000,
    }),
  );
}

Deno.test({
  name: "vm reattach: kill -9 mid-read of a single layer, reattach, reader gets exact bytes",
  ignore: NOT_IN_VM,
  async fn() {
    await withBigImage(async (registry, image, sha256, gate) => {
      assertSuccess(
        await runCli(["push", `${registry.host}/crash/big:v1`, image], { timeoutMs: 120_000 }),
      );
      const ref = `${gate.proxy.host}/crash/big:v1`;
      const sandbox = await mountSandbox();
      try {
        await mountNbdOk(sandbox, ref);
        const files = recoveryFiles();
        assert.equal(files.length, 1, "one recovery file per device");
        assert.equal(Deno.statSync(RECOVERY_DIR).mode! & 0o777, 0o700);
        assert.equal(Deno.statSync(`${RECOVERY_DIR}/${files[0]}`).mode! & 0o777, 0o600);
        const line = Deno.readTextFileSync(`${RECOVERY_DIR}/${files[0]}`);
        assert.match(
          line,
          /^OCI_NATIVE_BLOB \S+crash\/big:v1 linux\/amd64 sha256:[0-9a-f]{64} \n$/,
        );

        await killAndReattach(sandbox, gate, `${sandbox.target}/big.bin`, sha256, [sandbox.target]);

        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
        assert.deepEqual(recoveryFiles(), [], "clean umount removes the recovery file");
        assert.deepEqual(mountsBelow(sandbox.target), []);
      } finally {
        await sandbox.cleanup();
      }
    });
  },
});

Deno.test({
  name: "vm reattach: kill -9 of a 3-layer overlay server, reattach --all brings every layer back",
  ignore: NOT_IN_VM,
  async fn() {
    await withBigImage(async (registry, image, sha256, gate) => {
      const layers = [`${FIXTURES}/layer1.erofs`, image, `${FIXTURES}/layer3.erofs`];
      assertSuccess(
        await runCli(["push", `${registry.host}/crash/layers:v1`, ...layers], {
          timeoutMs: 120_000,
        }),
      );
      const ref = `${gate.proxy.host}/crash/layers:v1`;
      const sandbox = await mountSandbox();
      try {
        await mountNbdOk(sandbox, ref);
        assert.equal(recoveryFiles().length, 3);
        await killAndReattach(sandbox, gate, `${sandbox.target}/big.bin`, sha256, ["--all"]);
        // Files of the other layers read fine through the new server too.
        assert.ok(Deno.readTextFileSync(`${sandbox.target}/etc/config.txt`).length > 0);
        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
        assert.deepEqual(recoveryFiles(), []);
      } finally {
        await sandbox.cleanup();
      }
    });
  },
});

Deno.test({
  name: "vm reattach: bad input — free device, non-NBD device, corrupt recovery file",
  ignore: NOT_IN_VM,
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const env = sandbox.env;
      assertCliError(await runCli(["reattach", "/dev/nbd15"], { env }), 1, /not connected/);
      assertCliError(await runCli(["reattach", "/dev/null"], { env }), 1, /not an NBD device/);
      assertCliError(await runCli(["reattach"], { env }), 2);

      await mountNbdOk(sandbox, `${FIXTURES}/basic.erofs`);
      const [file] = recoveryFiles();
      await killServer(sandbox.runtimeDir);
      Deno.writeTextFileSync(`${RECOVERY_DIR}/${file}`, "LOCAL relative/garbage\n");
      const failed = await runCli(["reattach", sandbox.target], { env });
      assert.equal(failed.code, 1, describe(failed));
      assert.match(failed.stderr, /corrupt/);
      assert.doesNotMatch(failed.stderr, /^\s+at /m);

      // Repaired, the same device reattaches and the mount reads again.
      Deno.writeTextFileSync(`${RECOVERY_DIR}/${file}`, `LOCAL ${FIXTURES}/basic.erofs\n`);
      assertSuccess(await runCli(["reattach", sandbox.target], { env, timeoutMs: 120_000 }));
      assert.equal(Deno.readTextFileSync(`${sandbox.target}/exec.sh`).length > 0, true);
      assertSuccess(await runCli(["umount", sandbox.target], { env }));
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name:
    "vm reattach: registry down at reattach — server waits with backoff, readers finish once it is back",
  ignore: NOT_IN_VM,
  async fn() {
    const registry = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
    let registryDown = false;
    const proxy = await startFaultProxy(registry.host, [
      { name: "down", match: () => registryDown, fault: { kind: "status", status: 503 } },
    ]);
    const sandbox = await mountSandbox();
    try {
      // Without the disk cache: bytes read before the kill would be served from disk, and
      // this test is about a cold read that needs the registry while it is down.
      const env = { ...sandbox.env, EROFS_OCI_DISK_CACHE_BYTES: "0" };
      assertSuccess(
        await runCli(["push", `${registry.host}/down/basic:v1`, `${FIXTURES}/basic.erofs`], {
          timeoutMs: 120_000,
        }),
      );
      await mountNbdOk(sandbox, `${proxy.host}/down/basic:v1`, env);
      await killServer(sandbox.runtimeDir);
      registryDown = true;
      await new Deno.Command("sh", { args: ["-c", "echo 3 > /proc/sys/vm/drop_caches"] })
        .output();
      const reader = sha256Reader(`${sandbox.target}/big-1m3.bin`);

      // A reattach killed before it recorded its waiting server: that server ends as a crashed
      // one would. It went on unrecorded and attached once the registry was back, next to the
      // server of the reattach after it.
      {
        using hold = new HoldPoint("reattach-before-state", `${sandbox.runtimeDir}-hold`);
        const held = startCli(["reattach", sandbox.target], { ...env, ...hold.env });
        try {
          await hold.reached("reattach to start its waiting server", 120_000);
          const [unrecorded] = mountServersOf(sandbox.runtimeDir);
          assert.ok(unrecorded, "reattach's waiting server runs");
          held.child.kill("SIGKILL");
          await waitFor("the unrecorded server to end", () => !pidAlive(unrecorded), 30_000);
        } finally {
          await stopCli(held);
        }
      }

      const waiting = await runCli(["reattach", sandbox.target], { env, timeoutMs: 120_000 });
      assertSuccess(waiting);
      assert.match(waiting.stdout, /waiting/, describe(waiting));
      // The reader neither fails nor finishes while the registry is down.
      const early = await Promise.race([
        reader.status.then(() => "finished"),
        new Promise((r) => setTimeout(() => r("still waiting"), 5000)),
      ]);
      if (early !== "still waiting") {
        // Say how it ended: an I/O error is a bug, a success means the read was not cold.
        const ended = await reader.output();
        assert.fail(
          `the reader finished while the registry was down: exit ${ended.code}, ` +
            `stderr ${JSON.stringify(new TextDecoder().decode(ended.stderr).trim())}, ` +
            `${proxy.requests.length} registry requests\n${sandbox.serverLogs()}`,
        );
      }
      const refusedWhileDown = proxy.requests.filter((r) => r.fault === "down").length;
      assert.ok(refusedWhileDown >= 2, "the server kept asking (with backoff)");
      assert.ok(refusedWhileDown < 60, `no busy loop: ${refusedWhileDown} requests in 5 s`);

      registryDown = false;
      const result = await reader.output();
      assert.equal(result.code, 0, new TextDecoder().decode(result.stderr));
      const expected = Deno.readTextFileSync(`${FIXTURES}/expected/basic.txt`)
        .split("\n").find((l) => l.startsWith("big-1m3.bin\t"))!.split("\t")[7];
      assert.equal(new TextDecoder().decode(result.stdout).split(" ")[0], expected);
      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
    } finally {
      registryDown = false;
      await sandbox.cleanup();
      await proxy.stop();
      await registry.stop();
    }
  },
});

Deno.test({
  name: "vm reattach: umount of a mount whose server was killed still releases everything",
  ignore: NOT_IN_VM,
  async fn() {
    const sandbox = await mountSandbox();
    try {
      const env = sandbox.env;
      await mountNbdOk(sandbox, `${FIXTURES}/basic.erofs`);
      const listed = JSON.parse((await runCli(["list", "--json"], { env })).stdout);
      const device: string = listed[0].devices[0];
      await killServer(sandbox.runtimeDir);

      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual(recoveryFiles(), [], "recovery file removed");
      assert.equal(Deno.readTextFileSync(`/sys/block/${device}/size`).trim(), "0");
    } finally {
      await sandbox.cleanup();
    }
  },
});
