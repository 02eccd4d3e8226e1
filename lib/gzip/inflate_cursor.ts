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

/** First compressed fetch of a cursor: small, because most random reads want a few KiB. */
const FIRST_FETCH_BYTES = 64 * 1024;
/**
 * Fetches double up to this while a cursor keeps going (sequential reads). Whatever a fetch
 * holds past the piece being made is fetched for nothing when the reader stops there; bulk
 * transfer for sequential reads is the blob cache's readahead (lib/mount/tar_index_source.ts).
 */
const MAX_FETCH_BYTES = 256 * 1024;

type CursorState = "deflate" | "member-end" | "end";

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

  #next: number;
  #pending: Uint8Array<ArrayBuffer> = nativeBytes(0);
  #state: CursorState = "deflate";
  #fetchBytes = FIRST_FETCH_BYTES;
  readonly #inflater: Inflater;

  private constructor(
    readonly checkpoint: number,
    readonly blob: Source,
    inflater: Inflater,
    compressedOffset: number,
    uncompressedOffset: number,
  ) {
    this.#inflater = inflater;
    this.#next = compressedOffset;
    this.position = uncompressedOffset;
  }

  /** A cursor positioned at checkpoint `index` of `zinfo` (bits primed, window set). */
  static async open(
    blob: Source,
    zinfo: Zinfo,
    index: number,
    signal?: AbortSignal,
    kind: InflaterKind = "zlib",
  ): Promise<InflateCursor> {
    const cp = zinfo.checkpoints[index];
    const inflater = kind === "ts" ? new TsInflater() : new RawInflater();
    try {
      if (cp.bits > 0) {
        const [byte] = await blob.read(cp.compressedOffset - 1, 1, signal);
        inflater.prime(cp.bits, byte >> (8 - cp.bits));
      }
      inflater.setDictionary(copyNative(await zinfo.window(index, signal)));
      return new InflateCursor(index, blob, inflater, cp.compressedOffset, cp.uncompressedOffset);
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
      if (this.#pending.length === 0 && !await this.#refill(signal)) {
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

  /** Appends the next compressed bytes to the pending input; false at the end of the blob. */
  async #refill(signal?: AbortSignal): Promise<boolean> {
    const length = Math.min(this.#fetchBytes, this.blob.size - this.#next);
    if (length <= 0) return false;
    const chunk = await this.blob.read(this.#next, length, signal);
    if (chunk.length !== length) {
      throw new Error(`blob read at ${this.#next} returned ${chunk.length} of ${length} bytes`);
    }
    const joined = nativeBytes(this.#pending.length + length);
    joined.set(this.#pending);
    joined.set(chunk, this.#pending.length);
    this.#pending = joined;
    this.#next += length;
    this.#fetchBytes = Math.min(this.#fetchBytes * 2, MAX_FETCH_BYTES);
    return true;
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
