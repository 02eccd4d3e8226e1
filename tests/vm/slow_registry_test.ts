/**
 * A registry slower than the kernel's NBD request timeout: with several connections the kernel
 * drops a socket whose reply is late and requeues its requests; the server must replace the
 * socket (RECONFIGURE) so readers never see an error and every byte is right.
 *
 * Deterministic by construction: only range GETs far into a large file's data are slowed, and
 * the test checks that none of them happened before its own read. The metadata prefetch at
 * mount (and the first chunks the mount reads) used to warm the cache of a small fixture, so
 * the slow reply the test waited for sometimes never came.
 */
import assert from "node:assert/strict";
import { PEER_BIN } from "../_support/requires.ts";
import { startRegistry } from "../_support/registry.ts";
import { isBlobGet, type ProxiedRequestInfo, startFaultProxy } from "../_support/fault_proxy.ts";
import { assertSuccess, describe, runCli } from "../_support/cli.ts";
import { mountSandbox, pidAlive } from "../_support/mounts.ts";
import { waitFor } from "../_support/wait.ts";
import { dropCaches, NOT_IN_VM, runChecked } from "../_support/vm.ts";

const MIB = 1024 * 1024;
const BIG_FILE_BYTES = 24 * MIB;
/** Range GETs starting here or later are slowed: far past the image's metadata. */
const SLOW_FROM = 8 * MIB;
const READ_AT = 12 * MIB;
const READ_BYTES = MIB;
/**
 * The kernel checks request timeouts on whole-second ticks, so a 2 s timeout fires 2-3 s after
 * the request; a 5 s reply leaves 2 s of margin on a loaded TCG guest.
 */
const NBD_TIMEOUT_S = 2;
const SLOW_REPLY_MS = 5000;

function rangeStart(request: ProxiedRequestInfo): number | undefined {
  const match = /^bytes=(\d+)-/.exec(request.headers.get("range") ?? "");
  return match ? Number(match[1]) : undefined;
}

/** Incompressible, reproducible bytes (xorshift32), so a wrong offset cannot match. */
function patternBytes(length: number): Uint8Array {
  const out = new Uint8Array(length);
  const words = new Uint32Array(out.buffer);
  let x = 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return out;
}

async function readAt(path: string, offset: number, length: number): Promise<Uint8Array> {
  using file = await Deno.open(path);
  await file.seek(offset, Deno.SeekMode.Start);
  const out = new Uint8Array(length);
  for (let done = 0; done < length;) {
    const n = await file.read(out.subarray(done));
    if (n === null) throw new Error(`${path}: end of file at ${offset + done}`);
    done += n;
  }
  return out;
}

Deno.test({
  name: "vm slow registry: replies later than the NBD timeout cost a reconnect, not an error",
  ignore: NOT_IN_VM,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-slow-" });
    const registry = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
    const proxy = await startFaultProxy(registry.host, [{
      name: "slow",
      match: (request) => isBlobGet(request) && (rangeStart(request) ?? 0) >= SLOW_FROM,
      fault: { kind: "delay", ms: SLOW_REPLY_MS },
    }]);
    const sandbox = await mountSandbox();
    try {
      const big = patternBytes(BIG_FILE_BYTES);
      await Deno.mkdir(`${work}/tree`);
      await Deno.writeFile(`${work}/tree/big`, big);
      await Deno.writeTextFile(`${work}/tree/small.txt`, "small\n");
      await runChecked(`${PEER_BIN}/mkfs.erofs`, [`${work}/image.erofs`, `${work}/tree`]);
      assertSuccess(
        await runCli(["push", `${registry.host}/slow/big:v1`, `${work}/image.erofs`], {
          timeoutMs: 120_000,
        }),
      );

      const env = { ...sandbox.env, EROFS_OCI_NBD_TIMEOUT_S: String(NBD_TIMEOUT_S) };
      const mounted = await runCli(
        ["mount", `${proxy.host}/slow/big:v1`, sandbox.target, "--backend", "nbd"],
        { env, timeoutMs: 180_000 },
      );
      assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
      assert.equal(
        proxy.hits(0),
        0,
        `the mount already fetched past ${SLOW_FROM} bytes: the read below would not be the first`,
      );
      await dropCaches();

      const read = await readAt(`${sandbox.target}/big`, READ_AT, READ_BYTES);
      assert.ok(proxy.hits(0) > 0, "the read was served without a slow range GET");
      assert.deepEqual(read, big.subarray(READ_AT, READ_AT + READ_BYTES));
      assert.equal(await Deno.readTextFile(`${sandbox.target}/small.txt`), "small\n");
      // The kernel requeues the timed-out request on another connection, so the read can end
      // before the server has logged replacing the dropped one: wait for that line.
      let log = sandbox.serverLogs();
      for (let waitedMs = 0; waitedMs < 60_000 && !/replaced a connection/.test(log);) {
        await new Promise((r) => setTimeout(r, 500));
        waitedMs += 500;
        log = sandbox.serverLogs();
      }
      assert.match(log, /replaced a connection/, `no socket was dropped and replaced:\n${log}`);

      // A signal while DIR is mounted leaves the device for reattach: the server closes every
      // socket, the replacement too (left open, it kept the server from ever ending).
      const listed = await runCli(["list", "--json"], { env });
      assertSuccess(listed);
      const pid: number = JSON.parse(listed.stdout)[0].serverPid;
      Deno.kill(pid, "SIGTERM");
      await waitFor(
        `server ${pid} to end on SIGTERM after a replaced connection`,
        () => !pidAlive(pid),
        60_000,
      );
      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
    } finally {
      await sandbox.cleanup();
      await proxy.stop();
      await registry.stop();
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
