/** The detached mount server as a process: starting it until it is ready, stopping it. */
import { MountError, UserError } from "../errors.ts";
import { selfCommand } from "./self_exec.ts";
import type { ReadyMessage } from "./mount_server.ts";
import { controlRequest } from "./control.ts";
import { mark } from "../timing.ts";
import { encodeHandedMetadata, type HandedMetadata } from "./handed_metadata.ts";
import {
  controlSocketPath,
  killServer,
  logPath,
  type MountSpec,
  processStartTicks,
  SERVER_COMMAND,
  serverAlive,
  type ServerProcess,
} from "../state/runtime.ts";

/** How long `mount` waits for the server to attach every layer. */
const READY_TIMEOUT_MS = 120_000;

/**
 * The server's memory settings, unless the caller set them: V8's young generation at 1 MiB
 * per semispace instead of growing to 16 (the server's garbage is short-lived request
 * buffers), and glibc's mmap threshold fixed at 128 KiB, so freed fetch buffers go back to
 * the kernel instead of raising the threshold and staying in malloc arenas. Host benchmark,
 * cold read of the 136 MB image: server peak RSS 181-198 -> 157 MB, RSS after it 181 -> 117 MB.
 */
const SERVER_MEMORY_ENV: Record<string, string> = Object.fromEntries(
  [["DENO_V8_FLAGS", "--max-semi-space-size=1"], ["MALLOC_MMAP_THRESHOLD_", "131072"]]
    .filter(([name]) => Deno.env.get(name) === undefined),
);

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

/** Set for a FUSE mount: the server boots a reader thread while its spec is still coming. */
export const PRESTART_FUSE_READER_ENV = "EROFS_OCI_PRESTART_FUSE_READER";

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
   * after the spec when it settles, is each layer's listed metadata fetched meanwhile.
   */
  start(spec: MountSpec, metadata?: Promise<HandedMetadata>): Promise<ReadyServer>;
  /** Ends a server that was never given a spec (e.g. resolving the image failed). */
  discard(): Promise<void>;
}

/**
 * Starts the server process now and hands it the spec later: `mount` overlaps the start-up
 * of this second Deno (runtime, modules: ~0.1 s of CPU) with resolving the image.
 */
export function spawnServer(foreground: boolean, backend?: "nbd" | "fuse"): SpawnedServer {
  const [program, ...args] = selfCommand([SERVER_COMMAND]);
  const child = new Deno.Command(program, {
    args,
    env: backend === "fuse"
      ? { ...SERVER_MEMORY_ENV, [PRESTART_FUSE_READER_ENV]: "1" }
      : SERVER_MEMORY_ENV,
    stdin: "piped",
    stdout: "piped",
    stderr: foreground ? "inherit" : "null",
    detached: !foreground,
  }).spawn();
  let started = false;
  return {
    start: (spec, metadata) => {
      if (started) throw new Error("the mount server was started already");
      started = true;
      return handOver(child, spec, foreground, metadata);
    },
    discard: async () => {
      if (started) return;
      started = true;
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.stdin.close().catch(() => {});
      await child.stdout.cancel().catch(() => {});
      await child.status;
    },
  };
}

let spawnedAhead:
  | { server: SpawnedServer; foreground: boolean; backend?: "nbd" | "fuse" }
  | undefined;

/**
 * Spawns the server of a `mount` whose own modules are still loading (lib/cli/main.ts), so
 * the second Deno's start-up begins ~50-100 ms earlier; `mount` takes it with
 * takeServerSpawnedAhead. Its EROFS_OCI_* settings come with the spec, as for any early spawn.
 */
export function spawnServerAhead(foreground: boolean, backend?: "nbd" | "fuse"): void {
  if (spawnedAhead) return;
  spawnedAhead = { server: spawnServer(foreground, backend), foreground, backend };
  mark("cli: server spawned ahead");
}

/**
 * The server spawned ahead, if it was spawned for this `foreground` and backend (else it is
 * discarded: the command line meant something else than the early look at it guessed).
 */
export async function takeServerSpawnedAhead(
  foreground: boolean,
  backend?: "nbd" | "fuse",
): Promise<SpawnedServer | undefined> {
  const ahead = spawnedAhead;
  spawnedAhead = undefined;
  if (!ahead) return undefined;
  if (ahead.foreground === foreground && ahead.backend === backend) return ahead.server;
  await ahead.server.discard();
  return undefined;
}

/** Ends a server spawned ahead that no `mount` took (a usage error, a refused target…). */
export async function discardServerSpawnedAhead(): Promise<void> {
  const ahead = spawnedAhead;
  spawnedAhead = undefined;
  await ahead?.server.discard();
}

async function handOver(
  child: Deno.ChildProcess,
  spec: MountSpec,
  foreground: boolean,
  metadata?: Promise<HandedMetadata>,
): Promise<ReadyServer> {
  const writer = child.stdin.getWriter();
  const handed: HandedSpec = { ...spec, serverEnv: ourSettings() };
  // One line (JSON has no raw newline): the server starts on it while the rest comes.
  await writer.write(new TextEncoder().encode(JSON.stringify(handed) + "\n"));
  const sent = (async () => {
    try {
      const fetched = await metadata?.catch(() => undefined);
      if (fetched?.some(Boolean)) {
        for (const part of encodeHandedMetadata(fetched)) await writer.write(part);
        mark("cli: metadata handed");
      }
    } finally {
      await writer.close();
    }
  })().catch(() => {}); // a server that is gone is reported by the ready line below

  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new MountError(
            `the mount server did not get ready in ${READY_TIMEOUT_MS / 1000} s`,
            `see ${logPath(spec.id)}`,
          ),
        ),
      READY_TIMEOUT_MS,
    );
  });
  try {
    while (!text.includes("\n")) {
      const { value, done } = await Promise.race([reader.read(), timeout]);
      if (done) break;
      text += value;
    }
  } catch (error) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    throw error;
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
  await sent;
  if (!foreground) child.unref();
  const line = text.split("\n")[0];
  let ready: ReadyMessage;
  try {
    ready = JSON.parse(line) as ReadyMessage;
  } catch {
    const status = await child.status;
    throw new MountError(
      `the mount server exited (code ${status.code}) before it was ready`,
      `see ${logPath(spec.id)} or run with --foreground`,
    );
  }
  if (!ready.ok) {
    await child.status;
    throw new UserError(ready.error, ready.hint);
  }
  // Our child until this process exits (a zombie at worst), so the pid cannot be reused yet.
  return { ...ready, startTicks: processStartTicks(ready.pid) };
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
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  killServer(server);
}
