/**
 * A user-space NBD server: listens on a unix socket or TCP port and gives every connection its
 * own handshake and transmission phase over ONE shared source (so CAN_MULTI_CONN holds and all
 * clients share one cache).
 */
import { type ListenAddress, listenOn, nbdUri, removeOwnSocket } from "./address.ts";
import { acceptEach } from "./accept_loop.ts";
import type { Source } from "../source/source.ts";
import { ConnActivity, watchConn } from "./activity.ts";
import { type BudgetAccount, InflightBudget } from "./budget.ts";
import { type ExportDescription, negotiate, type Refusal } from "./handshake.ts";
import { BLOCK_SIZE_MAX, NBD_REP_ERR_POLICY } from "./protocol.ts";
import { type RequestEvent, serveTransmission, type TransmissionEnd } from "./transmission.ts";

export { type ListenAddress, nbdUri, parseListenAddress } from "./address.ts";

export interface NbdServerOptions {
  listen: ListenAddress;
  source: Source;
  export: ExportDescription;
  /** A client must finish the handshake within this time. Default 30 s. */
  handshakeTimeoutMs?: number;
  /**
   * Connections served at once. When full, a new connection replaces the one stalled longest
   * (ConnActivity: waiting on what its client owes, for a second or more); otherwise it is
   * refused: its options are answered NBD_REP_ERR_POLICY "too many connections" for a short
   * while, without taking a slot (beyond a few refusals at once it is closed at once). Default 64.
   */
  maxConnections?: number;
  /**
   * Bytes of READ replies all connections together may hold (InflightBudget: every connection
   * is guaranteed its share, the rest is first come). Default 64 MiB.
   */
  maxInflightBytes?: number;
  /**
   * A connection waiting on what its client owes (the handshake, the rest of a request, replies
   * not collected) with nothing moving for this long is closed; a quiet client owed nothing is
   * not. 0 = never. Default 5 minutes. A client that collects its replies however slowly is
   * never idle (every byte the socket takes resets the clock); one that takes none for this
   * long loses the replies not yet sent: closing cancels the write blocked on it (its buffer,
   * budget and slot are freed with the connection), and the client sees the connection end,
   * maybe within a reply, never a wrong byte. What the kernel had already taken is still
   * delivered, its own memory bounded by the socket's send buffer.
   */
  idleTimeoutMs?: number;
  /**
   * A connection that holds bytes of the shared budget's pool while another waits for them,
   * and has taken no byte of its replies for this long, is closed (its replies dropped with
   * it). Default 1 minute (DEFAULT_POOL_HOSTAGE_MS). Such a client could otherwise keep its pool bytes until the idle
   * timeout by sending a request now and then: four of them held the whole pool, and every
   * other client's READ longer than its guaranteed share waited minutes.
   */
  poolHostageMs?: number;
  /** Per-connection events, for logs. */
  onConnection?(event: ConnectionEvent): void;
  onRequest?(event: RequestEvent): void;
}

export type ConnectionEvent =
  | { kind: "open"; id: number }
  | { kind: "handshake-failed" | "refused"; id: number; reason: string }
  | { kind: "idle" | "evicted" | "pool-hostage"; id: number; idleMs: number }
  | { kind: "accept-failed"; reason: string; pauseMs: number }
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

export function startNbdServer(options: NbdServerOptions): NbdServer {
  const { listener, socket } = listenOn(options.listen);
  // A unix socket by its absolute path: the URI printed for clients named `rel.sock` as given,
  // which worked only from serve's working directory.
  const address: ListenAddress = options.listen.transport === "unix"
    ? { ...options.listen, path: socket?.path ?? options.listen.path }
    : { ...options.listen, port: (listener.addr as Deno.NetAddr).port };
  const stop = new AbortController();
  const active = new Map<number, Connection>();
  /** Refused clients being told why, each until it leaves or REFUSAL_TIMEOUT_MS. */
  const refusing = new Map<Deno.Conn, Promise<void>>();
  const timeoutMs = options.handshakeTimeoutMs ?? 30_000;
  const maxConnections = options.maxConnections ?? 64;
  const idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  const inflightBytes = options.maxInflightBytes ?? DEFAULT_MAX_INFLIGHT_BYTES;
  // A client may hold a quarter of the shared pool: one that collects its replies slowly
  // (32 MiB READs at 1 MiB/s) held all of it, and others' READs beyond their guaranteed share
  // waited a minute behind it.
  const budget = new InflightBudget(inflightBytes, maxConnections, Math.floor(inflightBytes / 8));
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
    noDelay(entry.conn);
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
    entry.account = account;
    try {
      const end = await serveTransmission(conn, options.source, {
        readOnly: true,
        signal: AbortSignal.any([stop.signal, entry.stop.signal]),
        onRequest: options.onRequest,
        budget: account,
        activity: entry.activity,
        exportBytes: exportDescription.sizeBytes,
      });
      options.onConnection?.({ kind: "closed", id, end });
    } finally {
      account.close();
    }
  };

  /**
   * Closes the connection stalled longest, if any has been stalled long enough to lose its
   * slot; else, with an idle timeout, the one quiet longest if quiet for that long: quiet
   * clients keep their slots, but 64 of them cannot lock every newcomer out for good.
   */
  const evictIdlest = (reason: string): boolean => {
    const now = Date.now();
    let idlest: [number, Connection, number] | undefined;
    // One closing already (evicted, its handler not yet done) makes no room a second time: a
    // burst of newcomers each "evicted" the same entry and all got in (no bound at all).
    const live = [...active].filter(([, entry]) => !entry.stop.signal.aborted);
    for (const [otherId, entry] of live) {
      const idleMs = entry.activity.idleMs(now);
      if (idleMs >= EVICT_MIN_IDLE_MS && (!idlest || idleMs > idlest[2])) {
        idlest = [otherId, entry, idleMs];
      }
    }
    if (!idlest && idleTimeoutMs > 0) {
      for (const [otherId, entry] of live) {
        const quietMs = entry.activity.quietMs(now);
        if (quietMs >= idleTimeoutMs && (!idlest || quietMs > idlest[2])) {
          idlest = [otherId, entry, quietMs];
        }
      }
    }
    if (!idlest) return false;
    options.onConnection?.({ kind: "evicted", id: idlest[0], idleMs: idlest[2] });
    idlest[1].close(reason);
    return true;
  };

  /**
   * Tells a client turned away at the door why, in the handshake, while it takes no slot: the
   * time it may spend, and the refusals told at once, are bounded (the replies are a few bytes;
   * closing the socket at the deadline cancels a write it does not read).
   */
  const refuse = (conn: Deno.Conn, id: number, refusal: Refusal) => {
    options.onConnection?.({ kind: "refused", id, reason: refusal.message });
    if (refusing.size >= MAX_REFUSALS_AT_ONCE || stop.signal.aborted) {
      closeQuietly(conn);
      return;
    }
    noDelay(conn);
    const timer = setTimeout(() => closeQuietly(conn), Math.min(timeoutMs, REFUSAL_TIMEOUT_MS));
    refusing.set(
      conn,
      negotiate(conn, exportDescription, refusal).then(() => {}, () => {}).finally(() => {
        clearTimeout(timer);
        closeQuietly(conn);
        refusing.delete(conn);
      }),
    );
  };

  const poolHostageMs = options.poolHostageMs ?? DEFAULT_POOL_HOSTAGE_MS;
  const sweepEveryMs = Math.max(
    50,
    Math.min(1000, ...[idleTimeoutMs, poolHostageMs].filter((ms) => ms > 0).map((ms) => ms / 4)),
  );
  const sweep = setInterval(() => {
    const now = Date.now();
    const poolWanted = poolHostageMs > 0 && budget.poolWanted();
    for (const [id, entry] of active) {
      const stallMs = entry.activity.replyStallMs(now);
      if (poolWanted && (entry.account?.poolBytes ?? 0) > 0 && stallMs >= poolHostageMs) {
        options.onConnection?.({ kind: "pool-hostage", id, idleMs: stallMs });
        entry.close(
          `held ${entry.account!.poolBytes} bytes of the shared budget others wait for, ` +
            `no reply write completed for ${Math.round(stallMs / 1000)} s`,
        );
        continue;
      }
      if (idleTimeoutMs <= 0) continue;
      const idleMs = entry.activity.idleMs(now);
      if (idleMs < idleTimeoutMs) continue;
      options.onConnection?.({ kind: "idle", id, idleMs });
      entry.close(`idle for ${Math.round(idleMs / 1000)} s`);
    }
  }, sweepEveryMs);

  const accepting = acceptEach(listener, (conn) => {
    const id = nextId++;
    if (active.size >= maxConnections && !evictIdlest(`replaced by connection ${id}`)) {
      refuse(conn, id, {
        reply: NBD_REP_ERR_POLICY,
        message: `too many connections: all ${maxConnections} slots are taken, try again later`,
      });
      return;
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
  }, {
    stop: stop.signal,
    onFailure: (reason, pauseMs) => {
      options.onConnection?.({ kind: "accept-failed", reason, pauseMs });
      evictIdlest("the server ran out of descriptors"); // idle clients make room
    },
  });

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
        for (const conn of refusing.keys()) closeQuietly(conn);
        await Promise.allSettled([...active.values()].map((a) => a.done));
        await Promise.allSettled(refusing.values());
        removeOwnSocket(socket);
      })();
      return closing;
    },
  };
}

export const DEFAULT_IDLE_TIMEOUT_MS = 5 * 60_000;
/**
 * A write returns only once the kernel has room again (a unix socket: a quarter of its buffer
 * queued; TCP: half), so a client taking its replies steadily but slowly shows no progress for
 * (its buffer) / (its rate): a minute lets clients of ~40 KB/s (TCP's 4 MB buffers) or ~3 KB/s
 * (unix) through, where 10 s closed a unix client reading 8 KiB/s.
 */
export const DEFAULT_POOL_HOSTAGE_MS = 60_000;
export const DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024;
/** A connection stalled for less than this keeps its slot when the server is full. */
const EVICT_MIN_IDLE_MS = 1000;
/**
 * How long a refused client is given to hear why (a real client needs a few round trips),
 * and how many are told at once; past those it is just closed.
 */
const REFUSAL_TIMEOUT_MS = 2000;
const MAX_REFUSALS_AT_ONCE = 16;

class Connection {
  readonly activity = new ConnActivity();
  readonly stop = new AbortController();
  /** Its share of the byte budget, once in the transmission phase. */
  account?: BudgetAccount;
  done: Promise<void> = Promise.resolve();

  constructor(readonly conn: Deno.Conn) {}

  /** Ends the connection in whatever phase it is (a handshake read fails on the close). */
  close(reason: string): void {
    this.stop.abort(new Error(reason));
    closeQuietly(this.conn);
  }
}

/** Replies are small and each awaited by the client: Nagle would hold each one back. */
function noDelay(conn: Deno.Conn): void {
  if (conn.remoteAddr.transport === "tcp") (conn as Deno.TcpConn).setNoDelay(true);
}

function closeQuietly(closable: { close(): void }): void {
  try {
    closable.close();
  } catch { /* already closed */ }
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
