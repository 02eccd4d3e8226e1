/**
 * Driving erofs-utils 1.9.3's `mount.erofs` against NBD devices in the VM (tests/vm/interop*):
 * running it (its daemon keeps inherited stdout/stderr open, so its output goes to a file),
 * finding a mount's device, its server process and recovery file, killing and disconnecting,
 * and the guest-only edits (/etc/hosts, the CA bundle) an HTTPS registry by name needs: the
 * peer's `--reattach` speaks HTTPS only (it does not record `oci.insecure`).
 */
import assert from "node:assert/strict";
import { PEER_BIN } from "./requires.ts";
import { mountsBelow, pidAlive } from "./mounts.ts";
import type { TestRegistry } from "./registry.ts";

export const PEER = `${PEER_BIN}/mount.erofs`;
/** mount.erofs uses netlink NBD (and writes recovery files) only when this directory exists. */
export const RECOVERY_DIR = "/var/run/erofsmount/nbd";

export async function fileSha256(path: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", Deno.readFileSync(path)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Runs mount.erofs with its output in `logPath` (its daemon keeps the descriptors) and waits
 * for the command itself, which returns once its server (a forked child) serves.
 */
export async function runPeer(
  args: string[],
  logPath: string,
  timeoutMs = 120_000,
): Promise<{ code: number; log: string; pid: number }> {
  // A hung mount.erofs gets SIGTERM at the deadline (the signal option).
  const child = new Deno.Command("sh", {
    args: ["-c", 'exec "$0" "$@" >>"$LOG" 2>&1', PEER, ...args],
    env: { LOG: logPath },
    signal: AbortSignal.timeout(timeoutMs),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const status = await child.status;
  let log = "";
  try {
    log = Deno.readTextFileSync(logPath);
  } catch { /* nothing written */ }
  return { code: status.code, log, pid: child.pid };
}

/** nbd index of the block device mounted at `dir` (mountinfo: field 5 mount point, source). */
export function nbdIndexAt(dir: string): number {
  for (const line of Deno.readTextFileSync("/proc/self/mountinfo").split("\n")) {
    const fields = line.split(" ");
    if (fields[4] !== dir) continue;
    const source = fields[fields.indexOf("-") + 2];
    const m = /^\/dev\/nbd(\d+)$/.exec(source);
    assert.ok(m, `${dir} is mounted from ${source}, not an NBD device`);
    return Number(m[1]);
  }
  throw new Error(`${dir} is not mounted`);
}

/** /sys/block/nbdN/NAME (e.g. `pid`, `backend`: the recovery file), undefined when absent. */
export function nbdSysfs(index: number, name: string): string | undefined {
  try {
    return Deno.readTextFileSync(`/sys/block/nbd${index}/${name}`).trim();
  } catch {
    return undefined;
  }
}

/** The process serving nbdN: /sys/block/nbdN/pid holds a thread id; its Tgid is the process. */
export function nbdServerProcess(index: number): number {
  const tid = nbdSysfs(index, "pid");
  assert.ok(tid, `nbd${index} has no server task`);
  const status = Deno.readTextFileSync(`/proc/${tid}/status`);
  return Number(/^Tgid:\s+(\d+)$/m.exec(status)![1]);
}

/** Processes running exactly this command line (the peer's daemon after it forked). */
export function processesRunning(argv: string[]): number[] {
  const wanted = argv.join("\0") + "\0";
  const pids: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      if (Deno.readTextFileSync(`/proc/${entry.name}/cmdline`) === wanted) {
        pids.push(Number(entry.name));
      }
    } catch { /* exited */ }
  }
  return pids;
}

/** SIGKILL to `pid`, then waits (10 s at most) until it is gone. */
export async function killAndWait(pid: number): Promise<void> {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch { /* gone */ }
  const deadline = Date.now() + 10_000;
  while (pidAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.ok(!pidAlive(pid), `pid ${pid} survived SIGKILL`);
}

/** Disconnects nbdN if it is still connected (netlink, through the peer) — clean-up only. */
export async function disconnectIfConnected(index: number, logPath: string): Promise<void> {
  if (nbdSysfs(index, "pid") === undefined && !nbdSysfs(index, "backend")) return;
  await runPeer(["--disconnect", `/dev/nbd${index}`], logPath, 30_000);
}

/**
 * Last-resort clean-up of an NBD mount at `dir` (a failed test): lazy unmounts of everything
 * at or below it, nbdN disconnected when still connected, its recovery file and erofs-oci's
 * companion removed. Kill the device's server (by pid) first.
 */
export async function releaseNbdMount(
  dir: string,
  index: number | undefined,
  recoveryFile: string | undefined,
  logPath: string,
): Promise<void> {
  for (const point of mountsBelow(dir).reverse()) {
    await new Deno.Command("umount", { args: ["-l", point], stderr: "null" }).output();
  }
  if (index !== undefined) await disconnectIfConnected(index, logPath);
  if (recoveryFile) removeQuietly(recoveryFile, `${recoveryFile}.erofs-oci.json`);
}

/** Appends to a guest file (RAM overlay) and returns the undo. */
export function appendGuestOnly(path: string, text: string): () => void {
  const before = Deno.readTextFileSync(path);
  Deno.writeTextFileSync(path, before + (before.endsWith("\n") ? "" : "\n") + text);
  return () => Deno.writeTextFileSync(path, before);
}

/**
 * Makes the TLS `registry` reachable as `name` in the guest: an /etc/hosts line and its CA in
 * the system bundle (the peer's libcurl); a name that does not look like loopback also makes
 * erofs-oci speak HTTPS (it trusts DENO_CERT). Returns the registry's reference prefix
 * (`name:port`) and the undo.
 */
export function trustRegistryAs(
  registry: TestRegistry,
  name: string,
): { host: string; undo: () => void } {
  const undo = [appendGuestOnly("/etc/hosts", `127.0.0.1 ${name}\n`)];
  try {
    undo.push(
      appendGuestOnly(
        "/etc/ssl/certs/ca-certificates.crt",
        Deno.readTextFileSync(registry.certPath!),
      ),
    );
  } catch (error) {
    undo[0]();
    throw error;
  }
  return {
    host: `${name}:${registry.host.split(":")[1]}`,
    undo: () => {
      for (const restore of undo.reverse()) restore();
    },
  };
}

export function removeQuietly(...paths: string[]): void {
  for (const p of paths) {
    try {
      Deno.removeSync(p, { recursive: true });
    } catch { /* gone */ }
  }
}

/** Prints how long each step took (the VM is slow and shared: see where the time goes). */
export function stepTimer(): (name: string) => void {
  let last = Date.now();
  return (name) => {
    const now = Date.now();
    console.log(`step ${name}: ${now - last} ms`);
    last = now;
  };
}
