/**
 * The fill protocol of one disk-cached blob (disk_cached.ts has the whole picture,
 * disk_cache_read.ts the read path; disk_cache.ts the layout and locking rules): missing chunks are fetched as runs (one
 * underlying read per run, written where they belong, no per-chunk copies) under the map's
 * write lock — a run another process holds is waited for (OTHERS_FILL_WAIT_MS at most, see
 * disk_cache_held.ts), not repeated — verified, written and marked WRITTEN; the lock is then released and every reader
 * of the host may read them.
 *
 * Durability comes later and together: the data file is synced once the fills have stored
 * nothing for SYNC_QUIET_MS (at most SYNC_DEFER_MAX_MS after the first chunk that waits; at
 * once for whenAllDurable() and close), and only then are the chunks marked PRESENT. Until
 * then their bytes are in the page cache, which survives a crash of any process but not a
 * reboot: a WRITTEN byte is trusted only in the boot `<base>.boot` names (disk_cache_boot.ts),
 * so neither a kill -9 nor a power loss leaves a chunk marked with other bytes. A sync per
 * fill took the disk from the application being started (see SYNC_QUIET_MS). That batching
 * and the marking after the sync are disk_cache_sync.ts.
 */
import { WrongBytesError } from "./wrong_bytes.ts";
import type { Source } from "./source.ts";
import type { BlobFiles } from "./disk_cache_chunks.ts";
import type { DiskCache } from "./disk_cache.ts";
import { streamInPieces } from "./disk_cache_stream.ts";
import { fillTrace, nextFillId } from "./fill_trace.ts";
import type { Reservation } from "./disk_cache_room.ts";
import {
  allocateAhead,
  byteRuns,
  F_WRLCK,
  markWaiting,
  othersWaitFor,
  punchHole,
  pwriteAll,
  sleep,
  tryLock,
  unlock,
} from "./disk_cache_io.ts";
import { WRITTEN } from "./disk_cache_boot.ts";
import { PRESENT, SyncBatch } from "./disk_cache_sync.ts";
import { HeldChunks, OTHERS_FILL_WAIT_MS } from "./disk_cache_held.ts";
import { forgetSum } from "./disk_cache_files.ts";

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

export { PRESENT, WRITTEN };

/** A chunk readers may read: PRESENT, or WRITTEN in this boot (the opener cleared older ones). */
export function isPresent(byte: number): boolean {
  return byte === PRESENT || byte === WRITTEN;
}

const POLL_MS = 10;

/**
 * How a reader's wait for a chunk ended: once written (before its mark), at the end of the
 * fill that marked it, or at the end of a fill that did not (another process's chunks).
 */
export type ReadableEnd = "written" | "synced" | "done";

interface Readable {
  promise: Promise<ReadableEnd>;
  /** First call wins; a boolean is the run's end (true: it synced). */
  settle(end: ReadableEnd | boolean): void;
  fail(error: unknown): void;
}

function newReadable(): Readable {
  let resolve!: (end: ReadableEnd) => void, reject!: (error: unknown) => void;
  const promise = new Promise<ReadableEnd>((yes, no) => {
    resolve = yes;
    reject = no;
  });
  // Nobody may be waiting (a fill ahead): a failure must not surface as unhandled.
  promise.catch(() => {});
  return {
    promise,
    settle: (end) => resolve(end === true ? "synced" : end === false ? "done" : end),
    fail: reject,
  };
}

/** [chunk, count] runs of chunks in `map` (which starts at chunk `first`) that are PRESENT or not. */
export function chunkRuns(map: Uint8Array, first: number, present: boolean): [number, number][] {
  return byteRuns(map, first, (byte) => isPresent(byte) === present)
    .map(([start, stop]) => [start, stop - start]);
}

export { sleep };

/** What a filler needs of its blob (DiskCachedSource hands its own state). */
export interface FillBlob extends BlobFiles {
  readonly cache: DiskCache;
  readonly inner: Source;
  readonly verify?: VerifyChunk;
  readMap(start: number, stop: number): Uint8Array;
  /** The disk failed: nothing more is written. */
  isDegraded(): boolean;
  /** Called once a write or sync failed (after which isDegraded() is true). */
  degrade(): void;
  /** Set when the complete blob failed its digest: every fill rejects with it. */
  corruption(): Error | undefined;
  /** Chunks [first, end) were fetched (through the checks of the source below) and written. */
  stored?(first: number, end: number): void;
  /** Chunks were marked WRITTEN by a fill here: the blob may be complete now. */
  marked?(): void;
  /** fdatasync of the data file (default dataSync; tests hold or fail it). */
  syncData?: (fd: number) => Promise<void>;
}

/** The counters a filler adds to (part of DiskCacheStats). */
export interface FillStats {
  fetchedBytes: number;
  fetches: number;
  waitedForOthers: number;
  syncs: number;
}

/**
 * A background fill's pause between the pieces of its body (DiskCachedSource.fillAhead): the
 * stream stops being read (the registry's send waits on the socket) while the mount serves a
 * walk, so what was in flight when it began costs it no CPU. Resolves when the fill may go on;
 * it must bound its own wait, as readers may wait for these chunks: `othersWaiting` says whether
 * another process (another descriptor) waits for them now (markWaiting); one in this process
 * reads file data, which ends a walk's pause by itself.
 */
export type FillPause = (closing: AbortSignal, othersWaiting: () => boolean) => Promise<void>;

export class BlobFiller {
  readonly #blob: FillBlob;
  readonly #stats: FillStats;
  readonly #filling = new Map<number, Promise<void>>();
  /**
   * The run a fill is starting, before its promise is in #filling: its first steps (lock,
   * reservation, which may evict and reclaim) run before fill() can record it, and they must
   * count it as filling, or a drop here would take and release its lock (same descriptor).
   */
  #starting?: [number, number];
  /** Per chunk being filled here: settles once its bytes are verified and in the file. */
  readonly #readable = new Map<number, Readable>();
  /**
   * Chunks verified and written by a fill of this process that holds their write lock and has
   * not marked them WRITTEN yet: readable here, absent for everyone else.
   */
  readonly #written = new Set<number>();
  /** Chunks per unit the inner source reads whole (1: any range). */
  readonly #innerUnitChunks: number;
  /** The durability of what the fills wrote (disk_cache_sync.ts). */
  readonly #syncs: SyncBatch;
  /** Chunks another process held past a wait here (disk_cache_held.ts). */
  readonly #held: HeldChunks;

  constructor(blob: FillBlob, stats: FillStats) {
    this.#blob = blob;
    this.#stats = stats;
    this.#syncs = new SyncBatch(blob, stats);
    this.#held = new HeldChunks(blob);
    const unit = (blob.inner as { chunkBytes?: unknown }).chunkBytes;
    this.#innerUnitChunks = typeof unit === "number" && unit > blob.chunkBytes &&
        unit % blob.chunkBytes === 0
      ? unit / blob.chunkBytes
      : 1;
  }

  /** A fill of this process has chunk `index` under way. */
  isFilling(index: number): boolean {
    return this.#filling.has(index) ||
      (this.#starting !== undefined && index >= this.#starting[0] && index < this.#starting[1]);
  }

  /** Chunk `index` is verified and written by a fill of ours, not marked yet (see above). */
  isWritten(index: number): boolean {
    return this.#written.has(index);
  }

  /** Chunks being filled by this process now. */
  get fillingCount(): number {
    return this.#filling.size;
  }

  /** The fills under way now (each settles when its chunks are marked WRITTEN, or failed). */
  fills(): Promise<void>[] {
    return [...new Set(this.#filling.values())];
  }

  /**
   * Resolves once the fills under way now have ended and every chunk this filler marked
   * WRITTEN is synced and marked PRESENT (or left WRITTEN because the sync failed), syncing at
   * once instead of waiting for a quiet moment.
   */
  async whenAllDurable(): Promise<void> {
    await this.#syncs.flushAfter(Promise.allSettled(this.fills()));
  }

  /**
   * Fills the missing chunks, joining fills of this process already under way. `pause`: a
   * background fill's, awaited between the pieces of its new runs (FillPause).
   */
  fill(wanted: number[], pause?: FillPause): Promise<unknown> {
    // After close nothing starts: no lock, no fetch, no map read (the descriptors may be gone).
    if (this.#blob.closing.aborted) return Promise.reject(new Error("disk cache closed"));
    if (this.#blob.corruption()) return Promise.reject(this.#blob.corruption());
    const missing = this.#widen(wanted);
    const waits: Promise<void>[] = [];
    for (let i = 0; i < missing.length;) {
      const pending = this.#filling.get(missing[i]);
      if (pending) {
        waits.push(pending);
        i++;
        continue;
      }
      let j = i + 1;
      while (
        j < missing.length && missing[j] === missing[j - 1] + 1 && !this.#filling.has(missing[j])
      ) j++;
      const start = missing[i], stop = missing[j - 1] + 1;
      for (let c = start; c < stop; c++) this.#readable.set(c, newReadable());
      this.#starting = [start, stop];
      let started: Promise<boolean>;
      try {
        started = this.#fillRun(start, stop, pause);
      } finally {
        this.#starting = undefined;
      }
      const run = started.then(
        (synced) => {
          for (let c = start; c < stop; c++) this.#readable.get(c)?.settle(synced);
        },
        (error) => {
          for (let c = start; c < stop; c++) this.#readable.get(c)?.fail(error);
          throw error;
        },
      ).finally(() => {
        for (let c = start; c < stop; c++) {
          this.#filling.delete(c);
          this.#readable.delete(c);
        }
      });
      for (let c = start; c < stop; c++) this.#filling.set(c, run);
      waits.push(run);
      i = j;
    }
    return Promise.all(waits);
  }

  /**
   * Fills the missing chunks like fill(), but resolves as soon as the wanted ones are verified
   * and written (readable from the file), not when they are durable and marked: how each
   * chunk's wait ended ("written" before its sync, "synced" after one, "done" without one).
   * `ahead` (ascending, after the wanted ones): chunks fetched in the same run, not waited for.
   */
  fillReadable(
    wanted: number[],
    ahead: readonly number[] = [],
    pause?: FillPause,
  ): Promise<ReadableEnd[]> {
    // Refused here too: with no fill under way the waits below would resolve "done".
    if (this.#blob.closing.aborted) return Promise.reject(new Error("disk cache closed"));
    // The full fill's failure reaches the reader through the chunk's own promise below.
    // Chunks `ahead` join the same run (one fetch, streamed in order): nobody waits for them.
    this.fill(ahead.length ? [...wanted, ...ahead] : wanted, pause).catch(() => {});
    return Promise.all(
      wanted.map((c) =>
        this.#readable.get(c)?.promise ??
          (this.#filling.get(c)?.then(() => "done" as const) ?? Promise.resolve("done" as const))
      ),
    );
  }

  /**
   * Adds the absent chunks sharing an inner unit with a wanted one: an inner source that reads
   * whole units (a VerifiedSource hashes 1 MiB table chunks) fetches the unit for any part of
   * it, so the rest is stored now instead of being fetched again later (a cold mount of the
   * benchmark image made the registry send 2.2× the image at 256 KiB disk chunks).
   */
  #widen(wanted: number[]): number[] {
    const k = this.#innerUnitChunks;
    if (k <= 1 || wanted.length === 0) return wanted;
    const units = new Set(wanted.map((c) => Math.floor(c / k)));
    const lo = Math.floor(wanted[0] / k) * k;
    const hi = Math.min(this.#blob.chunkCount, (Math.floor(wanted[wanted.length - 1] / k) + 1) * k);
    const map = this.#blob.readMap(lo, hi);
    const chunks: number[] = [];
    for (let c = lo; c < hi; c++) {
      if (!isPresent(map[c - lo]) && units.has(Math.floor(c / k))) chunks.push(c);
    }
    return chunks;
  }

  /**
   * Takes the write lock of chunks [start, stop) (waiting for another filler), fills the gaps.
   * Resolves true when it synced data of its own (the last step before the map says present).
   */
  async #fillRun(start: number, stop: number, pause?: FillPause): Promise<boolean> {
    let waited = false;
    try {
      let giveUpAtMs = Infinity;
      while (!tryLock(this.#blob.mapFd, F_WRLCK, start, stop - start)) {
        if (!waited) {
          if (this.#held.stillHeld(start, stop)) {
            // Filled since (the lock seen may be the sync's that marks them): nothing to do.
            if (this.#blob.readMap(start, stop).every(isPresent)) return false;
            throw this.#held.error(start, stop);
          }
          this.#stats.waitedForOthers++;
          // The filler may be pausing for a walk: it goes on at once for a waiter.
          markWaiting(this.#blob.mapFd, start, stop - start, true);
          giveUpAtMs = performance.now() +
            (this.#blob.cache.othersFillWaitMs ?? OTHERS_FILL_WAIT_MS);
        }
        waited = true;
        await sleep(POLL_MS);
        if (this.#blob.closing.aborted) throw new Error("disk cache closed");
        if (this.#blob.readMap(start, stop).every(isPresent)) return false;
        if (performance.now() >= giveUpAtMs) throw this.#held.gaveUpWaiting(start, stop);
      }
      this.#held.seenFree(start, stop);
    } finally {
      if (waited && !this.#blob.closing.aborted) {
        markWaiting(this.#blob.mapFd, start, stop - start, false);
      }
    }
    let synced = false;
    try {
      // Gaps (chunks another process filled meanwhile split the run) go one by one. The lock
      // is held only on what is still to be fetched: a sync marking chunks PRESENT read-locks
      // them through another descriptor (#syncAndMark), which this lock would keep off.
      const map = this.#blob.readMap(start, stop);
      for (const [at, count] of chunkRuns(map, start, true)) unlock(this.#blob.mapFd, at, count);
      for (const [at, count] of chunkRuns(map, start, false)) {
        try {
          if (await this.#fetchAndStore(at, at + count, pause)) synced = true;
        } finally {
          unlock(this.#blob.mapFd, at, count);
        }
      }
    } finally {
      unlock(this.#blob.mapFd, start, stop - start);
    }
    return synced;
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
  async #fetchAndStore(start: number, stop: number, pause?: FillPause): Promise<boolean> {
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
      fillTrace("fetch", id, offset, length, this.#filling.size);
      await this.#fetchInto(room, offset, length, id, pause);
      fillTrace("stored", id);
      if (this.#blob.isDegraded()) return false;
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
    for (let c = start; c < stop; c++) this.#blob.lru.set(c, true);
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
      this.#readable.get(c)?.settle("written");
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
