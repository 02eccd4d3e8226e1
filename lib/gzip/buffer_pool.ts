/**
 * Large buffers given back for reuse. A lazy tar.gz mount makes a 1 MiB piece for every piece a
 * random read inflates through and a compressed input buffer per inflate cursor: fresh
 * ArrayBuffers each, they waited for V8's external-memory collection and showed as 60-120 MB
 * of the mount server's RSS (docs/benchmarks.md, session 63). Whoever gives a buffer back must
 * own it whole: nothing else may read or write it afterwards (no view handed out, no fetch or
 * inflate still writing into it).
 */
import { nativeBytes } from "../../ffi/zlib.ts";

/** Sizes are rounded up to this, so buffers asked for with slightly different sizes match. */
const SIZE_STEP_BYTES = 64 * 1024;

export class BufferPool {
  /** Buffers handed out that were made new (for tests and statistics). */
  made = 0;
  /** Buffers handed out that were given back before (for tests and statistics). */
  reused = 0;
  readonly #free: ArrayBuffer[] = [];
  #freeBytes = 0;
  #closed = false;

  /**
   * `maxFreeBytes`: buffers of one size kept for reuse at most (one of a size over a quarter
   * of it); more given back are left to V8.
   */
  constructor(readonly maxFreeBytes: number) {}

  /** `length` bytes (contents undefined) over a buffer of the pool, or a new one. */
  take(length: number): Uint8Array<ArrayBuffer> {
    // The smallest free buffer that fits and wastes at most half of itself, the one given back
    // last among equals (its pages are the likeliest to be resident and in the CPU's caches).
    let best = -1;
    for (let i = this.#free.length - 1; i >= 0; i--) {
      const size = this.#free[i].byteLength;
      if (size < length || size > 2 * length + SIZE_STEP_BYTES) continue;
      if (best < 0 || size < this.#free[best].byteLength) best = i;
    }
    if (best >= 0) {
      const [buffer] = this.#free.splice(best, 1);
      this.#freeBytes -= buffer.byteLength;
      this.reused++;
      return new Uint8Array(buffer, 0, length);
    }
    this.made++;
    const size = Math.max(SIZE_STEP_BYTES, Math.ceil(length / SIZE_STEP_BYTES) * SIZE_STEP_BYTES);
    return nativeBytes(size).subarray(0, length);
  }

  /** Gives back the whole buffer under `bytes` (see the module's rule on ownership). */
  give(bytes: Uint8Array<ArrayBuffer>): void {
    const buffer = bytes.buffer;
    if (this.#closed || buffer.byteLength === 0 || this.#free.includes(buffer)) return;
    // Each size kept up to the bound on its own (a few large buffers, a sequential reader's
    // input, must not push out the common size, pieces), and one of a size over a quarter of
    // it: two 4 MiB inputs kept were 4 MB of a mount's peak for a rare reuse.
    let sameSize = buffer.byteLength;
    for (const b of this.#free) if (b.byteLength === buffer.byteLength) sameSize += b.byteLength;
    const large = buffer.byteLength > this.maxFreeBytes / 4;
    if (sameSize > (large ? buffer.byteLength : this.maxFreeBytes)) return;
    this.#free.push(buffer);
    this.#freeBytes += buffer.byteLength;
  }

  /** Bytes kept for reuse now. */
  get freeBytes(): number {
    return this.#freeBytes;
  }

  /** Drops the buffers kept; later ones given back are left to V8. */
  close(): void {
    this.#closed = true;
    this.#free.length = 0;
    this.#freeBytes = 0;
  }
}
