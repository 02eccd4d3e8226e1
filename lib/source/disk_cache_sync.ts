/**
 * The durability half of a blob's fill protocol (disk_cache_fill.ts): chunks a fill marked
 * WRITTEN wait here for one fdatasync of the data file shared by every run written before it,
 * started once the fills have stored nothing for SYNC_QUIET_MS (at most SYNC_DEFER_MAX_MS after
 * the first chunk that waits; at once while whenAllDurable() or close waits), and are then
 * marked PRESENT under read locks that keep evictors and refills off them in between.
 */
import type { FillBlob } from "./disk_cache_fill.ts";
import { fillTrace } from "./fill_trace.ts";
import {
  closeQuietly,
  dataSync,
  F_RDLCK,
  F_WRLCK,
  pwriteAll,
  reopenReadOnly,
  tryLock,
  unlock,
} from "./disk_cache_io.ts";
import { WRITTEN, writtenRuns } from "./disk_cache_boot.ts";
import { after, sleep, type Timer } from "../timers.ts";

/** The map byte of a chunk whose bytes are verified, written and synced. */
export const PRESENT = 1;

/**
 * The data file is synced once no fill stored anything for this long. Cold python start of
 * the host benchmark while ~100 MB of windows are fetched beside it (scripts/bench/python_ab.ts,
 * 5 interleaved rounds, load 1.0-1.5): with a sync per fill and the marks after it, python
 * 0.753 s median (0.739 best); WRITTEN marks and the sync after the fills, 0.673 s (0.584 best).
 * The syncs' writes and flushes shared the disk with python's own reads, and chunks waiting for
 * their sync could not be read by the FUSE reader thread.
 */
export const SYNC_QUIET_MS = 1000;
/**
 * ...but no longer than this after the first chunk that waits: a power loss then costs at
 * most this much fetching again (never wrong bytes), as the kernel's own dirty_expire does.
 */
export const SYNC_DEFER_MAX_MS = 30_000;
/**
 * Rounds of tries to read-lock the WRITTEN chunks a sync will mark PRESENT (an evictor holds
 * a chunk for a moment; a refill after an eviction for a fetch, then its chunks stay WRITTEN).
 */
const MARK_TRIES = 20;

/** The counters a sync batch adds to (part of FillStats). */
export interface SyncStats {
  syncs: number;
}

/** The runs of one blob marked WRITTEN and waiting for their sync, and the syncs in order. */
export class SyncBatch {
  readonly #blob: FillBlob;
  readonly #stats: SyncStats;
  /** Runs [start, stop) marked WRITTEN and waiting for the next sync, and since when. */
  #unsynced: [number, number][] = [];
  #unsyncedSinceMs = 0;
  #syncTimer?: Timer;
  /** The syncs in order: one starts after the one before it ended. */
  #lastSync: Promise<void> = Promise.resolve();
  /** When a fill last stored bytes (performance.now()). */
  #lastStoreMs = -Infinity;
  /** whenAllDurable() calls under way: batches sync at once meanwhile. */
  #flushing = 0;

  constructor(blob: FillBlob, stats: SyncStats) {
    this.#blob = blob;
    this.#stats = stats;
  }

  /** A fill stored bytes now: the sync waits for SYNC_QUIET_MS without another. */
  noteStored(): void {
    this.#lastStoreMs = performance.now();
  }

  /**
   * Resolves once `fillsEnded` has and every run added is synced and marked PRESENT (or left
   * WRITTEN because the sync failed), syncing at once instead of waiting for a quiet moment.
   */
  async flushAfter(fillsEnded: Promise<unknown>): Promise<void> {
    this.#flushing++;
    try {
      await fillsEnded;
      this.#scheduleSync();
      await this.#lastSync;
    } finally {
      this.#flushing--;
    }
  }

  /** Chunks [start, stop) were marked WRITTEN: the next sync marks them PRESENT. */
  add(start: number, stop: number): void {
    if (!this.#unsynced.length) this.#unsyncedSinceMs = performance.now();
    this.#unsynced.push([start, stop]);
    this.#scheduleSync();
  }

  /**
   * Starts the sync of the runs waiting for one when it is due (quiet, too long waited,
   * flushing or closing), else looks again when it will be.
   */
  #scheduleSync(): void {
    this.#syncTimer?.cancel();
    this.#syncTimer = undefined;
    if (!this.#unsynced.length) return;
    const now = performance.now();
    const due = this.#flushing > 0 || this.#blob.closing.aborted
      ? now
      : Math.min(this.#lastStoreMs + SYNC_QUIET_MS, this.#unsyncedSinceMs + SYNC_DEFER_MAX_MS);
    if (due > now) {
      this.#syncTimer = after(due - now, () => this.#scheduleSync());
      return;
    }
    const runs = this.#unsynced;
    this.#unsynced = [];
    // Nobody else awaits a sync begun by the timer: a failure (the descriptors closed under
    // it, say) must not surface as an unhandled rejection, which ends the process.
    this.#lastSync = this.#lastSync.then(() => this.#syncAndMark(runs)).catch((error) =>
      this.#blob.cache.warnOnce(
        `disk cache ${this.#blob.base}: marking synced chunks failed: ${(error as Error).message}`,
      )
    );
  }

  /**
   * One fdatasync for every run written before it, then their WRITTEN bytes become PRESENT.
   * The chunks are read-locked before the sync and until they are marked, through a
   * descriptor of their own (whose locks exclude this process's fillers and evictors as
   * another process's do): a WRITTEN byte seen under that lock was written, with its bytes,
   * before the sync began, and nobody can evict and refill the chunk (WRITTEN again, with
   * bytes after the sync) before it is marked. Readers share the lock. Never rejects: a
   * failed sync turns the chunks absent (the page cache may drop bytes whose writeback
   * failed, and read back other bytes from the disk) and the cache memory-only.
   */
  async #syncAndMark(runs: [number, number][]): Promise<void> {
    this.#stats.syncs++;
    fillTrace("sync", runs.length);
    let lockFd = -1;
    try {
      lockFd = reopenReadOnly(this.#blob.mapFd);
    } catch { /* no /proc: synced, but they stay WRITTEN (good in this boot) */ }
    try {
      const locked = lockFd >= 0 ? await this.#lockWritten(lockFd, runs) : [];
      // Under the locks: exactly these were WRITTEN, with their bytes, before the sync.
      const marked = locked.flatMap(([start, stop]) =>
        writtenRuns(this.#blob.readMap(start, stop), start)
      );
      let synced = true;
      try {
        await (this.#blob.syncData ?? dataSync)(this.#blob.dataFd);
      } catch (error) {
        synced = false;
        this.#blob.degrade();
        this.#blob.cache.warnOnce(
          `disk cache ${this.#blob.cache.dir}: disk sync failed: ${(error as Error).message}; ` +
            "continuing with the memory cache only",
        );
      }
      if (!synced && lockFd < 0) this.#dropWritten(runs);
      // A blob refused since its chunks were written gets none marked present.
      const keep = synced && !this.#blob.corruption();
      for (const [at, stop] of marked) {
        try {
          pwriteAll(this.#blob.mapFd, new Uint8Array(stop - at).fill(keep ? PRESENT : 0), at);
          if (!keep) { for (let c = at; c < stop; c++) this.#blob.lru.delete(c); }
        } catch { /* stays WRITTEN (the disk failed; a sync failure was warned of) */ }
      }
    } finally {
      closeQuietly(lockFd); // drops its locks
    }
    fillTrace("synced", runs.length);
  }

  /**
   * Read-locks (on `lockFd`) the chunks of `runs` that are WRITTEN, whole stretches at once,
   * chunk by chunk where a writer holds some; gives up on a chunk after MARK_TRIES rounds.
   * Returns the locked ranges [start, stop), disjoint.
   */
  async #lockWritten(lockFd: number, runs: [number, number][]): Promise<[number, number][]> {
    const locked: [number, number][] = [];
    let pending = disjoint(runs);
    for (let round = 0; pending.length && round < MARK_TRIES; round++) {
      if (round) await sleep(1);
      const busy: [number, number][] = [];
      for (const [start, stop] of pending) {
        for (const [at, end] of writtenRuns(this.#blob.readMap(start, stop), start)) {
          if (tryLock(lockFd, F_RDLCK, at, end - at)) {
            locked.push([at, end]);
            continue;
          }
          for (let c = at; c < end; c++) {
            if (tryLock(lockFd, F_RDLCK, c, 1)) locked.push([c, c + 1]);
            else busy.push([c, c + 1]);
          }
        }
      }
      pending = busy;
    }
    return locked;
  }

  /** After a failed sync without a lock descriptor: their WRITTEN bytes become absent. */
  #dropWritten(runs: [number, number][]): void {
    for (const [start, stop] of disjoint(runs)) {
      try {
        if (!tryLock(this.#blob.mapFd, F_WRLCK, start, stop - start)) continue;
      } catch {
        return; // the descriptor is gone
      }
      try {
        const map = this.#blob.readMap(start, stop);
        pwriteAll(this.#blob.mapFd, map.map((byte) => byte === WRITTEN ? 0 : byte), start);
      } catch {
        /* the disk failed */
      } finally {
        unlock(this.#blob.mapFd, start, stop - start);
      }
    }
  }
}

/** `runs` [start, stop) sorted and merged where they overlap or touch. */
function disjoint(runs: [number, number][]): [number, number][] {
  const out: [number, number][] = [];
  for (const [start, stop] of [...runs].sort((a, b) => a[0] - b[0])) {
    const last = out[out.length - 1];
    if (last && start <= last[1]) last[1] = Math.max(last[1], stop);
    else out.push([start, stop]);
  }
  return out;
}
