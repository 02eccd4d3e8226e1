/**
 * Control channel between the CLI and a running mount server: a unix socket in the mount's
 * runtime dir, one JSON request line, one JSON reply line.
 */
import type { ServerStats } from "../metrics/layer_stats.ts";
import { acceptEach } from "../nbd/accept_loop.ts";
import { throttledWarning } from "../log.ts";
import { after } from "../timers.ts";

export type ControlRequest = { command: "stats" } | { command: "stop" };

export type ControlReply =
  | { ok: true; stats?: ServerStats }
  | { ok: false; error: string };

const encoder = new TextEncoder();

/**
 * Longest request line a server reads: a request is a few dozen bytes, and a client that sent
 * 25 MiB without a newline grew the server from 64 to 352 MB.
 */
export const MAX_REQUEST_BYTES = 64 * 1024;
/** Longest reply line a client reads (a stats reply grows with the layers: ~1 KiB each). */
const MAX_REPLY_BYTES = 16 * 1024 * 1024;
const READ_CHUNK_BYTES = 4096;

class LineTooLong extends Error {}

/**
 * The first line `conn` sends, without its newline, within `timeoutMs` (the connection is
 * closed then); what came when the peer stopped without one; LineTooLong past `maxBytes`.
 * Only the bytes just read are searched for the newline (a line rescanned whole as it grew
 * made a long one quadratic).
 */
async function readLine(conn: Deno.Conn, timeoutMs: number, maxBytes: number): Promise<string> {
  const chunk = new Uint8Array(READ_CHUNK_BYTES);
  let line = new Uint8Array(READ_CHUNK_BYTES);
  let length = 0;
  const timer = after(timeoutMs, () => conn.close());
  try {
    for (;;) {
      const n = await conn.read(chunk);
      if (n === null) break;
      const newline = chunk.subarray(0, n).indexOf(0x0a);
      const end = newline < 0 ? n : newline;
      if (length + end > maxBytes) throw new LineTooLong();
      if (length + end > line.length) {
        const larger = new Uint8Array(Math.min(maxBytes, Math.max(2 * line.length, length + end)));
        larger.set(line.subarray(0, length));
        line = larger;
      }
      line.set(chunk.subarray(0, end), length);
      length += end;
      if (newline >= 0) break;
    }
  } finally {
    timer.cancel();
  }
  return new TextDecoder().decode(line.subarray(0, length));
}

/** Sends one request; resolves undefined when the server does not answer in time. */
export async function controlRequest(
  socketPath: string,
  request: ControlRequest,
  timeoutMs = 2000,
): Promise<ControlReply | undefined> {
  let conn: Deno.Conn;
  try {
    conn = await Deno.connect({ transport: "unix", path: socketPath });
  } catch {
    return undefined;
  }
  try {
    await conn.write(encoder.encode(JSON.stringify(request) + "\n"));
    const line = await readLine(conn, timeoutMs, MAX_REPLY_BYTES);
    return line ? JSON.parse(line) as ControlReply : undefined;
  } catch {
    return undefined;
  } finally {
    try {
      conn.close();
    } catch { /* closed by the timeout */ }
  }
}

/**
 * Serves control requests until the listener is closed. A failing accept (no descriptor left)
 * pauses instead of ending the server (acceptEach); a request line longer than
 * MAX_REQUEST_BYTES is answered with an error and closed, unread.
 */
export function serveControl(
  listener: Deno.Listener,
  handle: (request: ControlRequest) => Promise<ControlReply>,
): Promise<void> {
  const acceptWarning = throttledWarning(ACCEPT_WARN_EVERY_MS, "failed accepts");
  return acceptEach(listener, (conn) => answer(conn, handle), {
    onFailure: (reason) => acceptWarning(`control socket: cannot accept (${reason}); retrying`),
  });
}

/** A flood fails accept again and again: one warning per this long. */
const ACCEPT_WARN_EVERY_MS = 10_000;

async function answer(
  conn: Deno.Conn,
  handle: (request: ControlRequest) => Promise<ControlReply>,
): Promise<void> {
  try {
    let line: string;
    try {
      line = await readLine(conn, 5000, MAX_REQUEST_BYTES);
    } catch (error) {
      if (!(error instanceof LineTooLong)) return; // the client went away, or kept silent
      return await send(conn, {
        ok: false,
        error: `request longer than ${MAX_REQUEST_BYTES} bytes`,
      });
    }
    let reply: ControlReply;
    try {
      reply = await handle(JSON.parse(line) as ControlRequest);
    } catch (error) {
      reply = { ok: false, error: error instanceof Error ? error.message : String(error) };
    }
    await send(conn, reply);
  } catch {
    /* client went away */
  } finally {
    try {
      conn.close();
    } catch { /* already closed */ }
  }
}

async function send(conn: Deno.Conn, reply: ControlReply): Promise<void> {
  const bytes = encoder.encode(JSON.stringify(reply) + "\n");
  for (let done = 0; done < bytes.length;) done += await conn.write(bytes.subarray(done));
}
