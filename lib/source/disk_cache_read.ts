/**
 * The read path of a disk-cached blob (DiskCachedSource.readInto): chunks marked present, or
 * written by a fill of this process, are copied out of the data file under their read locks
 * (disk_cache_chunks.ts); missing ones are fetched first (disk_cache_ahead.ts), kept ones not
 * checked in this process are checked first (disk_cache_kept_check.ts). A read that keeps losing
 * its chunks to eviction, or whose chunks another process's stopped fill holds, or that finds no
 * room in the cache (DiskCache.reserve), or whose files fail under it, gets its bytes from the
 * inner source. Also the blob's recency, which eviction
 * goes by: its chunks' order (lru), the map's mtime, lastUsedMs.
 */
import { abortable } from "./abortable.ts";
import { SysError } from "../../ffi/libc.ts";
import { fillTrace } from "./fill_trace.ts";
import type { Source } from "./source.ts";
import { type BlobChunks, type BlobFiles, useStamp } from "./disk_cache_chunks.ts";
import type { BlobFiller } from "./disk_cache_fill.ts";
import { isPresent } from "./disk_cache_present.ts";
import { NoRoomError } from "./disk_cache_fetch.ts";
import { sleep } from "../timers.ts";
import type { BlobFetchAhead } from "./disk_cache_ahead.ts";
import type { KeptChunkCheck } from "./disk_cache_kept_check.ts";
import { HeldByOthersError } from "./disk_cache_held.ts";
import type { CheckedChunks } from "./stored_check.ts";
import { servedChunks } from "./disk_cache_direct.ts";

/** Reads that lost their chunks to eviction this often in a row are served from the inner source. */
const MAX_ATTEMPTS = 5;
/** The map's mtime is the blob's last use for eviction; refreshed at most this often. */
const TOUCH_EVERY_MS = 60_000;

/** What the read path needs of its blob (DiskCachedSource hands its own state). */
export interface ReadBlob extends BlobFiles {
  readonly inner: Source;
  readonly chunks: BlobChunks;
  readonly filler: BlobFiller;
  readonly ahead: BlobFetchAhead;
  /** The chunks checked in this process, when a source below checks bytes (stored_check.ts). */
  readonly checked?: CheckedChunks;
  /** Their check (disk_cache_kept_check.ts), with `checked`. */
  readonly keptCheck?: KeptChunkCheck;
  /** The disk failed: missing bytes come from the inner source without being stored. */
  isDegraded(): boolean;
  /** Called once the files failed under a read (after which isDegraded() is true). */
  degrade(): void;
  /** Set when the blob's bytes were refused: the error every read rejects with. */
  corruption(): Error | undefined;
  warn(message: string): void;
}

/** The counters the read path adds to (part of DiskCacheStats). */
export interface ReadStats {
  diskHitBytes: number;
  fetchedBytes: number;
  fetches: number;
  readsBeforeDurable: number;
  readsWaitedForSync: number;
}

/** The reads of one blob (see above). */
export class BlobReader {
  readonly #blob: ReadBlob;
  readonly #stats: ReadStats;
  #touchedMs = 0;
  lastUsedMs = Date.now();

  constructor(blob: ReadBlob, stats: ReadStats) {
    this.#blob = blob;
    this.#stats = stats;
  }

  /** See DiskCachedSource.readInto. */
  async readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
    const blob = this.#blob;
    const length = dest.length;
    this.#assertOpen();
    const corrupt = blob.corruption();
    if (corrupt) throw corrupt;
    if (
      !Number.isSafeInteger(offset) || offset < 0 || offset + length > blob.size
    ) throw new RangeError(`read of ${length} bytes at ${offset} outside 0..${blob.size}`);
    if (length === 0) return;
    this.lastUsedMs = Date.now();
    const first = Math.floor(offset / blob.chunkBytes);
    const end = Math.floor((offset + length - 1) / blob.chunkBytes) + 1;
    try {
      if (await this.#readCached(offset, dest, first, end, signal)) return;
    } catch (error) {
      if (error instanceof HeldByOthersError || error instanceof NoRoomError) {
        // A fill of another process (stopped?) holds some of these chunks, or the cache has no
        // room for them: they stay absent, this reader gets its bytes from the inner source,
        // checked as a fill's are.
        const from = first * blob.chunkBytes;
        const bytes = await blob.filler.fetchUnstored(first, end, signal);
        dest.set(bytes.subarray(offset - from, offset - from + length));
        return;
      }
      if (!(error instanceof SysError)) throw error;
      // The cache files failed under us (truncated, an I/O error of the disk): this blob goes
      // on from the inner source, as after a failed write; what was cached is not trusted.
      blob.degrade();
      blob.warn(`disk cache ${blob.base}: ${error.message}; continuing with the memory cache only`);
    }
    // Degraded (or starved by eviction under a tiny bound): the inner source, nothing stored.
    this.#assertOpen();
    this.#stats.fetches++;
    this.#stats.fetchedBytes += length;
    dest.set(await blob.inner.read(offset, length, signal));
  }

  /** The cached read of readInto: true when `dest` was filled from the cache files. */
  async #readCached(
    offset: number,
    dest: Uint8Array,
    first: number,
    end: number,
    signal?: AbortSignal,
  ): Promise<boolean> {
    const blob = this.#blob;
    const length = dest.length;
    let fetched = false;
    for (let attempt = 0; attempt < MAX_ATTEMPTS && !blob.isDegraded(); attempt++) {
      // Closed while this read waited (a fill, a busy lock): its descriptors may be gone.
      this.#assertOpen();
      const map = blob.chunks.readMap(first, end);
      const missing: number[] = [];
      map.forEach((byte, i) =>
        !isPresent(byte) && !blob.filler.isWritten(first + i) && missing.push(first + i)
      );
      if (missing.length) {
        // Gone (evicted by some process): whatever is there later is checked again.
        for (const c of missing) blob.checked?.forget(c);
        fetched = true;
        const ends = await abortable(blob.ahead.fetchForRead(missing, offset, length), signal);
        fillTrace("miss-ready", offset, length, ends.join(","));
        if (ends.includes("synced")) this.#stats.readsWaitedForSync++;
        continue;
      }
      const unchecked = blob.checked?.uncheckedIn(first, end) ?? [];
      if (unchecked.length && !(await abortable(blob.keptCheck!.check(unchecked), signal))) {
        continue;
      }
      const read = blob.chunks.readKept(first, end, dest, offset);
      if (read === "busy") {
        await abortable(sleep(1), signal); // a filler or evictor holds some of these chunks
        continue;
      }
      if (read === "missing") continue; // an evictor dropped a chunk since
      if (read === "early") this.#stats.readsBeforeDurable++;
      if (!fetched) this.#stats.diskHitBytes += length;
      for (let i = first; i < end; i++) this.#used(i);
      this.touch();
      return true;
    }
    return false;
  }

  /** See DiskCachedSource.noteDirectReads. */
  noteDirectReads(ranges: readonly number[]): void {
    const blob = this.#blob;
    if (blob.closing.aborted) return;
    this.#stats.diskHitBytes += servedChunks(
      ranges,
      blob.size,
      blob.chunkBytes,
      (c) => this.#used(c),
    );
    this.lastUsedMs = Date.now();
    this.touch();
  }

  /** Chunk `index` was read: the last to be evicted now. */
  #used(index: number): void {
    this.#blob.lru.delete(index);
    this.#blob.lru.set(index, useStamp());
  }

  /** Refreshes the map's mtime (the blob's last use for eviction), at most every TOUCH_EVERY_MS. */
  touch(): void {
    const now = Date.now();
    if (now - this.#touchedMs < TOUCH_EVERY_MS) return;
    this.#touchedMs = now;
    try {
      Deno.utimeSync(`${this.#blob.base}.map`, new Date(now), new Date(now));
    } catch { /* evicted or replaced: the next open recreates it */ }
  }

  #assertOpen(): void {
    if (this.#blob.closing.aborted) throw new Error("read from a closed DiskCachedSource");
  }
}
