/**
 * Chunks of a blob another process's fill holds for too long (stopped by SIGSTOP, a frozen
 * cgroup, a debugger): a fill here waits OTHERS_FILL_WAIT_MS for them (disk_cache_fill.ts),
 * then gives up, remembers them and warns (throttled); later fills of chunks still held by the
 * same lock give up at once, and their readers are served around them (DiskCachedSource).
 */
import type { FillBlob } from "./disk_cache_fill.ts";
import { lockedByOthers } from "./disk_cache_io.ts";

/**
 * How long a fill waits for chunks another process's fill holds. A healthy filler writes them
 * within its fetch; a stopped one (SIGSTOP, a frozen cgroup, a debugger) holds their lock for as
 * long as it stays stopped (the kernel drops OFD locks only when it dies), and readers of every
 * other mount of the layer waited with it (75 s in a repro; a read gets 60 s in all, README).
 * Past this the reader fetches its bytes itself without storing them (fetchUnstored), and later
 * fills of chunks still held by the same lock give up at once.
 */
export const OTHERS_FILL_WAIT_MS = 5_000;
/** The warning that another process holds chunks of a blob: at most this often per blob. */
const HELD_WARN_EVERY_MS = 60_000;

/**
 * Another process's fill held chunks of the run past OTHERS_FILL_WAIT_MS: nothing was fetched
 * or stored; the reader is served around them (DiskCachedSource).
 */
export class HeldByOthersError extends Error {}

/** The chunks of one blob a fill here gave up waiting for (see above). */
export class HeldChunks {
  readonly #blob: FillBlob;
  /**
   * Chunks whose write lock another process held past the wait of a fill here: fills that
   * find them still locked give up without waiting again, until their lock is seen free.
   */
  readonly #heldByOthers = new Set<number>();
  /** When the warning that another process holds chunks was last given (performance.now()). */
  #heldWarnedAtMs = -Infinity;

  constructor(blob: FillBlob) {
    this.#blob = blob;
  }

  /** Chunks [start, stop) were write-locked here: whatever held them let go. */
  seenFree(start: number, stop: number): void {
    if (this.#heldByOthers.size) {
      for (let c = start; c < stop; c++) this.#heldByOthers.delete(c);
    }
  }

  /**
   * True when a chunk of [start, stop) is one another process held past a wait here and its
   * lock is still held (by that fill, most likely still stopped); forgets those seen free.
   */
  stillHeld(start: number, stop: number): boolean {
    let held = false;
    for (let c = start; c < stop && this.#heldByOthers.size; c++) {
      if (!this.#heldByOthers.has(c)) continue;
      if (lockedByOthers(this.#blob.mapFd, c, 1)) held = true;
      else this.#heldByOthers.delete(c);
    }
    return held;
  }

  /** The wait for chunks [start, stop) ran out: remembers the ones held, warns (throttled). */
  gaveUpWaiting(start: number, stop: number): HeldByOthersError {
    for (let c = start; c < stop; c++) {
      if (lockedByOthers(this.#blob.mapFd, c, 1)) this.#heldByOthers.add(c);
    }
    const now = performance.now();
    if (now - this.#heldWarnedAtMs >= HELD_WARN_EVERY_MS) {
      this.#heldWarnedAtMs = now;
      const waitedS = (this.#blob.cache.othersFillWaitMs ?? OTHERS_FILL_WAIT_MS) / 1000;
      this.#blob.cache.warn(
        `disk cache ${this.#blob.base}: another process has held chunks of this blob for ` +
          `${waitedS} s without filling them (stopped?); reading them from the registry ` +
          "without storing them meanwhile",
      );
    }
    return this.error(start, stop);
  }

  /** The error a fill of chunks [start, stop) ends with when they are held. */
  error(start: number, stop: number): HeldByOthersError {
    return new HeldByOthersError(
      `chunks ${start}..${stop - 1} of ${this.#blob.base} are held by another process's fill`,
    );
  }
}
