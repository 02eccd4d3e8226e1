/** The detached mount server as a process: starting it until it is ready, stopping it. */
import { MountError, UserError } from "../errors.ts";
import { type ServerChild, spawnServerChild, takeSpawnedAhead } from "./server_spawn.ts";
import type { SpawnedProcess } from "../../ffi/spawn.ts";
import type { ReadyMessage } from "./mount_server.ts";
import { controlRequest } from "./control.ts";
import { mark } from "../timing.ts";
import { encodeHandedMetadata, type HandedMetadata } from "./handed_metadata.ts";
import { controlSocketPath, keepFailedServerLog } from "../state/runtime_dirs.ts";
import {
  killServer,
  processStartTicks,
  serverAlive,
  type ServerProcess,
} from "../state/server_liveness.ts";
import type { MountSpec } from "../state/mount_spec.ts";
import { after, sleep, type Timer } from "../timers.ts";

/** How long `mount` waits for the server to attach every layer. */
const READY_TIMEOUT_MS = 120_000;

/**
 * How long an interrupted `mount` still waits for the ready line: a ready server stops itself
 * cleanly (its exports released); one that is not ready by then is killed, as on the timeout.
 */
const INTERRUPT_GRACE_MS = 5_000;

/**
 * What the server reads on stdin: the spec, and this program's settings (EROFS_OCI_*) as they
 * are when the spec is sent — the server was spawned before resolution, which sets some of
 * them (the trace prefetch file), so its inherited environment may be older.
 */
export type HandedSpec = MountSpec & { serverEnv?: Record<string, string> };

function ourSettings(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([name]) => name.startsWith("EROFS_OCI_")),
  );
}

/** Makes this process's EROFS_OCI_* settings those handed over with the spec. */
export function takeHandedSettings(handed: HandedSpec): MountSpec {
  const { serverEnv, ...spec } = handed;
  if (serverEnv) {
    for (const name of Object.keys(Deno.env.toObject())) {
      if (name.startsWith("EROFS_OCI_") && !(name in serverEnv)) Deno.env.delete(name);
    }
    for (const [name, value] of Object.entries(serverEnv)) Deno.env.set(name, value);
  }
  return spec;
}

/** A server that reported ready; `startTicks` identifies the process beyond its pid. */
export type ReadyServer = Extract<ReadyMessage, { ok: true }> & { startTicks?: string };

/**
 * Starts the detached server for `spec` and waits until it reports its exports. Record
 * `startTicks` with the pid (MountState.serverStart) so a reused pid is never taken for it.
 */
export async function startServer(
  spec: MountSpec,
  foreground: boolean,
): Promise<ReadyServer> {
  return await spawnServer(foreground).start(spec);
}

/** A server process started before its spec is known; it waits for the spec on stdin. */
export interface SpawnedServer {
  /**
   * Sends the spec and waits until the server reports its exports (once). `metadata`, sent
   * after the spec when it settles, is each layer's listed metadata fetched meanwhile. Once
   * `signal` aborts, the wait lasts INTERRUPT_GRACE_MS more; a server not ready by then is
   * killed and the start rejects with the signal's reason.
   */
  start(
    spec: MountSpec,
    metadata?: Promise<HandedMetadata>,
    signal?: AbortSignal,
  ): Promise<ReadyServer>;
  /** Ends a server that was never given a spec (e.g. resolving the image failed). */
  discard(): Promise<void>;
}

/**
 * Starts the server process now and hands it the spec later: `mount` overlaps the start-up
 * of this second Deno (runtime, modules: ~0.1 s of CPU) with resolving the image.
 */
export function spawnServer(foreground: boolean, backend?: "nbd" | "fuse"): SpawnedServer {
  return spawnedServer(spawnServerChild(foreground, backend));
}

function spawnedServer(spawned: Promise<ServerChild>): SpawnedServer {
  let started = false;
  spawned.catch(() => {}); // reported by start(); nothing to discard
  return {
    start: async (spec, metadata, signal) => {
      if (started) throw new Error("the mount server was started already");
      started = true;
      const { child, foreground } = await spawned;
      return handOver(child, foreground, spec, metadata, signal);
    },
    discard: async () => {
      if (started) return;
      started = true;
      const child = await spawned.then((s) => s.child, () => undefined);
      if (!child) return;
      killChild(child);
      child.stdin?.close();
      child.stdout?.close();
      await child.status();
    },
  };
}

/** SIGKILL to our child (not yet waited for: its pid cannot have been reused). */
function killChild(child: SpawnedProcess): void {
  try {
    Deno.kill(child.pid, "SIGKILL");
  } catch { /* gone */ }
}

/**
 * The server spawned ahead (server_spawn.ts), if it was spawned for this `foreground` and
 * backend (else it is discarded: the command line meant something else than the early look
 * at it guessed).
 */
export async function takeServerSpawnedAhead(
  foreground: boolean,
  backend?: "nbd" | "fuse",
): Promise<SpawnedServer | undefined> {
  const ahead = takeSpawnedAhead();
  if (!ahead) return undefined;
  // Not waiting for the spawn to settle: the server is needed only once the spec is known.
  const server = spawnedServer(ahead.spawned);
  if (ahead.foreground === foreground && ahead.backend === backend) return server;
  await server.discard();
  return undefined;
}

/** Ends a server spawned ahead that no `mount` took (a usage error, a refused target…). */
export async function discardServerSpawnedAhead(): Promise<void> {
  const ahead = takeSpawnedAhead();
  if (ahead) await spawnedServer(ahead.spawned).discard();
}

/** How long a ready server's metadata hand-over may still take before it is given up. */
const HANDED_METADATA_AFTER_READY_MS = 1_000;

async function handOver(
  child: SpawnedProcess,
  foreground: boolean,
  spec: MountSpec,
  metadata?: Promise<HandedMetadata>,
  signal?: AbortSignal,
): Promise<ReadyServer> {
  const stdin = child.stdin!, stdout = child.stdout!;
  const handed: HandedSpec = { ...spec, serverEnv: ourSettings() };
  let closed = false;
  const closeStdin = () => {
    if (!closed) stdin.close();
    closed = true;
  };
  let writingMetadata = false;
  const sent = (async () => {
    try {
      // One line (JSON has no raw newline): the server starts on it while the rest comes.
      await stdin.write(new TextEncoder().encode(JSON.stringify(handed) + "\n"));
      mark("cli: spec sent");
      const fetched = await metadata?.catch(() => undefined);
      if (fetched?.some(Boolean) && !closed) {
        writingMetadata = true;
        for (const part of encodeHandedMetadata(fetched)) await stdin.write(part);
        mark("cli: metadata handed");
      }
    } finally {
      closeStdin();
    }
  })().catch(() => {}); // a server that is gone is reported by the ready line below

  let text = "";
  let timer: Timer | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = after(
      READY_TIMEOUT_MS,
      () =>
        reject(
          new MountError(
            `the mount server did not get ready in ${READY_TIMEOUT_MS / 1000} s`,
            seeServerLog(spec, foreground),
          ),
        ),
    );
  });
  let graceTimer: Timer | undefined;
  let onAbort: (() => void) | undefined;
  const interrupted = new Promise<never>((_, reject) => {
    onAbort = () => graceTimer = after(INTERRUPT_GRACE_MS, () => reject(signal!.reason));
    if (signal?.aborted) onAbort();
    else signal?.addEventListener("abort", onAbort, { once: true });
  });
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(4096);
  try {
    while (!text.includes("\n")) {
      const n = await Promise.race([stdout.read(buffer), timeout, interrupted]);
      if (n === null) break;
      text += decoder.decode(buffer.subarray(0, n), { stream: true });
    }
  } catch (error) {
    killChild(child);
    // Dead before the caller's undo looks for what it left (a FUSE keeper, mounts).
    await child.status();
    throw error;
  } finally {
    timer?.cancel();
    graceTimer?.cancel();
    if (onAbort) signal?.removeEventListener("abort", onAbort);
    // Nothing more comes from a ready server; a read still waiting ends with the process.
    stdout.close();
  }
  // A ready server has what it needs: metadata still being fetched (a registry that went
  // silent held the mount ~60 s after ready, Ctrl-C included) is given up after a moment, and
  // the server fetches it itself. Bytes already being written are let through whole.
  await new Promise<void>((resolve) => {
    const giveUp = () => {
      if (writingMetadata) return;
      closeStdin();
      resolve();
    };
    const timer = after(HANDED_METADATA_AFTER_READY_MS, giveUp);
    signal?.addEventListener("abort", giveUp, { once: true });
    if (signal?.aborted) giveUp();
    sent.finally(() => {
      timer.cancel();
      signal?.removeEventListener("abort", giveUp);
      resolve();
    });
  });
  const line = text.split("\n")[0];
  let ready: ReadyMessage;
  try {
    ready = JSON.parse(line) as ReadyMessage;
  } catch {
    const code = await child.status();
    // A --foreground server shares the terminal: the Ctrl-C that interrupted us ended it.
    if (signal?.aborted) throw signal.reason;
    throw new MountError(
      `the mount server exited (code ${code}) before it was ready`,
      seeServerLog(spec, foreground),
    );
  }
  if (!ready.ok) {
    await child.status();
    throw new UserError(ready.error, ready.hint);
  }
  // Our child until this process exits (a zombie at worst), so the pid cannot be reused yet.
  return { ...ready, startTicks: processStartTicks(ready.pid) };
}

/**
 * Where the log of a server that failed to start can be read: a copy kept out of its runtime
 * dir (the failed mount's undo removes that dir, log and all). A --foreground server printed
 * its output above already, and `reattach` has no --foreground: neither is told to use it.
 */
function seeServerLog(spec: MountSpec, foreground: boolean): string {
  return serverLogHint(keepFailedServerLog(spec.id), foreground, spec.reattach !== undefined);
}

/** seeServerLog's hint, given where the log was kept (if it was) and who started the server. */
export function serverLogHint(
  kept: string | undefined,
  foreground: boolean,
  reattach: boolean,
): string {
  const rerun = foreground || reattach ? "" : "mount with --foreground";
  if (kept) return `see its log (kept at ${kept})${rerun ? ` or ${rerun}` : ""}`;
  if (foreground) return "see its output above";
  return rerun ? `${rerun} to see its output` : "its log was not kept: run the reattach again";
}

/**
 * Asks the server to release its exports and exit; kills it (through a pidfd, only if it is
 * still that process) if it does not.
 */
export async function stopServer(
  id: string,
  server: ServerProcess,
  timeoutMs = 15_000,
): Promise<void> {
  await controlRequest(controlSocketPath(id), { command: "stop" });
  const deadline = Date.now() + timeoutMs;
  while (serverAlive(server) && Date.now() < deadline) {
    await sleep(50);
  }
  killServer(server);
}
