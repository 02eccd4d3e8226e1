/**
 * Pull-based reading of a byte stream with an absolute position, handing out views of the
 * stream's own chunks where possible so file data is never copied or buffered whole.
 */
import { FormatError } from "../errors.ts";

export class ByteReader {
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #chunk: Uint8Array = new Uint8Array();
  #chunkPos = 0;
  #eof = false;
  /** Bytes consumed so far: the offset of the next byte in the stream. */
  position = 0;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader();
  }

  async #fill(): Promise<boolean> {
    while (this.#chunkPos >= this.#chunk.length) {
      if (this.#eof) return false;
      const { value, done } = await this.#reader.read();
      if (done) {
        this.#eof = true;
        return false;
      }
      this.#chunk = value;
      this.#chunkPos = 0;
    }
    return true;
  }

  /** Between 1 and `maxBytes` bytes (a view, valid until the caller drops it), or null at EOF. */
  async readUpTo(maxBytes: number): Promise<Uint8Array | null> {
    if (maxBytes <= 0) return new Uint8Array();
    if (!(await this.#fill())) return null;
    const n = Math.min(maxBytes, this.#chunk.length - this.#chunkPos);
    const view = this.#chunk.subarray(this.#chunkPos, this.#chunkPos + n);
    this.#chunkPos += n;
    this.position += n;
    return view;
  }

  /**
   * Exactly `n` bytes; null when the stream ends before the first byte, a FormatError when it
   * ends part way (a truncated archive).
   */
  async readExact(n: number, what: string): Promise<Uint8Array | null> {
    const first = await this.readUpTo(n);
    if (first === null) return null;
    if (first.length === n) return first;
    const out = new Uint8Array(n);
    out.set(first);
    let have = first.length;
    while (have < n) {
      const next = await this.readUpTo(n - have);
      if (next === null) throw truncated(what, this.position);
      out.set(next, have);
      have += next.length;
    }
    return out;
  }

  /**
   * Exactly `n` bytes when the current chunk holds them (a view, as readUpTo's), else undefined
   * and nothing consumed: a member's header and skipped data mostly lie within one chunk, and
   * reading them without an await each saves several promises per member.
   */
  readBuffered(n: number): Uint8Array | undefined {
    if (n <= 0 || this.#chunk.length - this.#chunkPos < n) return undefined;
    const view = this.#chunk.subarray(this.#chunkPos, this.#chunkPos + n);
    this.#chunkPos += n;
    this.position += n;
    return view;
  }

  /** Skips what it can of `n` bytes within the current chunk; returns how many are left. */
  skipBuffered(n: number): number {
    const k = Math.min(n, this.#chunk.length - this.#chunkPos);
    if (k <= 0) return n;
    this.#chunkPos += k;
    this.position += k;
    return n - k;
  }

  /** Skips `n` bytes; a FormatError when the stream ends first. */
  async skip(n: number, what: string): Promise<void> {
    let left = this.skipBuffered(n);
    while (left > 0) {
      const view = await this.readUpTo(left);
      if (view === null) throw truncated(what, this.position);
      left -= view.length;
    }
  }

  /** Stops reading the source (after the end marker, or when the consumer gives up). */
  async cancel(reason?: unknown): Promise<void> {
    try {
      await this.#reader.cancel(reason);
    } catch { /* the source already failed; nothing left to release */ }
    this.#reader.releaseLock();
  }
}

export function truncated(what: string, position: number): FormatError {
  // Shorter than one 512-byte header: not a tar that was cut off, but no tar at all.
  if (position < 512) {
    return new FormatError(
      `not a tar archive: the input ends at byte ${position}, inside its first 512-byte header`,
      "give a tar, tar.gz or tar.zst archive (or, for build, a directory)",
    );
  }
  return new FormatError(
    `tar archive truncated in ${what} (input ends at byte ${position})`,
    "the download or file is incomplete",
  );
}
