/**
 * A mount server the launcher started (scripts/launcher.sh) at the same moment as the `mount`
 * it runs: its Deno start-up, the longest step of a mount, then overlaps the CLI's own instead
 * of following it. The CLI spawned its server ~20 ms (host) / ~0.3 s (QEMU TCG) after its own
 * main, ~0.1 s / ~1.3 s after it was itself started, and the server then needed ~0.1 s / ~1 s
 * more (its runtime, its modules, its reader thread) before it could read the spec.
 *
 * The two meet on a unix socket in the launcher's private runtime directory (owned by the
 * caller, writable by nobody else: the launcher checks it), named by the CLI's pid. The CLI
 * connects, sends one byte (the backend its quick look at the command line chose, or nothing
 * when it does not want the server) and then speaks to it as to a server it spawned: the
 * connection is the server's stdin and stdout. A server nobody connects to within
 * CONNECT_WAIT_MS ends by itself; a CLI that cannot reach its server spawns one itself.
 */
import {
  acceptConnection,
  closeLeftOpen,
  duplicateOnto,
  listenUnix,
  readableWithin,
  readByte,
  reapChild,
} from "../../ffi/handoff.ts";
import { closeFd, readSmallFile } from "../../ffi/libc.ts";

/** Set by the launcher for the server it starts: where to listen for the CLI. */
export const LAUNCHER_SOCKET_ENV = "EROFS_OCI_SERVER_AHEAD_SOCKET";
/** Set by the launcher for the CLI: "PID SOCKET" of the server it started. */
export const LAUNCHER_SERVER_ENV = "EROFS_OCI_SERVER_AHEAD";
/** How long either side waits for the other (the CLI connects right after its own main). */
const CONNECT_WAIT_MS = 30_000;
const CONNECT_RETRY_MS = 5;
const STATUS_POLL_MS = 20;

const BACKEND_BYTES = { fuse: 0x66, nbd: 0x6e } as const; // "f", "n"
type Backend = keyof typeof BACKEND_BYTES;

// ---- the server's side ----

/**
 * In a server the launcher started: waits for the CLI's connection and makes it stdin and
 * stdout. "none": not started by the launcher; undefined: the CLI did not come or wants no
 * server (the caller exits); else the backend to start reader threads for.
 */
export async function takeLauncherConnection(): Promise<Backend | "none" | undefined> {
  const path = Deno.env.get(LAUNCHER_SOCKET_ENV);
  if (!path) return "none";
  Deno.env.delete(LAUNCHER_SOCKET_ENV); // not for the processes this server starts
  // The shell that started this process passed on what its own caller left open.
  closeLeftOpen();
  let listening: number;
  try {
    listening = listenUnix(path);
  } catch {
    return undefined;
  }
  let connection: number;
  try {
    if (!await readableWithin(listening, CONNECT_WAIT_MS)) return undefined;
    connection = acceptConnection(listening);
  } catch {
    return undefined;
  } finally {
    closeFd(listening);
    try {
      Deno.removeSync(path);
    } catch { /* removed by the CLI */ }
  }
  try {
    if (!await readableWithin(connection, CONNECT_WAIT_MS)) return undefined;
    const byte = readByte(connection);
    const backend = (Object.keys(BACKEND_BYTES) as Backend[])
      .find((name) => BACKEND_BYTES[name] === byte);
    if (!backend) return undefined;
    duplicateOnto(connection, 0);
    duplicateOnto(connection, 1);
    return backend;
  } catch {
    return undefined;
  } finally {
    closeFd(connection);
  }
}

// ---- the CLI's side ----

/** The server the launcher started for this `mount`. */
export interface LauncherServer {
  pid: number;
  socket: string;
}

/**
 * The server the launcher started for this process, if any (taken once: the variable is
 * removed, so nothing this process starts sees it). Only a child of this process counts: the
 * pid is then ours to signal until this process ends (it is never reaped before).
 */
export function takeLauncherServer(): LauncherServer | undefined {
  const value = Deno.env.get(LAUNCHER_SERVER_ENV);
  if (value === undefined) return undefined;
  Deno.env.delete(LAUNCHER_SERVER_ENV);
  const match = /^(\d+) (\/.+)$/.exec(value);
  if (!match) return undefined;
  const pid = Number(match[1]);
  const stat = readSmallFile(`/proc/${pid}/stat`);
  const parent = stat?.slice(stat.lastIndexOf(")") + 2).split(" ")[1];
  if (parent !== String(Deno.pid)) return undefined;
  return { pid, socket: match[2] };
}

/** What server_process.ts uses of a server's process (a Deno.ChildProcess has it all). */
export interface ServerChildProcess {
  readonly stdin: WritableStream<Uint8Array>;
  readonly stdout: ReadableStream<Uint8Array>;
  readonly status: Promise<Deno.CommandStatus>;
  kill(signal?: Deno.Signal): void;
  unref(): void;
}

/** The launcher's server as a child process: its stdin and stdout are the connection. */
export class LauncherServerChild implements ServerChildProcess {
  readonly #server: LauncherServer;
  #ended?: Deno.CommandStatus;
  #status?: Promise<Deno.CommandStatus>;
  /** The connection, once the backend byte is sent; undefined: the server cannot be reached. */
  readonly connection: Promise<Deno.UnixConn | undefined>;
  readonly stdin: WritableStream<Uint8Array>;
  readonly stdout: ReadableStream<Uint8Array>;

  constructor(server: LauncherServer, backend: Backend) {
    this.#server = server;
    this.connection = this.#connect(backend);
    this.stdin = new WritableStream({
      write: async (chunk) => {
        const conn = await this.connection;
        if (!conn) throw new Deno.errors.BrokenPipe("the mount server is gone");
        for (let done = 0; done < chunk.length;) done += await conn.write(chunk.subarray(done));
      },
      close: async () => {
        await (await this.connection)?.closeWrite().catch(() => {});
      },
    });
    this.stdout = new ReadableStream({
      pull: async (controller) => {
        const conn = await this.connection;
        const buffer = new Uint8Array(16384);
        const n = conn ? await conn.read(buffer).catch(() => null) : null;
        if (n === null) controller.close();
        else controller.enqueue(buffer.subarray(0, n));
      },
      cancel: async () => (await this.connection)?.close(),
    });
  }

  async #connect(backend: Backend): Promise<Deno.UnixConn | undefined> {
    const deadline = performance.now() + CONNECT_WAIT_MS;
    while (performance.now() < deadline && !this.#exited()) {
      let conn: Deno.UnixConn;
      try {
        conn = await Deno.connect({ transport: "unix", path: this.#server.socket });
      } catch {
        await new Promise((resolve) => setTimeout(resolve, CONNECT_RETRY_MS));
        continue;
      }
      try {
        await conn.write(new Uint8Array([BACKEND_BYTES[backend]]));
        return conn;
      } catch {
        conn.close();
        return undefined;
      }
    }
    return undefined;
  }

  #exited(): boolean {
    if (this.#ended) return true;
    const ended = reapChild(this.#server.pid);
    if (!ended) return false;
    this.#ended = { success: ended.code === 0, code: ended.code, signal: null };
    // Ended before it took its socket (it may have bound it after a kill() removed it).
    removeSocket(this.#server);
    return true;
  }

  get status(): Promise<Deno.CommandStatus> {
    return this.#status ??= (async () => {
      while (!this.#exited()) {
        await new Promise((resolve) => setTimeout(resolve, STATUS_POLL_MS));
      }
      return this.#ended!;
    })();
  }

  kill(signal: Deno.Signal = "SIGTERM"): void {
    // Never reaped before this process ends: the pid cannot belong to another process.
    if (!this.#exited()) Deno.kill(this.#server.pid, signal);
  }

  unref(): void {}
}

/** Ends the launcher's server when this `mount` will not use it. */
export async function discardLauncherServer(server: LauncherServer): Promise<void> {
  try {
    Deno.kill(server.pid, "SIGKILL");
  } catch { /* gone */ }
  const deadline = performance.now() + CONNECT_WAIT_MS;
  while (!reapChild(server.pid) && performance.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, CONNECT_RETRY_MS));
  }
  // Only now: until it ended, it could still bind its socket.
  removeSocket(server);
}

function removeSocket(server: LauncherServer): void {
  try {
    Deno.removeSync(server.socket);
  } catch { /* taken by the server, or removed already */ }
}
