/**
 * Tells whether a connection is idle: nothing moved on its socket for a while although the
 * server owed it nothing. Time spent waiting on the server (a slow registry read, the shared
 * byte budget) never counts against the client; time spent waiting for the client (its next
 * request, its handshake, collecting replies it asked for) does.
 */
import type { NbdConn } from "./conn_io.ts";

export class ConnActivity {
  #lastMs = Date.now();
  /** Set by the phase running the connection: true while the server is what it waits for. */
  serverBusy: () => boolean = () => false;

  /** Bytes moved in either direction. */
  touch(): void {
    this.#lastMs = Date.now();
  }

  /** How long the connection has waited on its client without any progress. */
  idleMs(now = Date.now()): number {
    if (this.serverBusy()) {
      this.#lastMs = now;
      return 0;
    }
    return Math.max(0, now - this.#lastMs);
  }
}

/** `conn` with every successful read and write recorded in `activity`. */
export function watchConn(conn: NbdConn, activity: ConnActivity): NbdConn {
  return {
    async read(p) {
      const n = await conn.read(p);
      if (n) activity.touch();
      return n;
    },
    async write(p) {
      const n = await conn.write(p);
      if (n > 0) activity.touch();
      return n;
    },
    close: () => conn.close(),
  };
}
