/**
 * What a disk-cached blob fetches beyond the chunks its readers wait for, and when: a demand
 * fetch runs on past its read (how far: disk_cache_demand_ahead.ts), callers that pace their
 * fills fetch ahead of their reads (DiskCachedSource.fillAhead), and `--fetch-all` completes the
 * blob in the background (disk_cache_complete.ts) once readers have needed no fetch for a while.
 * Apart from disk_cached.ts because it is the policy of what to fetch; the fetching itself is
 * BlobFiller's (disk_cache_fill.ts).
 */
import { fillTrace } from "./fill_trace.ts";
import type { BlobChunks } from "./disk_cache_chunks.ts";
import type { BlobFiller, FillPause, ReadableEnd } from "./disk_cache_fill.ts";
import { isPresent } from "./disk_cache_present.ts";
import { completeInBackground, type CompletionEnd } from "./disk_cache_complete.ts";
import { DemandAhead } from "./disk_cache_demand_ahead.ts";

/** What fetching ahead needs of its blob (DiskCachedSource hands its own state). */
export interface AheadBlob {
  readonly chunkBytes: number;
  readonly chunkCount: number;
  /** Aborted when the source closes. */
  readonly closing: AbortSignal;
  /** The chunks in the files (disk_cache_chunks.ts): their map says what is missing. */
  readonly chunks: BlobChunks;
  readonly filler: BlobFiller;
  /** The disk failed: nothing more is stored. */
  isDegraded(): boolean;
  /** Set when the blob's bytes were refused: nothing more is fetched for it. */
  corruption(): Error | undefined;
  warn(message: string): void;
}

/** The fetches ahead of one blob (see above). */
export class BlobFetchAhead {
  readonly #blob: AheadBlob;
  /** How far a demand fetch runs past its read (disk_cache_demand_ahead.ts). */
  readonly #demandAhead = new DemandAhead();
  /** When a reader last needed a fetch: background completion waits for quiet. */
  #lastForegroundMs = 0;

  constructor(blob: AheadBlob) {
    this.#blob = blob;
  }

  /** See DiskCachedSource.setDemandAheadBytes. */
  setDemandAheadBytes(bytes: number, blocks = 1): void {
    this.#demandAhead.set(bytes, blocks);
  }

  /**
   * The demand fetch of the chunks a read of [offset, offset + length) misses (`missing`,
   * ascending), run on past them in the same fill; resolves once the missing ones are readable
   * (BlobFiller.fillReadable says how each wait ended).
   */
  fetchForRead(missing: number[], offset: number, length: number): Promise<ReadableEnd[]> {
    this.#lastForegroundMs = Date.now();
    const ahead = this.#aheadOf(missing[missing.length - 1] + 1);
    fillTrace("miss", offset, length, missing.join(","), ahead.length);
    return this.#blob.filler.fillReadable(missing, ahead);
  }

  /** The chunks a demand fetch of a read ending before chunk `from` runs on to. */
  #aheadOf(from: number): number[] {
    const { chunks, filler } = this.#blob;
    return this.#demandAhead.chunksFrom(from, {
      chunkBytes: this.#blob.chunkBytes,
      chunkCount: this.#blob.chunkCount,
      readMap: (start, stop) => chunks.readMap(start, stop),
      isHeld: (byte, c) => isPresent(byte) || filler.isFilling(c) || filler.isWritten(c),
    });
  }

  /** See DiskCachedSource.fillAhead. */
  fillAhead(offset: number, length: number, pause?: FillPause): Promise<void> {
    const done = Promise.resolve();
    const blob = this.#blob;
    if (blob.isDegraded() || blob.corruption() || blob.closing.aborted || length <= 0) return done;
    const first = Math.floor(offset / blob.chunkBytes);
    const end = Math.min(blob.chunkCount, Math.ceil((offset + length) / blob.chunkBytes));
    if (first >= end) return done;
    const missing: number[] = [];
    blob.chunks.readMap(first, end).forEach((byte, i) => {
      if (!isPresent(byte) && !blob.filler.isFilling(first + i)) missing.push(first + i);
    });
    // Nobody waits for readahead: its failure surfaces (if at all) on the read that needs it.
    if (!missing.length) return done;
    fillTrace("ahead", offset, length, missing.length);
    this.#lastForegroundMs = Date.now();
    return blob.filler.fillReadable(missing, [], pause).then(() => {}, () => {});
  }

  /** See DiskCachedSource.completeInBackground. */
  completeInBackground(idleMs?: number, runBytes?: number): Promise<CompletionEnd> {
    const blob = this.#blob;
    return completeInBackground(
      {
        chunkBytes: blob.chunkBytes,
        stopped: () => blob.closing.aborted || blob.isDegraded(),
        presence: () => blob.chunks.readMap(0, blob.chunkCount),
        quietMs: () => blob.filler.fillingCount > 0 ? 0 : Date.now() - this.#lastForegroundMs,
        fill: (chunks) => blob.filler.fill(chunks),
        warn: (message) => blob.warn(message),
      },
      idleMs,
      runBytes,
    );
  }
}
