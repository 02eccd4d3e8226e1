/**
 * A scrape endpoint: HTTP/1.x on a unix socket or TCP address answering `GET /metrics` with the
 * text `produce` returns, one request per connection (`Connection: close`, which every scraper
 * takes). Written on plain sockets rather than Deno.serve, because anyone who can connect may
 * be hostile: connections are capped (more are closed at once), each gets a deadline for the
 * whole exchange (a silent or slow client is closed), the request head is bounded, and running
 * out of descriptors pauses accepting instead of ending the process (Deno.serve's accept
 * failure was an uncaught error: a connection flood killed a mount's server).
 */
import {
  bracketed,
  type ListenAddress,
  listenUnix,
  type OwnSocket,
  removeOwnSocket,
} from "../nbd/address.ts";
import { PROMETHEUS_CONTENT_TYPE } from "./prometheus.ts";
import { hostAllowed, RENDER_REUSE_MS, sharedRender } from "./scrape_guard.ts";
import { UserError } from "../errors.ts";
import { throttledWarning } from "../log.ts";
import { acceptEach } from "../nbd/accept_loop.ts";

export interface MetricsEndpoint {
  /** `unix:PATH` or `tcp:HOST:PORT` actually bound (port 0 resolved). */
  address: string;
  finished: Promise<void>;
  /** Stops serving, closes every connection and removes its socket file (if still its own). */
  shutdown(): Promise<void>;
  /** Removes the socket file now, if still its own by identity (for an exiting process). */
  removeSocket(): void;
}

/** Connections served at once; scrapers use one at a time. */
const MAX_CONNECTIONS = 64;
/** The whole exchange of one connection: request head in, response out. */
const CONNECTION_DEADLINE_MS = 30_000;
/** Time for the request head to arrive: a scraper sends it at once. */
const HEAD_DEADLINE_MS = 5_000;
/** A connection with no request head this long gives its slot to a newcomer when all are taken. */
const EVICT_HEADLESS_AFTER_MS = 1_000;
/** Largest request head (request line and headers) read. */
const MAX_HEAD_BYTES = 16 * 1024;
/** A flood fails accept again and again: one warning per this long. */
const ACCEPT_WARN_EVERY_MS = 10_000;

/**
 * Where a client finds the metrics of an endpoint at `address`: `http://HOST:PORT/metrics`, or
 * the socket and path of a unix one (`unix:/run/x.sock/metrics` read as a path inside it).
 */
export function metricsWhere(address: string): string {
  return address.startsWith("unix:")
    ? `${address} (GET /metrics; curl --unix-socket ${address.slice("unix:".length)} ` +
      "http://localhost/metrics)"
    : `http://${address.replace(/^tcp:/, "")}/metrics`;
}

/**
 * Serves the text `render` returns at `addr`, one render shared by the scrapes of `reuseMs`
 * (sharedRender). A TCP scrape whose Host header names neither an address, localhost, the
 * listen address nor this machine is refused (hostAllowed).
 */
export function serveMetrics(
  addr: ListenAddress,
  render: () => Promise<string>,
  reuseMs = RENDER_REUSE_MS,
): MetricsEndpoint {
  const produce = sharedRender(render, reuseMs);
  const allowedHost = addr.transport === "tcp"
    ? (host: string | undefined) => hostAllowed(host, addr.hostname)
    : () => true;
  const where = addr.transport === "unix" ? addr.path : `${bracketed(addr.hostname)}:${addr.port}`;
  let listener: Deno.Listener;
  let socket: OwnSocket | undefined;
  try {
    if (addr.transport === "unix") ({ listener, socket } = listenUnix(addr.path));
    else listener = Deno.listen({ hostname: addr.hostname, port: addr.port });
  } catch (error) {
    if (error instanceof UserError) throw error;
    // An address in use or not ours is the user's to change: one line, not an internal error.
    throw new UserError(
      `cannot listen on ${where}: ${(error as Error).message}`,
      "choose another address (e.g. tcp:127.0.0.1:0 picks a free port)",
    );
  }
  /** Each open connection: when it came, and whether its request head has come yet. */
  const open = new Map<Deno.Conn, { openedMs: number; headRead: boolean }>();
  const stop = new AbortController();
  const acceptWarning = throttledWarning(ACCEPT_WARN_EVERY_MS, "failed accepts");
  const finished = acceptEach(listener, (conn) => {
    // Full: the newcomer takes the slot of the oldest that has sent no request head for a
    // second (64 idle connections held every slot: scrapes were closed unanswered).
    if (open.size >= MAX_CONNECTIONS && !evictHeadless(open)) {
      closeQuietly(conn);
      return;
    }
    const slot = { openedMs: Date.now(), headRead: false };
    open.set(conn, slot);
    const deadline = setTimeout(() => closeQuietly(conn), CONNECTION_DEADLINE_MS);
    answer(conn, produce, allowedHost, slot).catch(() => {/* the client went away */}).finally(
      () => {
        clearTimeout(deadline);
        open.delete(conn);
        closeQuietly(conn);
      },
    );
  }, {
    stop: stop.signal,
    onFailure: (reason) => acceptWarning(`metrics: cannot accept a scraper (${reason}); retrying`),
  });
  const port = addr.transport === "tcp" ? (listener.addr as Deno.NetAddr).port : 0;
  return {
    address: addr.transport === "unix"
      ? `unix:${addr.path}`
      : `tcp:${where.slice(0, where.lastIndexOf(":"))}:${port}`,
    finished,
    shutdown: async () => {
      stop.abort();
      closeQuietly(listener);
      for (const conn of open.keys()) closeQuietly(conn);
      await finished;
      removeOwnSocket(socket);
    },
    removeSocket: () => {
      closeQuietly(listener);
      removeOwnSocket(socket, false);
    },
  };
}

/** Closes the oldest connection still without a request head after a second; false if none. */
function evictHeadless(open: Map<Deno.Conn, { openedMs: number; headRead: boolean }>): boolean {
  const before = Date.now() - EVICT_HEADLESS_AFTER_MS;
  let oldest: [Deno.Conn, number] | undefined;
  for (const [conn, slot] of open) {
    if (!slot.headRead && slot.openedMs <= before && (!oldest || slot.openedMs < oldest[1])) {
      oldest = [conn, slot.openedMs];
    }
  }
  if (!oldest) return false;
  closeQuietly(oldest[0]);
  open.delete(oldest[0]);
  return true;
}

/** Reads one request head and writes its response. */
async function answer(
  conn: Deno.Conn,
  produce: () => Promise<string>,
  allowedHost: (host: string | undefined) => boolean,
  slot: { headRead: boolean },
): Promise<void> {
  // A connection that sends no request soon gives its slot back (slots are few).
  const headTimer = setTimeout(() => closeQuietly(conn), HEAD_DEADLINE_MS);
  let head: string | undefined;
  try {
    head = await readHead(conn);
  } finally {
    clearTimeout(headTimer);
  }
  slot.headRead = true;
  if (head === undefined) return respond(conn, 400, "bad request\n");
  const line = /^([A-Z]+) (\S+) HTTP\/1\.[01]\r?$/.exec(head.slice(0, head.indexOf("\n")));
  if (!line) return respond(conn, 400, "bad request\n");
  const [, method, target] = line;
  if (method !== "GET" && method !== "HEAD") return respond(conn, 405, "method not allowed\n");
  // Origin form (/metrics), or absolute form (http://host/metrics: clients sent through a proxy).
  const path = target.replace(/^https?:\/\/[^/]*/i, "").replace(/\?.*$/, "") || "/";
  if (path !== "/metrics" && path !== "/") return respond(conn, 404, "not found: try /metrics\n");
  if (!allowedHost(/^host:(.*)$/im.exec(head)?.[1])) {
    return respond(conn, 403, "forbidden: scrape by IP address, localhost or this host's name\n");
  }
  let text: string;
  try {
    text = await produce();
  } catch {
    return respond(conn, 500, "internal error\n");
  }
  await respond(conn, 200, text, method === "HEAD", PROMETHEUS_CONTENT_TYPE);
}

/** The request head up to its blank line, or undefined (too large, or the client stopped). */
async function readHead(conn: Deno.Conn): Promise<string | undefined> {
  const buf = new Uint8Array(MAX_HEAD_BYTES);
  let filled = 0;
  while (filled < buf.length) {
    const n = await conn.read(buf.subarray(filled));
    if (n === null) return undefined;
    // Only the new bytes (and the three before them) are looked at: a client sending a byte
    // at a time cost a decode of the whole head per byte.
    const from = Math.max(0, filled - 3);
    filled += n;
    for (let i = from; i + 1 < filled; i++) {
      if (buf[i] !== 0x0a) continue;
      if (buf[i + 1] === 0x0a || (buf[i + 1] === 0x0d && buf[i + 2] === 0x0a && i + 2 < filled)) {
        return new TextDecoder().decode(buf.subarray(0, filled));
      }
    }
  }
  return undefined;
}

const REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  500: "Internal Server Error",
};

async function respond(
  conn: Deno.Conn,
  status: number,
  body: string,
  headOnly = false,
  contentType = "text/plain; charset=utf-8",
): Promise<void> {
  const bytes = new TextEncoder().encode(body);
  const head = new TextEncoder().encode(
    `HTTP/1.1 ${status} ${REASONS[status]}\r\ncontent-type: ${contentType}\r\n` +
      `content-length: ${bytes.length}\r\nconnection: close\r\n` +
      (status === 405 ? "allow: GET, HEAD\r\n" : "") + "\r\n",
  );
  await writeAll(conn, head);
  if (!headOnly) await writeAll(conn, bytes);
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await conn.write(bytes.subarray(done));
}

function closeQuietly(closable: { close(): void }): void {
  try {
    closable.close();
  } catch { /* already closed */ }
}
