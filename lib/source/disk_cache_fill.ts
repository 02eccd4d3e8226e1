/**
 * The fill protocol of one disk-cached blob (disk_cached.ts has the whole picture,
 * disk_cache_read.ts the read path; disk_cache.ts the layout and locking rules): missing chunks
 * are fetched as runs (one underlying read per run, written where they belong, no per-chunk
 * copies) under the map's write lock — a run another process holds is waited for
 * (OTHERS_FILL_WAIT_MS at most, see disk_cache_held.ts), not repeated — verified, written and
 * marked WRITTEN (disk_cache_fetch.ts); the lock is then released and every reader of the host
 * may read them. This file runs the fills: which runs, joined by whom, under which lock.
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
import type { Source } from "./source.ts";
import type { BlobFiles } from "./disk_cache_chunks.ts";
import type { DiskCache } from "./disk_cache.ts";
import { F_WRLCK, markWaiting, tryLock, unlock } from "./disk_cache_io.ts";
import { sleep } from "../timers.ts";
import { SyncBatch } from "./disk_cache_sync.ts";
import { HeldChunks, OTHERS_FILL_WAIT_MS } from "./disk_cache_held.ts";
import { chunkRuns, isPresent } from "./disk_cache_present.ts";
import { RunFetcher, type VerifyChunk } from "./disk_cache_fetch.ts";

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
  /** Fetches, verifies, writes and marks the runs locked here (disk_cache_fetch.ts). */
  readonly #fetcher: RunFetcher;
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
    this.#fetcher = new RunFetcher(blob, stats, this.#syncs, {
      readable: (index) => this.#readable.get(index)?.settle("written"),
      fillingCount: () => this.#filling.size,
    });
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
    return this.#fetcher.isWritten(index);
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
          if (await this.#fetcher.fetchAndStore(at, at + count, pause)) synced = true;
        } finally {
          unlock(this.#blob.mapFd, at, count);
        }
      }
    } finally {
      unlock(this.#blob.mapFd, start, stop - start);
    }
    return synced;
  }

  /** RunFetcher.fetchUnstored (disk_cache_fetch.ts): chunks for a reader only, not stored. */
  fetchUnstored(start: number, stop: number, signal?: AbortSignal): Promise<Uint8Array> {
    return this.#fetcher.fetchUnstored(start, stop, signal);
  }
}
