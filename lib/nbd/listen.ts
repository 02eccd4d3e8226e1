/**
 * A user-space NBD server: listens on a unix socket or TCP port and gives every connection its
 * own handshake and transmission phase over ONE shared source (so CAN_MULTI_CONN holds and all
 * clients share one cache).
 */
import { NbdError, UsageError } from "../errors.ts";
import type { Source } from "../source/source.ts";
import { ConnActivity, watchConn } from "./activity.ts";
import { InflightBudget } from "./budget.ts";
import { type ExportDescription, negotiate } from "./handshake.ts";
import { BLOCK_SIZE_MAX } from "./protocol.ts";
import { type RequestEvent, serveTransmission, type TransmissionEnd } from "./transmission.ts";

export type ListenAddress =
  | { transport: "unix"; path: string }
  | { transport: "tcp"; hostname: string; port: number };

/** `unix:PATH` or `tcp:HOST:PORT` (`tcp:[::1]:10809` for IPv6). */
export function parseListenAddress(spec: string): ListenAddress {
  const usage = "use unix:PATH or tcp:HOST:PORT, e.g. --listen unix:/run/erofs.sock";
  if (spec.startsWith("unix:")) {
    const path = spec.slice(5);
    if (!path) throw new UsageError(`--listen ${spec}: empty socket path`, usage);
    return { transport: "unix", path };
  }
  if (spec.startsWith("tcp:")) {
    const rest = spec.slice(4);
    const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(rest);
    const port = match ? Number(match[3]) : NaN;
    if (!match || port > 65535) {
      throw new UsageError(`--listen ${spec}: expected tcp:HOST:PORT`, usage);
    }
    return { transport: "tcp", hostname: match[1] ?? match[2], port };
  }
  throw new UsageError(`--listen ${spec}: unknown address kind`, usage);
}

/** The NBD URI (as libnbd tools take it) of an export at `addr`. */
export function nbdUri(addr: ListenAddress, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if (addr.transport === "unix") {
    return `nbd+unix:///${name}?socket=${encodeURIComponent(addr.path).replaceAll("%2F", "/")}`;
  }
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  return `nbd://${host}:${addr.port}/${name}`;
}

export interface NbdServerOptions {
  listen: ListenAddress;
  source: Source;
  export: ExportDescription;
  /** A client must finish the handshake within this time. Default 30 s. */
  handshakeTimeoutMs?: number;
  /**
   * Connections served at once. When full, a new connection replaces the one idle longest (if
   * idle for a second or more); otherwise it is closed at once. Default 64.
   */
  maxConnections?: number;
  /**
   * Bytes of READ replies all connections together may hold (InflightBudget: every connection
   * is guaranteed its share, the rest is first come). Default 64 MiB.
   */
  maxInflightBytes?: number;
  /**
   * A connection waiting on its client (handshake, next request, replies not collected) with
   * nothing moving for this long is closed. 0 = never. Default 5 minutes.
   */
  idleTimeoutMs?: number;
  /** Per-connection events, for logs. */
  onConnection?(event: ConnectionEvent): void;
  onRequest?(event: RequestEvent): void;
}

export type ConnectionEvent =
  | { kind: "open"; id: number }
  | { kind: "handshake-failed" | "refused"; id: number; reason: string }
  | { kind: "idle" | "evicted"; id: number; idleMs: number }
  | { kind: "closed"; id: number; end: TransmissionEnd };

export interface NbdServer {
  /** Where it listens (the actual port when 0 was asked for). */
  readonly address: ListenAddress;
  readonly uri: string;
  /** Connections open right now. */
  connectionCount(): number;
  /** Stops accepting, closes every connection, removes the unix socket. Idempotent. */
  close(): Promise<void>;
}

export async function startNbdServer(options: NbdServerOptions): Promise<NbdServer> {
  const listener = await listen(options.listen);
  const address: ListenAddress = options.listen.transport === "unix"
    ? options.listen
    : { ...options.listen, port: (listener.addr as Deno.NetAddr).port };
  const stop = new AbortController();
  const active = new Map<number, Connection>();
  const timeoutMs = options.handshakeTimeoutMs ?? 30_000;
  const maxConnections = options.maxConnections ?? 64;
  const idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  const budget = new InflightBudget(
    options.maxInflightBytes ?? DEFAULT_MAX_INFLIGHT_BYTES,
    maxConnections,
  );
  // Compliant clients then never send a READ the budget could not grant.
  const exportDescription: ExportDescription = {
    ...options.export,
    maxBlockBytes: Math.min(
      options.export.maxBlockBytes ?? BLOCK_SIZE_MAX,
      Math.floor(budget.maxGrantBytes / 4096) * 4096,
    ),
  };
  let nextId = 1;

  const handle = async (entry: Connection, id: number) => {
    const conn = watchConn(entry.conn, entry.activity);
    options.onConnection?.({ kind: "open", id });
    if (entry.conn.remoteAddr.transport === "tcp") (entry.conn as Deno.TcpConn).setNoDelay(true);
    const timer = setTimeout(() => closeQuietly(conn), timeoutMs);
    let result;
    try {
      result = await negotiate(conn, exportDescription);
    } catch (error) {
      result = {
        ok: false as const,
        reason: error instanceof Error ? error.message : String(error),
      };
    } finally {
      clearTimeout(timer);
    }
    if (!result.ok) {
      options.onConnection?.({ kind: "handshake-failed", id, reason: result.reason });
      closeQuietly(conn);
      return;
    }
    const account = budget.account();
    try {
      const end = await serveTransmission(conn, options.source, {
        readOnly: true,
        signal: AbortSignal.any([stop.signal, entry.stop.signal]),
        onRequest: options.onRequest,
        budget: account,
        activity: entry.activity,
      });
      options.onConnection?.({ kind: "closed", id, end });
    } finally {
      account.close();
    }
  };

  /** Closes the connection idle longest, if any has been idle long enough to lose its slot. */
  const evictIdlest = (id: number): boolean => {
    const now = Date.now();
    let idlest: [number, Connection, number] | undefined;
    for (const [otherId, entry] of active) {
      const idleMs = entry.activity.idleMs(now);
      if (idleMs >= EVICT_MIN_IDLE_MS && (!idlest || idleMs > idlest[2])) {
        idlest = [otherId, entry, idleMs];
      }
    }
    if (!idlest) return false;
    options.onConnection?.({ kind: "evicted", id: idlest[0], idleMs: idlest[2] });
    idlest[1].close(`replaced by connection ${id}`);
    return true;
  };

  const sweep = idleTimeoutMs > 0
    ? setInterval(() => {
      const now = Date.now();
      for (const [id, entry] of active) {
        const idleMs = entry.activity.idleMs(now);
        if (idleMs < idleTimeoutMs) continue;
        options.onConnection?.({ kind: "idle", id, idleMs });
        entry.close(`idle for ${Math.round(idleMs / 1000)} s`);
      }
    }, Math.max(50, Math.min(1000, idleTimeoutMs / 4)))
    : undefined;

  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        const id = nextId++;
        if (active.size >= maxConnections && !evictIdlest(id)) {
          options.onConnection?.({ kind: "refused", id, reason: "too many connections" });
          closeQuietly(conn);
          continue;
        }
        const entry = new Connection(conn);
        // handle() does not throw by design; a bug there must not end the server.
        entry.done = handle(entry, id).catch((error) =>
          options.onConnection?.({ kind: "handshake-failed", id, reason: message(error) })
        ).finally(() => {
          closeQuietly(conn);
          active.delete(id);
        });
        active.set(id, entry);
      }
    } catch (error) {
      if (!stop.signal.aborted) throw error;
    }
  })();

  let closing: Promise<void> | undefined;
  return {
    address,
    uri: nbdUri(address, options.export.name),
    connectionCount: () => active.size,
    close() {
      closing ??= (async () => {
        stop.abort(new Error("server stopping"));
        if (sweep !== undefined) clearInterval(sweep);
        closeQuietly(listener);
        await accepting.catch(() => {});
        for (const { conn } of active.values()) closeQuietly(conn); // handshakes in progress
        await Promise.allSettled([...active.values()].map((a) => a.done));
        if (address.transport === "unix") {
          try {
            Deno.removeSync(address.path);
          } catch { /* already gone */ }
        }
      })();
      return closing;
    },
  };
}

export const DEFAULT_IDLE_TIMEOUT_MS = 5 * 60_000;
export const DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024;
/** A connection idle for less than this keeps its slot when the server is full. */
const EVICT_MIN_IDLE_MS = 1000;

class Connection {
  readonly activity = new ConnActivity();
  readonly stop = new AbortController();
  done: Promise<void> = Promise.resolve();

  constructor(readonly conn: Deno.Conn) {}

  /** Ends the connection in whatever phase it is (a handshake read fails on the close). */
  close(reason: string): void {
    this.stop.abort(new Error(reason));
    closeQuietly(this.conn);
  }
}

async function listen(addr: ListenAddress): Promise<Deno.Listener> {
  if (addr.transport === "tcp") {
    try {
      return Deno.listen({ transport: "tcp", hostname: addr.hostname, port: addr.port });
    } catch (error) {
      throw new NbdError(`cannot listen on ${addr.hostname}:${addr.port}: ${message(error)}`);
    }
  }
  await removeStaleSocket(addr.path);
  try {
    return Deno.listen({ transport: "unix", path: addr.path });
  } catch (error) {
    throw new NbdError(`cannot listen on ${addr.path}: ${message(error)}`);
  }
}

/** A socket file nobody accepts on is left over from a killed server: replace it. */
async function removeStaleSocket(path: string): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch {
    return;
  }
  if (!info.isSocket) {
    throw new NbdError(`${path} exists and is not a socket`, "choose another --listen path");
  }
  try {
    const probe = await Deno.connect({ transport: "unix", path });
    probe.close();
  } catch {
    Deno.removeSync(path);
    return;
  }
  throw new NbdError(`${path} is in use by another server`, "stop it or choose another path");
}

function closeQuietly(closable: { close(): void }): void {
  try {
    closable.close();
  } catch { /* already closed */ }
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
