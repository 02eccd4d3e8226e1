/**
 * Tells whether a connection is stalled by its client: nothing moved on its socket for a while
 * although the client owes the server something — the rest of its handshake, the rest of a
 * request or WRITE payload it started, or the collection of replies it asked for. Time spent
 * waiting on the server (a slow registry read, the shared byte budget) never counts against the
 * client, and neither does a quiet client owed nothing: NBD has no keepalive, and nbd-client or
 * qemu hold a connection open, silent, for as long as their device is attached.
 */
import type { NbdConn } from "./conn_io.ts";

export class ConnActivity {
  #lastMs = Date.now();
  #lastByteMs = Date.now();
  #lastReplyMs = Date.now();
  /**
   * Set by the phase running the connection: true while it waits for something the client
   * owes (the handshake phase owes its every byte until it ends).
   */
  clientOwes: () => boolean = () => true;
  /** Set by the transmission phase: true while replies wait to be written. */
  repliesPending: () => boolean = () => false;

  /** Bytes moved in either direction. */
  touch(): void {
    this.#lastMs = this.#lastByteMs = Date.now();
  }

  /** Reply bytes written (the client takes what it asked for). */
  replied(): void {
    this.#lastReplyMs = Date.now();
    this.touch();
  }

  /**
   * How long replies have waited without a byte of them taken: a client that sends requests
   * (a FLUSH now and then) but never reads is not idle, yet holds what its replies hold.
   */
  replyStallMs(now = Date.now()): number {
    if (!this.repliesPending()) {
      this.#lastReplyMs = now;
      return 0;
    }
    return Math.max(0, now - this.#lastReplyMs);
  }

  /** How long no byte has moved on the connection, owed or not. */
  quietMs(now = Date.now()): number {
    return Math.max(0, now - this.#lastByteMs);
  }

  /** How long the connection has waited on what its client owes, without any progress. */
  idleMs(now = Date.now()): number {
    if (!this.clientOwes()) {
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
      if (n > 0) activity.replied();
      return n;
    },
    close: () => conn.close(),
  };
}
