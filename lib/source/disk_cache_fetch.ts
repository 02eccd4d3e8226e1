/**
 * One run of a fill, under its write lock (BlobFiller, disk_cache_fill.ts, takes it): room
 * reserved in the cache (DiskCache.reserve) and allocated in the data file, the bytes fetched
 * from the source below (streamed in pieces, disk_cache_stream.ts), verified, written where they
 * belong and marked WRITTEN, to be synced and marked PRESENT later (disk_cache_sync.ts). A run
 * that ends unmarked gives its room back.
 */
import { WrongBytesError } from "./wrong_bytes.ts";
import type { FillBlob, FillPause, FillStats } from "./disk_cache_fill.ts";
import { streamInPieces } from "./disk_cache_stream.ts";
import { fillTrace, nextFillId } from "./fill_trace.ts";
import type { Reservation } from "./disk_cache_room.ts";
import { allocateAhead, othersWaitFor, punchHole, pwriteAll } from "./disk_cache_io.ts";
import { WRITTEN } from "./disk_cache_boot.ts";
import type { SyncBatch } from "./disk_cache_sync.ts";
import { forgetSum } from "./disk_cache_files.ts";
import { useStamp } from "./disk_cache_chunks.ts";

/** Checks a fetched chunk before it is stored (chunk-digest tables plug in here). */
export type VerifyChunk = (chunkIndex: number, bytes: Uint8Array) => boolean | Promise<boolean>;

/** A chunk failed `verify`: it is not stored and the read fails (never wrong bytes). */
export class ChunkVerifyError extends WrongBytesError {}

/** A write or sync of the cache files failed: the cache goes memory-only. */
class DiskWriteError extends Error {}

/**
 * The cache has no room for a run (its bound, --disk-cache-keep-free; DiskCache.reserve):
 * nothing was fetched or stored, the reader gets its bytes without them being kept.
 */
export class NoRoomError extends Error {}

/** What the fill that runs a RunFetcher tells it and is told. */
export interface RunFetcherHooks {
  /** Chunk `index` is verified and in the data file: readers here may read it now. */
  readable(index: number): void;
  /** Chunks being filled by this process now (for the fill trace). */
  fillingCount(): number;
}

export class RunFetcher {
  readonly #blob: FillBlob;
  readonly #stats: FillStats;
  /** The durability of what the fills wrote (disk_cache_sync.ts). */
  readonly #syncs: SyncBatch;
  readonly #hooks: RunFetcherHooks;
  /**
   * Chunks verified and written by a fill of this process that holds their write lock and has
   * not marked them WRITTEN yet: readable here, absent for everyone else.
   */
  readonly #written = new Set<number>();

  constructor(blob: FillBlob, stats: FillStats, syncs: SyncBatch, hooks: RunFetcherHooks) {
    this.#blob = blob;
    this.#stats = stats;
    this.#syncs = syncs;
    this.#hooks = hooks;
  }

  /** Chunk `index` is verified and written by a fill of ours, not marked yet (see above). */
  isWritten(index: number): boolean {
    return this.#written.has(index);
  }

  /**
   * Chunks [start, stop) fetched from the inner source and verified as a fill's are, for the
   * reader only: nothing is written or marked (another process's fill holds them).
   */
  async fetchUnstored(start: number, stop: number, signal?: AbortSignal): Promise<Uint8Array> {
    if (this.#blob.closing.aborted) throw new Error("disk cache closed");
    const offset = start * this.#blob.chunkBytes;
    const length = Math.min(this.#blob.size, stop * this.#blob.chunkBytes) - offset;
    this.#stats.fetches++;
    this.#stats.fetchedBytes += length;
    const bytes = await this.#readRun(
      offset,
      length,
      signal ? AbortSignal.any([this.#blob.closing, signal]) : this.#blob.closing,
    );
    await this.#verifyRun(offset, bytes);
    return bytes;
  }

  /**
   * Resolves true when the chunks were marked WRITTEN (and wait for the next sync). Room for
   * them is reserved in the cache first (allocated in the data file): when only part of the
   * run fits, that part is filled from its start (the chunks a reader waits for come first)
   * and the rest is left absent; when none does, NoRoomError.
   */
  async fetchAndStore(start: number, stop: number, pause?: FillPause): Promise<boolean> {
    // A run split in gaps fetches its later ones after awaits: none starts after close.
    if (this.#blob.closing.aborted) throw new Error("disk cache closed");
    const offset = start * this.#blob.chunkBytes;
    let length = Math.min(this.#blob.size, stop * this.#blob.chunkBytes) - offset;
    let room: Reservation | undefined;
    let marked = false;
    const id = nextFillId();
    try {
      try {
        // Under the run's write lock, before any byte of it is written: a digest check of the
        // whole blob no longer holds once these bytes change (disk_cache_sum.ts).
        forgetSum(this.#blob.base);
        room = this.#blob.cache.reserve(
          length,
          this.#blob.chunkBytes,
          (bytes) => allocateAhead(this.#blob.dataFd, offset, bytes),
        );
      } catch (cause) {
        throw new DiskWriteError("disk write failed", { cause });
      }
      if (!room) {
        throw new NoRoomError(
          `no room in the disk cache for chunks ${start}..${stop - 1} of ${this.#blob.base}`,
        );
      }
      if (room.bytes < length) {
        length = room.bytes;
        stop = start + length / this.#blob.chunkBytes;
      }
      this.#stats.fetches++;
      this.#stats.fetchedBytes += length;
      fillTrace("fetch", id, offset, length, this.#hooks.fillingCount());
      await this.#fetchInto(room, offset, length, id, pause);
      fillTrace("stored", id);
      // Refused meanwhile (refuseBytes, the whole digest): its chunks stay unmarked, whatever
      // this fill brought (dropAll marked them absent and cannot wait for fills of this process).
      if (this.#blob.isDegraded() || this.#blob.corruption()) return false;
      // Verified and in the page cache: WRITTEN (this boot's, see disk_cache_boot.ts), PRESENT
      // after the next sync. The write lock is still ours, so no evictor is in between.
      try {
        pwriteAll(this.#blob.mapFd, new Uint8Array(stop - start).fill(WRITTEN), start);
      } catch (cause) {
        throw new DiskWriteError("disk write failed", { cause });
      }
      marked = true;
      this.#syncs.add(start, stop);
    } catch (error) {
      if (!(error instanceof DiskWriteError)) throw error;
      this.#blob.degrade();
      this.#blob.cache.warnOnce(
        `disk cache ${this.#blob.cache.dir}: ${(error.cause as Error).message}; ` +
          "continuing with the memory cache only",
      );
      return false;
    } finally {
      for (let c = start; c < stop; c++) this.#written.delete(c);
      if (room && !marked) this.#giveBack(offset, room);
      room?.end(marked);
    }
    for (let c = start; c < stop; c++) this.#blob.lru.set(c, useStamp());
    this.#blob.marked?.();
    return true;
  }

  /** The run's body from the inner source, verified and written piece by piece into `room`. */
  async #fetchInto(
    room: Reservation,
    offset: number,
    length: number,
    id: number,
    pause?: FillPause,
  ): Promise<void> {
    if (!this.#blob.inner.readTo) {
      await this.#storeRun(room, offset, await this.#readRun(offset, length), id);
      return;
    }
    const start = offset / this.#blob.chunkBytes;
    const stop = start + Math.ceil(length / this.#blob.chunkBytes);
    await streamInPieces(
      this.#blob.inner,
      offset,
      length,
      this.#blob.chunkBytes,
      async (at, bytes) => {
        await this.#storeRun(room, at, bytes, id);
        // Between pieces only: the last one's run is marked and unlocked without a wait.
        if (pause && at + bytes.length < offset + length) {
          await pause(
            this.#blob.closing,
            () => othersWaitFor(this.#blob.mapFd, start, stop - start),
          );
        }
      },
      this.#blob.closing,
      id,
    );
  }

  /**
   * A run that reserved `room` at `offset` ended unmarked (failed, closed, the disk broke):
   * its blocks, allocated or partly written, are punched out again, still under its write
   * lock, so no space is held by chunks nobody can read (best effort on a failing disk).
   */
  #giveBack(offset: number, room: Reservation): void {
    try {
      punchHole(this.#blob.dataFd, offset, room.bytes);
    } catch { /* the disk failed (degraded), or the file is gone: a scan counts what is left */ }
  }

  async #readRun(
    offset: number,
    length: number,
    signal = this.#blob.closing,
  ): Promise<Uint8Array> {
    const bytes = await this.#blob.inner.read(offset, length, signal);
    if (bytes.length !== length) {
      throw new Error(`source returned ${bytes.length} bytes for a read of ${length}`);
    }
    return bytes;
  }

  /**
   * Verifies whole chunks at `offset` (chunk-aligned) and writes them to the data file, into
   * the room reserved for them.
   */
  async #storeRun(room: Reservation, offset: number, bytes: Uint8Array, id = 0): Promise<void> {
    fillTrace("piece", id, offset, bytes.length);
    await this.#verifyRun(offset, bytes);
    fillTrace("verified", id, offset);
    if (this.#blob.isDegraded()) return;
    try {
      pwriteAll(this.#blob.dataFd, bytes, offset);
      room.wrote(bytes.length);
      this.#syncs.noteStored();
      fillTrace("written", id, offset);
    } catch (error) {
      throw new DiskWriteError("disk write failed", { cause: error });
    }
    // Verified and in the page cache: readable here now, durable (and marked) later.
    const first = offset / this.#blob.chunkBytes;
    const stop = Math.min(
      this.#blob.chunkCount,
      Math.ceil((offset + bytes.length) / this.#blob.chunkBytes),
    );
    this.#blob.stored?.(first, stop);
    for (let c = first; c < stop; c++) {
      this.#written.add(c);
      this.#hooks.readable(c);
    }
  }

  /** Checks whole chunks at `offset` (chunk-aligned) with `verify`; ChunkVerifyError if one fails. */
  async #verifyRun(offset: number, bytes: Uint8Array): Promise<void> {
    if (!this.#blob.verify) return;
    const first = offset / this.#blob.chunkBytes;
    for (let from = 0; from < bytes.length; from += this.#blob.chunkBytes) {
      const chunk = bytes.subarray(from, Math.min(bytes.length, from + this.#blob.chunkBytes));
      const index = first + from / this.#blob.chunkBytes;
      if (!(await this.#blob.verify(index, chunk))) {
        throw new ChunkVerifyError(`chunk ${index} of ${this.#blob.base} failed verification`);
      }
    }
  }
}
