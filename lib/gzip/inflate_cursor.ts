/**
 * An inflate stream started at a zinfo checkpoint and paused wherever its last caller stopped,
 * so sequential reads continue instead of restarting from the checkpoint. It crosses gzip
 * member boundaries itself (trailer, next header, fresh deflate stream), so it never depends on
 * the zinfo having a checkpoint at every member.
 */
import { FormatError } from "../errors.ts";
import type { Source } from "../source/source.ts";
import { nativeBytes, RawInflater, Z_STREAM_END } from "../../ffi/zlib.ts";
import { TsInflater } from "./ts_inflate.ts";
import type { BufferPool } from "./buffer_pool.ts";
import { GZIP_TRAILER_BYTES, gzipHeaderLength, isGzipMagic } from "./gzip_header.ts";
import type { Zinfo } from "./zinfo.ts";

/**
 * Each fetch asks for what the output still wanted should take — the rest of the interval's
 * compressed bytes in proportion to the rest of its output, known from the next checkpoint —
 * plus this share and FETCH_SLACK_BYTES, so one fetch usually suffices and the overshoot is
 * small. Fetches never pass the next checkpoint unless the data needs it (wrong estimate,
 * gzip member ends): whatever lies beyond is fetched for nothing when the reader stops there.
 */
const FETCH_MARGIN = 0.2;
const FETCH_SLACK_BYTES = 8 * 1024;
/** Smallest fetch: below this a round trip costs more than the bytes. */
const MIN_FETCH_BYTES = 16 * 1024;
/**
 * Largest fetch for a reader whose reads do not follow each other (bounds memory: a fresh
 * buffer per fetch was most of a lazy tar.gz mount's peak under random readers).
 */
const MAX_FETCH_BYTES = 1024 * 1024;
/**
 * Largest fetch toward the end of the interval, for a sequential reader and the interval
 * prefetch: each fetch waits for the one before, so 1 MiB here made a pass over a slow
 * registry 17-50 % slower (30-100 ms per request).
 */
const MAX_INTERVAL_FETCH_BYTES = 4 * 1024 * 1024;

type CursorState = "deflate" | "member-end" | "end";
type ReadInto = (offset: number, dest: Uint8Array, signal?: AbortSignal) => Promise<void>;

/**
 * A paused cursor's state kept to start others from (zlib's inflateCopy: its ~7 KB of state
 * and 32 KiB window), at `position` in the output with its input at `next`: a checkpoint in
 * memory, anywhere in a deflate block. The owner ends `inflater` when it drops the snapshot.
 */
export interface CursorSnapshot {
  readonly checkpoint: number;
  readonly position: number;
  readonly next: number;
  readonly inflater: RawInflater;
}

/** Which raw inflater a cursor uses: the system zlib (default) or the TypeScript one. */
export type InflaterKind = "zlib" | "ts";

type Inflater = Pick<
  RawInflater,
  "reset" | "prime" | "setDictionary" | "inflate" | "inflateAsync" | "end"
>;

export class InflateCursor {
  /** Uncompressed offset of the next byte this cursor produces. */
  position: number;
  /** Set once the gzip data (all members) has ended. */
  get ended(): boolean {
    return this.#state === "end";
  }
  /** Uncompressed bytes produced (for statistics). */
  produced = 0;
  /**
   * Inflate on a pool thread (RawInflater.inflateAsync). Off by default: measured on the
   * fixtures, a 1 MiB inflate call takes ~1-4 ms on the thread that asks, while the hand-off
   * to a pool thread added 0.5-2 ms per call on a loaded host.
   */
  offThread = false;

  /**
   * Fetch the rest of the interval at once instead of what the current fill needs: set by a
   * reader that sees its reads follow each other (a sequential pass needs all of it).
   */
  toIntervalEnd = false;
  /**
   * Uncompressed offset the caller will fill up to over several fill() calls (e.g. the end of
   * the piece a read needs): fetches are sized for all of it, not one call at a time.
   */
  fetchUntil = 0;
  /** Bytes of compressed input this cursor keeps in memory (its last fetch's buffer). */
  get heldBytes(): number {
    return this.#pending.buffer.byteLength;
  }
  /** Compressed bytes fetched by this cursor (for statistics). */
  fetchedBytes = 0;
  /** Blob reads made by this cursor (for statistics). */
  fetches = 0;

  #next: number;
  #pending: Uint8Array<ArrayBuffer> = nativeBytes(0);
  /** Where fetches land while the pending input is empty (reused: see #refill). */
  #input?: Uint8Array<ArrayBuffer>;
  /** Where `#input` comes from and goes back to on close (see BufferPool's rule). */
  readonly #pool?: BufferPool;
  /**
   * A fetch into `#input` is under way, or one failed (an aborted read may still be writing
   * into it): then it is not given back.
   */
  #inputBusy = false;
  #state: CursorState = "deflate";
  /** Bits at the top of byte `#next - 1` still to prime (0 once the first fetch did). */
  #primeBits: number;
  readonly #inflater: Inflater;
  /** Where the interval ends: the next checkpoint (or the end of the data and the blob). */
  readonly #endCompressed: number;
  readonly #endUncompressed: number;
  /** Compressed bytes per output byte when the end of the interval is not known. */
  readonly #fallbackRatio: number;

  private constructor(
    readonly checkpoint: number,
    readonly blob: Source,
    inflater: Inflater,
    zinfo: Zinfo,
    pool?: BufferPool,
  ) {
    this.#pool = pool;
    const cps = zinfo.checkpoints;
    const cp = cps[checkpoint];
    const next = cps[checkpoint + 1];
    this.#inflater = inflater;
    this.#next = cp.compressedOffset;
    this.#primeBits = cp.bits;
    this.position = cp.uncompressedOffset;
    this.#endCompressed = next?.compressedOffset ?? blob.size;
    this.#endUncompressed = next?.uncompressedOffset ?? Infinity;
    const last = cps[cps.length - 1];
    this.#fallbackRatio = last.uncompressedOffset > 0
      ? Math.max(0.01, last.compressedOffset / last.uncompressedOffset)
      : 0.5;
  }

  /**
   * A cursor positioned at checkpoint `index` of `zinfo` (window set; the checkpoint's bits are
   * primed from its first fetch, which starts one byte early for them).
   */
  static async open(
    blob: Source,
    zinfo: Zinfo,
    index: number,
    signal?: AbortSignal,
    kind: InflaterKind = "zlib",
    pool?: BufferPool,
  ): Promise<InflateCursor> {
    const inflater = kind === "ts" ? new TsInflater() : new RawInflater();
    try {
      inflater.setDictionary(copyNative(await zinfo.window(index, signal)));
      return new InflateCursor(index, blob, inflater, zinfo, pool);
    } catch (error) {
      inflater.end();
      throw error;
    }
  }

  /** A cursor where `snapshot` was taken, as a cursor opened at its checkpoint would be there. */
  static fromSnapshot(
    blob: Source,
    zinfo: Zinfo,
    snapshot: CursorSnapshot,
    pool?: BufferPool,
  ): InflateCursor {
    const cursor = new InflateCursor(
      snapshot.checkpoint,
      blob,
      new RawInflater(snapshot.inflater),
      zinfo,
      pool,
    );
    cursor.#next = snapshot.next;
    cursor.#primeBits = 0;
    cursor.position = snapshot.position;
    return cursor;
  }

  /**
   * This cursor's state, to start others from later, or undefined where that cannot be done:
   * between gzip members, before its first fetch, with the TypeScript inflater.
   */
  snapshot(): CursorSnapshot | undefined {
    if (
      this.#state !== "deflate" || this.#primeBits > 0 || !(this.#inflater instanceof RawInflater)
    ) return undefined;
    return {
      checkpoint: this.checkpoint,
      position: this.position,
      next: this.#pendingOffset(),
      inflater: new RawInflater(this.#inflater),
    };
  }

  /**
   * Fills `target` (from `nativeBytes`) with the next bytes; returns fewer only when the gzip
   * data ends. Throws FormatError on corrupt or truncated data (the cursor is then unusable).
   */
  async fill(target: Uint8Array<ArrayBuffer>, signal?: AbortSignal): Promise<number> {
    let filled = 0;
    while (filled < target.length && this.#state !== "end") {
      if (this.#state === "member-end") {
        await this.#nextMember(signal);
        continue;
      }
      if (this.#pending.length === 0 && !await this.#refill(signal, target.length - filled)) {
        throw new FormatError(
          `gzip data ends inside a deflate stream at compressed offset ${this.#next}`,
          "the layer blob is truncated",
        );
      }
      let step;
      try {
        step = this.offThread
          ? await this.#inflater.inflateAsync(this.#pending, target.subarray(filled))
          : this.#inflater.inflate(this.#pending, target.subarray(filled));
      } catch (error) {
        if (!(error instanceof FormatError)) throw error;
        throw new FormatError(
          `${error.message} near compressed offset ${this.#pendingOffset()} ` +
            `(uncompressed ${this.position}, checkpoint ${this.checkpoint})`,
          "the layer blob or its zinfo is damaged",
        );
      }
      this.#pending = this.#pending.subarray(step.consumed);
      filled += step.produced;
      this.position += step.produced;
      this.produced += step.produced;
      if (step.status === Z_STREAM_END) this.#state = "member-end";
      else if (step.consumed === 0 && step.produced === 0) {
        throw new FormatError(`inflate stalled at compressed offset ${this.#pendingOffset()}`);
      }
    }
    return filled;
  }

  /**
   * Fetches the compressed bytes of the rest of the interval (up to the largest fetch) without
   * inflating them, for a reader expected here soon. Not while a fill() runs.
   */
  async prefetch(signal?: AbortSignal): Promise<void> {
    const toIntervalEnd = this.toIntervalEnd;
    this.toIntervalEnd = true;
    try {
      await this.#refill(signal);
    } finally {
      this.toIntervalEnd = toIntervalEnd;
    }
  }

  close(): void {
    this.#state = "end";
    this.#inflater.end();
    this.#pending = nativeBytes(0);
    if (this.#input && !this.#inputBusy) this.#pool?.give(this.#input);
    this.#input = undefined;
  }

  /** Skips the trailer of the member that just ended and the header of the next, if any. */
  async #nextMember(signal?: AbortSignal): Promise<void> {
    while (this.#pending.length < GZIP_TRAILER_BYTES) {
      if (!await this.#refill(signal)) {
        throw new FormatError(`gzip trailer cut short at compressed offset ${this.#next}`);
      }
    }
    this.#pending = this.#pending.subarray(GZIP_TRAILER_BYTES);
    if (this.#pending.length < 2) await this.#refill(signal);
    // Anything but another member after a trailer ends the data (gzip(1) ignores zero padding).
    if (!isGzipMagic(this.#pending)) {
      this.#state = "end";
      return;
    }
    for (;;) {
      const length = gzipHeaderLength(this.#pending, this.#pendingOffset());
      if (length !== undefined) {
        this.#pending = this.#pending.subarray(length);
        break;
      }
      if (!await this.#refill(signal)) {
        throw new FormatError(
          `gzip header cut short at compressed offset ${this.#pendingOffset()}`,
        );
      }
    }
    this.#inflater.reset();
    this.#state = "deflate";
  }

  /**
   * Appends the next compressed bytes to the pending input; false at the end of the blob.
   * `wantedOutput`: output bytes the caller still waits for (sizes the fetch).
   */
  async #refill(signal?: AbortSignal, wantedOutput = 0): Promise<boolean> {
    const back = this.#primeBits > 0 ? 1 : 0;
    // The byte before the checkpoint rides within the caps, so inputs come in the sizes of
    // the pool's other buffers (1 MiB pieces).
    const length = Math.min(this.#fetchLength(wantedOutput, back), this.blob.size - this.#next);
    if (length <= 0) return false;
    const into = (this.blob as { readInto?: ReadInto }).readInto;
    let chunk: Uint8Array;
    if (this.#pending.length === 0 && into) {
      // The cursor's own input buffer, refilled once consumed: a fresh one per fetch made
      // most of a lazy tar.gz mount's short-lived memory.
      if (!this.#input || this.#input.length < length + back) {
        // Two sizes (a random reader's largest fetch, a sequential one's), so the pool has
        // them: a fresh size per fetch was a fresh buffer.
        const size = Math.max(
          length + back <= MAX_FETCH_BYTES ? MAX_FETCH_BYTES : MAX_INTERVAL_FETCH_BYTES,
          length + back,
          this.#input?.length ?? 0,
        );
        if (this.#input) this.#pool?.give(this.#input);
        this.#input = this.#pool?.take(size) ?? nativeBytes(size);
      }
      chunk = this.#input.subarray(0, length + back);
      this.#inputBusy = true;
      await into.call(this.blob, this.#next - back, chunk, signal);
      this.#inputBusy = false;
    } else {
      chunk = await this.blob.read(this.#next - back, length + back, signal);
    }
    if (chunk.length !== length + back) {
      throw new Error(
        `blob read at ${this.#next - back} returned ${chunk.length} of ${length + back} bytes`,
      );
    }
    if (back) {
      this.#inflater.prime(this.#primeBits, chunk[0] >> (8 - this.#primeBits));
      this.#primeBits = 0;
      chunk = chunk.subarray(1);
    }
    this.fetches++;
    this.fetchedBytes += length + back;
    if (this.#pending.length === 0) {
      // Taken as it came (the sources answer with fresh buffers or views of chunks they never
      // write again): a copy per fetch was the mount's most allocated memory.
      this.#pending = chunk as Uint8Array<ArrayBuffer>;
    } else {
      const joined = nativeBytes(this.#pending.length + length);
      joined.set(this.#pending);
      joined.set(chunk, this.#pending.length);
      this.#pending = joined;
    }
    this.#next += length;
    return true;
  }

  /**
   * How much to fetch next (see FETCH_MARGIN): an estimate, capped at the interval's end and
   * at the largest fetch less the `back` byte fetched with it.
   */
  #fetchLength(wantedOutput: number, back: number): number {
    const toEnd = this.#endCompressed - this.#next;
    if (toEnd <= 0) return MIN_FETCH_BYTES; // past the next checkpoint: the data says so
    if (this.toIntervalEnd) return Math.min(toEnd, MAX_INTERVAL_FETCH_BYTES - back);
    wantedOutput = Math.max(wantedOutput, this.fetchUntil - this.position);
    const outLeft = this.#endUncompressed - this.position;
    const ratio = outLeft > 0 && Number.isFinite(outLeft)
      ? (this.#endCompressed - this.#pendingOffset()) / outLeft
      : this.#fallbackRatio;
    const estimate = Math.ceil(wantedOutput * ratio * (1 + FETCH_MARGIN)) + FETCH_SLACK_BYTES -
      this.#pending.length;
    return Math.min(toEnd, MAX_FETCH_BYTES - back, Math.max(MIN_FETCH_BYTES, estimate));
  }

  #pendingOffset(): number {
    return this.#next - this.#pending.length;
  }
}

function copyNative(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = nativeBytes(bytes.length);
  out.set(bytes);
  return out;
}
