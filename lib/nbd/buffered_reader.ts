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
    if (this.start + n > this.buf.length) {
      this.buf.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    }
    while (this.end - this.start < n) {
      const got = await this.conn.read(this.buf.subarray(this.end));
      if (got === null) {
        if (this.end === this.start) return false;
        throw new UnexpectedEof(what);
      }
      this.end += got;
    }
    return true;
  }

  /** Discards `n` bytes from the stream. */
  async skip(n: number, what: string): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.start === this.end) {
        this.start = this.end = 0;
        const got = await this.conn.read(this.buf);
        if (got === null) throw new UnexpectedEof(what);
        this.end = got;
      }
      const take = Math.min(left, this.end - this.start);
      this.start += take;
      left -= take;
    }
  }
}
