/**
 * The accept loop every listener of erofs-oci runs (the NBD server, the metrics endpoint, a
 * mount server's control socket): accept failing (EMFILE or ENFILE: no descriptor left; ENOMEM)
 * pauses and tries again instead of ending the loop. An uncaught accept failure ended a mount's
 * server, its mount left "dead, awaiting reattach", when a burst of connections took its last
 * descriptors. Only the listener's close (or `stop`) ends the loop.
 */
import { after } from "../timers.ts";

/** First pause after accept failed; it doubles while accept keeps failing. */
const FIRST_PAUSE_MS = 50;
const LONGEST_PAUSE_MS = 1000;

export interface AcceptOptions {
  /** Ends the loop (the listener is closed by its owner too); cuts a pause short. */
  stop?: AbortSignal;
  /**
   * Accept failed: `pauseMs` passes before the next try (the connection waits in the backlog
   * until descriptors come back). For a throttled warning, and to make room (close idle clients).
   */
  onFailure?(reason: string, pauseMs: number): void;
}

/** Hands every connection accepted on `listener` to `serve`, until the listener is closed. */
export async function acceptEach(
  listener: Deno.Listener,
  serve: (conn: Deno.Conn) => void,
  options: AcceptOptions = {},
): Promise<void> {
  let pauseMs = 0;
  while (!options.stop?.aborted) {
    let conn: Deno.Conn;
    try {
      conn = await listener.accept();
      pauseMs = 0;
    } catch (error) {
      if (options.stop?.aborted || closedListener(error)) return;
      // One connection's own failure (its client reset it while it waited in the backlog):
      // the next one is accepted at once. Paused for, ~30 reset connections kept every client
      // out for ~27 s, and each one closed a quiet client "to make room".
      if (connectionFailure(error)) continue;
      pauseMs = Math.min(Math.max(2 * pauseMs, FIRST_PAUSE_MS), LONGEST_PAUSE_MS);
      options.onFailure?.(error instanceof Error ? error.message : String(error), pauseMs);
      await pause(pauseMs, options.stop);
      continue;
    }
    serve(conn);
  }
}

/**
 * Errors accept(2) passes on from the connection it took (accept(2), "Error handling": Linux
 * reports a pending network error of the new socket there), not from the server: they end that
 * connection only. Resource errors (EMFILE, ENFILE, ENOBUFS, ENOMEM) and unknown ones pause.
 */
const CONNECTION_ERRNOS = new Set([
  4, // EINTR
  11, // EAGAIN
  64, // ENONET
  71, // EPROTO
  92, // ENOPROTOOPT
  95, // EOPNOTSUPP
  100, // ENETDOWN
  101, // ENETUNREACH
  103, // ECONNABORTED
  104, // ECONNRESET
  107, // ENOTCONN
  110, // ETIMEDOUT
  112, // EHOSTDOWN
  113, // EHOSTUNREACH
]);

function connectionFailure(error: unknown): boolean {
  if (
    error instanceof Deno.errors.NotConnected || error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.ConnectionAborted
  ) return true;
  const errno = /\(os error (\d+)\)/.exec(error instanceof Error ? error.message : "")?.[1];
  return errno !== undefined && CONNECTION_ERRNOS.has(Number(errno));
}

/** What accept throws once its listener is closed (or closing while accept waited). */
function closedListener(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted;
}

function pause(ms: number, stop?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = after(ms, done);
    stop?.addEventListener("abort", done, { once: true });
    function done() {
      timer.cancel();
      stop?.removeEventListener("abort", done);
      resolve();
    }
  });
}
