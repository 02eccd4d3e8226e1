/**
 * Crash recovery in the VM: the server of an NBD mount is killed with SIGKILL in the middle of
 * a long sequential read; `erofs-oci reattach` brings the devices back and the reader finishes
 * with the exact bytes and no error — for a single layer and for a 3-layer overlay. Also the
 * recovery files' modes and life cycle, and bad input to reattach.
 */
import assert from "node:assert/strict";
import { FIXTURES, PEER_BIN } from "../_support/requires.ts";
import { startRegistry, type TestRegistry } from "../_support/registry.ts";
import { assertCliError, assertSuccess, describe, runCli } from "../_support/cli.ts";
import { mountSandbox, mountsBelow, pidAlive, serverPids } from "../_support/mounts.ts";
import { NOT_IN_VM } from "../_support/vm.ts";
import { type FaultProxy, isBlobGet, startFaultProxy } from "../_support/fault_proxy.ts";

const RECOVERY_DIR = "/var/run/erofsmount/nbd";
const BIG_FILE_BYTES = 48 << 20;

/** An EROFS image (peer mkfs.erofs, uncompressed) holding one large random file. */
async function buildBigImage(dir: string): Promise<{ image: string; sha256: string }> {
  const tree = `${dir}/tree`;
  Deno.mkdirSync(tree);
  const data = new Uint8Array(BIG_FILE_BYTES);
  for (let at = 0; at < data.length; at += 65536) {
    crypto.getRandomValues(data.subarray(at, at + 65536));
  }
  Deno.writeFileSync(`${tree}/big.bin`, data);
  const image = `${dir}/big.erofs`;
  const out = await new Deno.Command(`${PEER_BIN}/mkfs.erofs`, {
    args: ["-T1700000000", "--all-root", image, tree],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return { image, sha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("") };
}

function recoveryFiles(): string[] {
  try {
    return [...Deno.readDirSync(RECOVERY_DIR)].map((e) => e.name).filter((n) =>
      /^mountnbd_/.test(n) && !n.endsWith(".json")
    );
  } catch {
    return [];
  }
}

/** SIGKILL to the mount's server (as an OOM kill would); returns its pid once it is gone. */
async function killServer(runtimeDir: string): Promise<number> {
  const [pid] = serverPids(runtimeDir);
  Deno.kill(pid, "SIGKILL");
  while (pidAlive(pid)) await new Promise((r) => setTimeout(r, 50));
  return pid;
}

function sha256Reader(path: string) {
  // A separate process, as an application would be: it must neither fail nor see wrong bytes.
  return new Deno.Command("sha256sum", { args: [path], stdout: "piped", stderr: "piped" })
    .spawn();
}

/**
 * Holds the read past HOLD_FROM_BYTES of the big file: while `holding`, range GETs from there on
 * wait HOLD_MS in the proxy, so the kill lands mid-read however fast the machine is (a fixed
 * sleep before the kill let a fast reader finish first, and the test then proved nothing).
 */
const HOLD_FROM_BYTES = 16 << 20;
const HOLD_MS = 30_000;
interface ReadGate {
  proxy: FaultProxy;
  holding: boolean;
}

async function startReadGate(registryHost: string): Promise<ReadGate> {
  const gate = { holding: false } as ReadGate;
  gate.proxy = await startFaultProxy(registryHost, [{
    name: "hold",
    match: (request) => {
      const start = Number(/^bytes=(\d+)-/.exec(request.headers.get("range") ?? "")?.[1] ?? 0);
      return gate.holding && isBlobGet(request) && start >= HOLD_FROM_BYTES;
    },
    fault: { kind: "delay", ms: HOLD_MS },
  }]);
  return gate;
}

async function killMidRead(
  sandbox: { target: string; runtimeDir: string; env: Record<string, string> },
  gate: ReadGate,
  file: string,
  sha256: string,
  reattachArg: string[],
) {
  await new Deno.Command("sh", { args: ["-c", "echo 3 > /proc/sys/vm/drop_caches"] }).output();
  gate.holding = true;
  const reader = sha256Reader(file);
  let readerDone = false;
  const readerOutput = reader.output().finally(() => readerDone = true);
  const deadline = Date.now() + 120_000;
  while (gate.proxy.hits(0) === 0 && !readerDone && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(gate.proxy.hits(0) > 0, "the reader never reached the held part of the file");
  assert.ok(!readerDone, "the reader finished before the kill");
  const pid = await killServer(sandbox.runtimeDir);
  gate.holding = false;

  const listed = await runCli(["list", "--json"], { env: sandbox.env });
  assertSuccess(listed);
  assert.equal(JSON.parse(listed.stdout)[0].state, "dead", describe(listed));

  const started = Date.now();
  const reattached = await runCli(["reattach", ...reattachArg], {
    env: sandbox.env,
    timeoutMs: 120_000,
  });
  assertSuccess(reattached);
  assert.match(reattached.stdout, /reattached/);
  const result = await readerOutput;
  const waitedMs = Date.now() - started;
  assert.equal(result.code, 0, new TextDecoder().decode(result.stderr));
  assert.equal(new TextDecoder().decode(result.stdout).split(" ")[0], sha256);
  console.log(`reader finished ${waitedMs} ms after reattach started`);

  const after = JSON.parse((await runCli(["list", "--json"], { env: sandbox.env })).stdout)[0];
  assert.equal(after.state, "serving");
  assert.ok(after.reattachedAt, "list shows when it was reattached");
  assert.notEqual(after.serverPid, pid);

  // Twice in a row: the live server is left alone.
  const again = await runCli(["reattach", ...reattachArg], { env: sandbox.env });
  assertSuccess(again);
  assert.match(again.stdout, /alive/);
}

async function withBigImage(
  body: (registry: TestRegistry, image: string, sha256: string, gate: ReadGate) => Promise<void>,
) {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-reattach-" });
  const registry = await startRegistry({ auth: "none" });
  const gate = await startReadGate(registry.host);
  try {
    const big = await buildBigImage(work);
    await body(registry, big.image, big.sha256, gate);
  } finally {
    await gate.proxy.stop();
    await registry.stop();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
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
        assertSuccess(
          await runCli(["mount", ref, sandbox.target, "--backend", "nbd"], {
            env: sandbox.env,
            timeoutMs: 120_000,
          }),
        );
        const files = recoveryFiles();
        assert.equal(files.length, 1, "one recovery file per device");
        assert.equal(Deno.statSync(RECOVERY_DIR).mode! & 0o777, 0o700);
        assert.equal(Deno.statSync(`${RECOVERY_DIR}/${files[0]}`).mode! & 0o777, 0o600);
        const line = Deno.readTextFileSync(`${RECOVERY_DIR}/${files[0]}`);
        assert.match(
          line,
          /^OCI_NATIVE_BLOB \S+crash\/big:v1 linux\/amd64 sha256:[0-9a-f]{64} \n$/,
        );

        await killMidRead(sandbox, gate, `${sandbox.target}/big.bin`, sha256, [sandbox.target]);

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
        assertSuccess(
          await runCli(["mount", ref, sandbox.target, "--backend", "nbd"], {
            env: sandbox.env,
            timeoutMs: 120_000,
          }),
        );
        assert.equal(recoveryFiles().length, 3);
        await killMidRead(sandbox, gate, `${sandbox.target}/big.bin`, sha256, ["--all"]);
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

      assertSuccess(
        await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "nbd"], {
          env,
          timeoutMs: 120_000,
        }),
      );
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
      assertSuccess(
        await runCli(["mount", `${proxy.host}/down/basic:v1`, sandbox.target, "--backend", "nbd"], {
          env,
          timeoutMs: 120_000,
        }),
      );
      await killServer(sandbox.runtimeDir);
      registryDown = true;
      await new Deno.Command("sh", { args: ["-c", "echo 3 > /proc/sys/vm/drop_caches"] })
        .output();
      const reader = sha256Reader(`${sandbox.target}/big-1m3.bin`);

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
      assertSuccess(
        await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target, "--backend", "nbd"], {
          env,
          timeoutMs: 120_000,
        }),
      );
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
