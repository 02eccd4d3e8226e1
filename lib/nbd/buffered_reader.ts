import { type NbdConn, UnexpectedEof } from "./conn_io.ts";

/**
 * Reads a connection in large gulps so that many pipelined 28-byte requests cost one read()
 * call. `fill(n)` makes n bytes available at `buf[start..]` (contiguous); `skip(n)` discards
 * bytes, e.g. the payload of a refused WRITE, without holding them.
 */
export class BufferedReader {
  buf: Uint8Array;
  view: DataView;
  start = 0;
  end = 0;
  /** A read started by readAhead, which the next fill or skip waits for. */
  #ahead?: Promise<"data" | "eof" | "full">;
  /** The stream ended during a readAhead. */
  #ended = false;

  constructor(private readonly conn: NbdConn, capacity = 256 * 1024) {
    this.buf = new Uint8Array(capacity);
    this.view = new DataView(this.buf.buffer);
  }

  get available(): number {
    return this.end - this.start;
  }

  /**
   * Ensures `n` (≤ capacity) contiguous bytes at `start`. Returns false at a clean end of
   * stream (nothing buffered); throws UnexpectedEof if the stream ends inside those bytes.
   */
  async fill(n: number, what: string): Promise<boolean> {
    if (this.end - this.start >= n) return true;
    // Not before: requests already buffered are handled without waiting for the client.
    await this.#ahead;
    if (this.end - this.start >= n) return true;
    if (this.start + n > this.buf.length) this.#compact();
    while (this.end - this.start < n) {
      const got = this.#ended ? null : await this.conn.read(this.buf.subarray(this.end));
      if (got === null) {
        if (this.end === this.start) return false;
        throw new UnexpectedEof(what);
      }
      this.end += got;
    }
    return true;
  }

  /**
   * Reads whatever the peer sends next into the free space (while the caller waits on
   * something else), so that its end is seen: "eof" when the stream ended, "full" when there
   * is no room to read into. One read at a time: a call while one runs returns that one.
   */
  readAhead(): Promise<"data" | "eof" | "full"> {
    if (!this.#ahead) {
      const reading = this.#readOnce();
      this.#ahead = reading;
      reading.then(
        () => this.#ahead === reading && (this.#ahead = undefined),
        () => this.#ahead === reading && (this.#ahead = undefined),
      );
    }
    return this.#ahead;
  }

  /** Moves the unread bytes to the front of the buffer. */
  #compact(): void {
    this.buf.copyWithin(0, this.start, this.end);
    this.end -= this.start;
    this.start = 0;
  }

  async #readOnce(): Promise<"data" | "eof" | "full"> {
    if (this.#ended) return "eof";
    if (this.end === this.buf.length) this.#compact();
    if (this.end === this.buf.length) return "full";
    const got = await this.conn.read(this.buf.subarray(this.end));
    if (got === null) {
      this.#ended = true;
      return "eof";
    }
    this.end += got;
    return "data";
  }

  /** Discards `n` bytes from the stream. */
  async skip(n: number, what: string): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.start === this.end) await this.#ahead;
      if (this.start === this.end) {
        this.start = this.end = 0;
        const got = this.#ended ? null : await this.conn.read(this.buf);
        if (got === null) throw new UnexpectedEof(what);
        this.end = got;
      }
      const take = Math.min(left, this.end - this.start);
      this.start += take;
      left -= take;
    }
  }
}
