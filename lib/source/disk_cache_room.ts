/**
 * The room the disk cache has for what it is about to write: below its bound, and above what
 * it leaves free on its file system (--disk-cache-keep-free). A fill reserves its run before it
 * fetches a byte of it (DiskCache.reserve): the run is allocated in the data file (fallocate),
 * so the file system's free space and every process's scan of the cache count it at once, and
 * only then written. Before, a fill wrote whole readahead windows (up to 8 MiB, several in
 * flight) and the bound was looked at afterwards, every few MiB: a 32 MiB tmpfs kept 3.2 MiB
 * free filled to the last byte.
 *
 * statfs is cheap, but not looked at for every run when there is plenty of room: again once a
 * second while writing, and once the runs reserved since the last look pass a sixteenth of the
 * room it found: close to the limit that is every run. Processes sharing the file system each
 * see the others' reservations the next time they look (allocated blocks); between two looks
 * each reserves at most a sixteenth of the room, so it takes more than 16 of them writing at the
 * same moment to pass keep-free.
 */
import { availableBytesOf } from "./disk_cache_fs.ts";

/** Looks at the free space again at least this often while reserving (others write too). */
const MEASURE_EVERY_MS = 1000;
/** Looks again once the bytes reserved since the last look pass this share of the room then. */
const MEASURE_SHARE = 1 / 16;

/** Bytes reserved for a run: its writes and its end are told here (see CacheRoom.reserve). */
export interface Reservation {
  readonly bytes: number;
  /** `bytes` of the reservation were written. */
  wrote(bytes: number): void;
  /**
   * The run ended: the part not written is given back, and the written part too unless
   * `kept` (the caller punched it out again). Once; later calls do nothing.
   */
  end(kept: boolean): void;
}

export class CacheRoom {
  readonly #dir: string;
  readonly #maxBytes: number;
  readonly #keepFreeBytes: number;
  readonly #available: (dir: string) => number | undefined;
  readonly #onWritten: (bytes: number) => void;
  /** What the cache holds (its last scan), with the reservations since, written or not. */
  #usageBytes = 0;
  /**
   * Reserved and not yet written where the file system cannot allocate ahead (fallocate
   * unsupported): not in its free space yet, so taken off it here.
   */
  #unallocatedBytes = 0;
  /** The free space above keep-free at the last look (unallocated reservations taken off). */
  #roomBytes = 0;
  #measuredAtMs = -Infinity;
  /** Bytes reserved since that look. */
  #reservedSinceBytes = 0;

  constructor(
    dir: string,
    limits: { maxBytes: number; keepFreeBytes: number },
    onWritten: (bytes: number) => void,
    available: (dir: string) => number | undefined = availableBytesOf,
  ) {
    this.#dir = dir;
    this.#maxBytes = limits.maxBytes;
    this.#keepFreeBytes = limits.keepFreeBytes;
    this.#onWritten = onWritten;
    this.#available = available;
  }

  get usageBytes(): number {
    return this.#usageBytes;
  }

  /** Reservations not written yet and not allocated in a file (so in no scan of the cache). */
  get unallocatedBytes(): number {
    return this.#unallocatedBytes;
  }

  /** The cache holds `bytesOnDisk` (a scan of its files): reservations not allocated are added. */
  counted(bytesOnDisk: number): void {
    this.#usageBytes = bytesOnDisk + this.#unallocatedBytes;
  }

  /**
   * Bytes the file system may still take above keep-free, reservations counted: looked at
   * again when `fresh`, when the last look is old, or when `wantBytes` more would bring the
   * bytes reserved since it past MEASURE_SHARE of the room it found. Infinity without keep-free
   * (or when statfs fails).
   */
  freeBytes(wantBytes = 0, fresh = false): number {
    if (this.#keepFreeBytes <= 0) return Infinity;
    if (
      fresh || performance.now() - this.#measuredAtMs >= MEASURE_EVERY_MS ||
      this.#reservedSinceBytes + wantBytes > this.#roomBytes * MEASURE_SHARE
    ) {
      const available = this.#available(this.#dir) ?? Infinity;
      this.#roomBytes = available - this.#unallocatedBytes - this.#keepFreeBytes;
      this.#measuredAtMs = performance.now();
      this.#reservedSinceBytes = 0;
    }
    return this.#roomBytes - this.#reservedSinceBytes;
  }

  /** Bytes that may be reserved now: under the bound and above keep-free (freeBytes). */
  fitting(wantBytes: number, fresh = false): number {
    return Math.min(this.#maxBytes - this.#usageBytes, this.freeBytes(wantBytes, fresh));
  }

  /**
   * Reserves `bytes` (which fitting() allowed); `allocated`: the caller allocated them in its
   * file already, so the file system's free space shows them.
   */
  reserve(bytes: number, allocated: boolean): Reservation {
    this.#usageBytes += bytes;
    this.#reservedSinceBytes += bytes;
    if (!allocated) this.#unallocatedBytes += bytes;
    let written = 0;
    let ended = false;
    return {
      bytes,
      wrote: (more) => {
        const counted = Math.max(0, Math.min(more, bytes - written));
        written += counted;
        if (!allocated) this.#unallocatedBytes -= counted;
        this.#usageBytes += more - counted; // past the reservation: counted all the same
        this.#onWritten(more);
      },
      end: (kept) => {
        if (ended) return;
        ended = true;
        const unwritten = bytes - written;
        this.#usageBytes -= kept ? unwritten : bytes;
        if (!allocated) this.#unallocatedBytes -= unwritten;
      },
    };
  }
}
