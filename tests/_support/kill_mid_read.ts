/**
 * The crash-recovery scenario shared by the reattach tests (FUSE on the host, NBD in the VM):
 * a 48 MiB random file in an EROFS image behind a registry and a proxy that can hold reads; a
 * reader process (sha256sum) is started, the proxy holds its reads past 16 MiB, the mount's
 * server is killed with SIGKILL while a request is in flight, and `recover` brings it back.
 */
import assert from "node:assert/strict";
import { PEER_BIN } from "./requires.ts";
import { startRegistry, type TestRegistry } from "./registry.ts";
import { type FaultProxy, type FaultRule, isBlobGet, startFaultProxy } from "./fault_proxy.ts";
import { pidAlive, serverPids } from "./mounts.ts";

export const BIG_FILE_BYTES = 48 << 20;

/** `sizeBytes` of random bytes as DIR/tree/big.bin; the tree and the file's sha256 (hex). */
async function writeBigFile(
  dir: string,
  sizeBytes: number,
): Promise<{ tree: string; sha256: string }> {
  const tree = `${dir}/tree`;
  Deno.mkdirSync(tree);
  const data = new Uint8Array(sizeBytes);
  for (let at = 0; at < data.length; at += 65536) {
    crypto.getRandomValues(data.subarray(at, at + 65536));
  }
  Deno.writeFileSync(`${tree}/big.bin`, data);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return { tree, sha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("") };
}

/** An EROFS image (peer mkfs.erofs, uncompressed) holding one large random file. */
export async function buildBigImage(dir: string): Promise<{ image: string; sha256: string }> {
  const { tree, sha256 } = await writeBigFile(dir, BIG_FILE_BYTES);
  const image = `${dir}/big.erofs`;
  const out = await new Deno.Command(`${PEER_BIN}/mkfs.erofs`, {
    args: ["-T1700000000", "--all-root", image, tree],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return { image, sha256 };
}

/**
 * A tar.gz layer (gzip -1: about 1:1) holding one random big.bin of `sizeBytes`: the layer's
 * bytes and the file's sha256.
 */
export async function bigTarGz(
  dir: string,
  sizeBytes = BIG_FILE_BYTES,
): Promise<{ bytes: Uint8Array<ArrayBuffer>; sha: string }> {
  const { tree, sha256 } = await writeBigFile(dir, sizeBytes);
  const out = await new Deno.Command("sh", {
    args: [
      "-c",
      `tar -C '${tree}' --owner=0 --group=0 --numeric-owner -cf - big.bin | gzip -1 > '${dir}/big.tar.gz'`,
    ],
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return { bytes: Deno.readFileSync(`${dir}/big.tar.gz`), sha: sha256 };
}

/**
 * While `holding`, range GETs from HOLD_FROM_BYTES on wait HOLD_MS in the proxy, so the kill
 * lands mid-read with a request in flight however fast the machine is.
 */
const HOLD_FROM_BYTES = 16 << 20;
const HOLD_MS = 30_000;
export interface ReadGate {
  proxy: FaultProxy;
  holding: boolean;
}

/** `extraRules` come after the hold rule (which stays rule 0). */
export async function startReadGate(
  registryHost: string,
  extraRules: FaultRule[] = [],
): Promise<ReadGate> {
  const gate = { holding: false } as ReadGate;
  gate.proxy = await startFaultProxy(registryHost, [{
    name: "hold",
    match: (request) => {
      const start = Number(/^bytes=(\d+)-/.exec(request.headers.get("range") ?? "")?.[1] ?? 0);
      return gate.holding && isBlobGet(request) && start >= HOLD_FROM_BYTES;
    },
    fault: { kind: "delay", ms: HOLD_MS },
  }, ...extraRules]);
  return gate;
}

/** A registry, a read gate in front of it and the big image; everything removed afterwards. */
export async function withBigImage(
  body: (registry: TestRegistry, image: string, sha256: string, gate: ReadGate) => Promise<void>,
  extraRules: FaultRule[] = [],
) {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-crash-" });
  const registry = await startRegistry({ auth: "none" });
  const gate = await startReadGate(registry.host, extraRules);
  try {
    const big = await buildBigImage(work);
    await body(registry, big.image, big.sha256, gate);
  } finally {
    await gate.proxy.stop();
    await registry.stop();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

/** SIGKILL to the mount's server (as an OOM kill would); returns its pid once it is gone. */
export async function killServer(runtimeDir: string): Promise<number> {
  const [pid] = serverPids(runtimeDir);
  Deno.kill(pid, "SIGKILL");
  while (pidAlive(pid)) await new Promise((r) => setTimeout(r, 50));
  return pid;
}

export interface KillMidReadResult {
  killedPid: number;
  /** Date.now() just before the SIGKILL. */
  killedAtMs: number;
  /** From the kill to the reader's exit. */
  recoveredMs: number;
}

export interface KillMidReadOptions {
  readerTimeoutMs?: number;
  /**
   * Kill only once the reader has waited 0.5 s in this kernel function (/proc/PID/wchan),
   * e.g. `request_wait_answer`: a FUSE request of its own is then in the server's hands.
   */
  readerWaitsIn?: string;
}

function wchanOf(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/wchan`).trim();
  } catch {
    return "";
  }
}

/**
 * Starts sha256sum on `file`, kills the server once a read is held in the proxy, calls
 * `recover` (run reattach, or nothing when a watcher does it), and checks the reader exits 0
 * with `sha256`. The reader is killed if it is still running at the end (a failed test).
 */
export async function killMidRead(
  runtimeDir: string,
  gate: ReadGate,
  file: string,
  sha256: string,
  recover: (killedPid: number) => Promise<void>,
  { readerTimeoutMs = 120_000, readerWaitsIn }: KillMidReadOptions = {},
): Promise<KillMidReadResult> {
  await new Deno.Command("sh", { args: ["-c", "echo 3 > /proc/sys/vm/drop_caches"] }).output();
  const heldBefore = gate.proxy.hits(0);
  gate.holding = true;
  const reader = new Deno.Command("sha256sum", {
    args: [file],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let readerDone = false;
  const readerOutput = reader.output().finally(() => readerDone = true);
  try {
    const deadline = Date.now() + 120_000;
    while (gate.proxy.hits(0) === heldBefore && !readerDone && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(gate.proxy.hits(0) > heldBefore, "the reader never reached the held part");
    assert.ok(!readerDone, "the reader finished before the kill");
    if (readerWaitsIn) {
      // The held GET may be the server's readahead: wait until the reader itself waits for
      // the server (its request was read and is unanswered), so the kill loses a request.
      let since = 0;
      while (Date.now() < deadline && !readerDone) {
        const waiting = wchanOf(reader.pid) === readerWaitsIn;
        since = waiting ? since || Date.now() : 0;
        if (since && Date.now() - since > 500) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(wchanOf(reader.pid), readerWaitsIn, "the reader waits for the server");
    }
    const killedAt = Date.now();
    const killedPid = await killServer(runtimeDir);
    gate.holding = false;
    await recover(killedPid);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const result = await Promise.race([
      readerOutput,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`the reader did not finish in ${readerTimeoutMs} ms`)),
          readerTimeoutMs,
        );
      }),
    ]).finally(() => clearTimeout(timer));
    assert.equal(result.code, 0, new TextDecoder().decode(result.stderr));
    assert.equal(new TextDecoder().decode(result.stdout).split(" ")[0], sha256, "exact bytes");
    return { killedPid, killedAtMs: killedAt, recoveredMs: Date.now() - killedAt };
  } finally {
    if (!readerDone) {
      try {
        reader.kill("SIGKILL");
      } catch { /* gone */ }
      // A reader whose request a dead FUSE server had taken is unkillable until the connection
      // is aborted (the sandbox's umount does that): do not wait for it here.
      await Promise.race([
        readerOutput.catch(() => {}),
        new Promise((resolve) => setTimeout(resolve, 2_000)),
      ]);
    }
  }
}

/** The keeper recorded by the mount's server (lib/daemon/fuse_recovery.ts). */
export function keeperPids(runtimeDir: string): number[] {
  const pids: number[] = [];
  try {
    for (const entry of Deno.readDirSync(`${runtimeDir}/mounts`)) {
      try {
        const record = JSON.parse(
          Deno.readTextFileSync(`${runtimeDir}/mounts/${entry.name}/fuse-recovery.json`),
        );
        pids.push(record.keeper.pid);
      } catch { /* no record */ }
    }
  } catch { /* no runtime dir */ }
  return pids;
}

/** Last resort for a failed test: the keepers this test's mounts started. */
export function killKeepers(pids: number[]): void {
  for (const pid of pids) {
    if (!pidAlive(pid)) continue;
    try {
      Deno.kill(pid, "SIGKILL");
    } catch { /* gone */ }
  }
}
