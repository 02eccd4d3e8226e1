import type { Source } from "../../lib/source/source.ts";

/** Deterministic pseudo-random bytes (xorshift32), so tests can compare without a copy. */
export function patternBytes(size: number, seed = 1): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

export interface MemorySourceOptions {
  /** Milliseconds to wait before answering a read at this offset. */
  delayMs?(offset: number, length: number): number;
  /** Reject reads touching this range (an error object or message). */
  fail?(offset: number, length: number): boolean;
}

/**
 * An in-memory Source that records every read, can delay or fail chosen ones, and checks the
 * Source contract (never asked past the end).
 */
export class MemorySource implements Source {
  readonly size: number;
  readonly reads: { offset: number; length: number }[] = [];
  /** Reads outside 0..size (a caller bug this source reports). */
  readonly outOfRange: { offset: number; length: number }[] = [];
  inFlight = 0;
  maxInFlight = 0;

  constructor(readonly bytes: Uint8Array, readonly options: MemorySourceOptions = {}) {
    this.size = bytes.length;
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    this.reads.push({ offset, length });
    if (offset < 0 || length < 0 || offset + length > this.size) {
      this.outOfRange.push({ offset, length });
      throw new RangeError(`read ${offset}+${length} past ${this.size}`);
    }
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      const delay = this.options.delayMs?.(offset, length) ?? 0;
      if (delay > 0) await sleep(delay, signal);
      else await Promise.resolve();
      if (this.options.fail?.(offset, length)) throw new Error(`injected failure at ${offset}`);
      return this.bytes.slice(offset, offset + length);
    } finally {
      this.inFlight--;
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** `bytes` as a Source whose reads, while `held` is set, wait until release() (a slow fetch). */
export class HeldSource implements Source {
  readonly size: number;
  #waiting: (() => void)[] = [];

  constructor(readonly bytes: Uint8Array, public held = false) {
    this.size = bytes.length;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    if (this.held) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    return this.bytes.slice(offset, offset + length);
  }

  /** Lets every read waiting now go on. */
  release(): void {
    for (const resolve of this.#waiting.splice(0)) resolve();
  }
}
