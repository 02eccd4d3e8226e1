/**
 * Control channel between the CLI and a running mount server: a unix socket in the mount's
 * runtime dir, one JSON request line, one JSON reply line.
 */
import type { ServerStats } from "../metrics/layer_stats.ts";

export type ControlRequest = { command: "stats" } | { command: "stop" };

export type ControlReply =
  | { ok: true; stats?: ServerStats }
  | { ok: false; error: string };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

async function readLine(conn: Deno.Conn, timeoutMs: number): Promise<string> {
  const buffer = new Uint8Array(64 * 1024);
  let text = "";
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    while (!text.includes("\n")) {
      const n = await conn.read(buffer);
      if (n === null) break;
      text += decoder.decode(buffer.subarray(0, n), { stream: true });
    }
  } finally {
    clearTimeout(timer);
  }
  return text.split("\n")[0];
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
    const line = await readLine(conn, timeoutMs);
    return line ? JSON.parse(line) as ControlReply : undefined;
  } catch {
    return undefined;
  } finally {
    try {
      conn.close();
    } catch { /* closed by the timeout */ }
  }
}

/** Serves control requests until the listener is closed. */
export async function serveControl(
  listener: Deno.Listener,
  handle: (request: ControlRequest) => Promise<ControlReply>,
): Promise<void> {
  for await (const conn of listener) {
    (async () => {
      try {
        const line = await readLine(conn, 5000);
        let reply: ControlReply;
        try {
          reply = await handle(JSON.parse(line) as ControlRequest);
        } catch (error) {
          reply = { ok: false, error: error instanceof Error ? error.message : String(error) };
        }
        await conn.write(encoder.encode(JSON.stringify(reply) + "\n"));
      } catch {
        /* client went away */
      } finally {
        try {
          conn.close();
        } catch { /* already closed */ }
      }
    })();
  }
}
