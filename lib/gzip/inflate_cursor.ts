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
  ) {
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
  ): Promise<InflateCursor> {
    const inflater = kind === "ts" ? new TsInflater() : new RawInflater();
    try {
      inflater.setDictionary(copyNative(await zinfo.window(index, signal)));
      return new InflateCursor(index, blob, inflater, zinfo);
    } catch (error) {
      inflater.end();
      throw error;
    }
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
    const length = Math.min(this.#fetchLength(wantedOutput), this.blob.size - this.#next);
    if (length <= 0) return false;
    const back = this.#primeBits > 0 ? 1 : 0;
    const into = (this.blob as { readInto?: ReadInto }).readInto;
    let chunk: Uint8Array;
    if (this.#pending.length === 0 && into) {
      // The cursor's own input buffer, refilled once consumed: a fresh one per fetch made
      // most of a lazy tar.gz mount's short-lived memory.
      if (!this.#input || this.#input.length < length + back) {
        this.#input = nativeBytes(Math.max(length + back, this.#input?.length ?? 0));
      }
      chunk = this.#input.subarray(0, length + back);
      await into.call(this.blob, this.#next - back, chunk, signal);
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

  /** How much to fetch next (see FETCH_MARGIN): an estimate, capped at the interval's end. */
  #fetchLength(wantedOutput: number): number {
    const toEnd = this.#endCompressed - this.#next;
    if (toEnd <= 0) return MIN_FETCH_BYTES; // past the next checkpoint: the data says so
    if (this.toIntervalEnd) return Math.min(toEnd, MAX_INTERVAL_FETCH_BYTES);
    wantedOutput = Math.max(wantedOutput, this.fetchUntil - this.position);
    const outLeft = this.#endUncompressed - this.position;
    const ratio = outLeft > 0 && Number.isFinite(outLeft)
      ? (this.#endCompressed - this.#pendingOffset()) / outLeft
      : this.#fallbackRatio;
    const estimate = Math.ceil(wantedOutput * ratio * (1 + FETCH_MARGIN)) + FETCH_SLACK_BYTES -
      this.#pending.length;
    return Math.min(toEnd, MAX_FETCH_BYTES, Math.max(MIN_FETCH_BYTES, estimate));
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
