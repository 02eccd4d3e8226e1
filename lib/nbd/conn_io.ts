/**
 * The byte-stream shape NBD code needs, and exact-length reads / complete writes over it.
 * `Deno.Conn` (unix or TCP) satisfies `NbdConn` as is; other transports (a socketpair fd read
 * through FFI) only need these three methods.
 */
export interface NbdConn {
  /** Reads up to `p.length` bytes; null at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes some of `p`; returns how many bytes were taken. */
  write(p: Uint8Array): Promise<number>;
  close(): void;
  /**
   * Writes `parts` back to back as one unit, when the transport shares its socket with another
   * writer (lib/nbd/direct_conns.ts); without it SerialWriter writes them piece by piece.
   */
  writeAll?(parts: Uint8Array[]): Promise<void>;
}

/** The peer closed the stream in the middle of a message. */
export class UnexpectedEof extends Error {
  constructor(what: string) {
    super(`connection closed in the middle of ${what}`);
    this.name = "UnexpectedEof";
  }
}

/**
 * Fills `buf` completely. Returns false when the stream ended before the first byte (a clean
 * end between messages); throws UnexpectedEof when it ended part-way.
 */
export async function readExactly(conn: NbdConn, buf: Uint8Array, what: string): Promise<boolean> {
  let done = 0;
  while (done < buf.length) {
    const n = await conn.read(buf.subarray(done));
    if (n === null) {
      if (done === 0) return false;
      throw new UnexpectedEof(what);
    }
    done += n;
  }
  return true;
}

/** Writes all of `buf`. */
export async function writeFully(conn: NbdConn, buf: Uint8Array): Promise<void> {
  let done = 0;
  while (done < buf.length) done += await conn.write(buf.subarray(done));
}

/**
 * Serializes writes on one connection so that concurrent replies never interleave. `write`
 * resolves when the buffer is fully handed to the socket; the first failure rejects that write
 * and every later one (the connection is unusable after a partial reply).
 */
export class SerialWriter {
  #tail: Promise<void> = Promise.resolve();
  #failed: unknown = undefined;

  constructor(private readonly conn: NbdConn) {}

  /** Queues `parts` to be written back to back, with nothing from other writers in between. */
  write(...parts: Uint8Array[]): Promise<void> {
    const next = this.#tail.then(async () => {
      if (this.#failed !== undefined) throw this.#failed;
      try {
        if (this.conn.writeAll) await this.conn.writeAll(parts);
        else for (const part of parts) await writeFully(this.conn, part);
      } catch (error) {
        this.#failed = error;
        throw error;
      }
    });
    // Keep the chain alive after a failure; callers see the rejection through `next`.
    this.#tail = next.catch(() => {});
    return next;
  }

  /** Resolves once every queued write has finished (successfully or not). */
  drain(): Promise<void> {
    return this.#tail;
  }
}
