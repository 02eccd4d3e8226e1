/**
 * The disk cache's bound (`--disk-cache-size`) and keep-free reserve (`--disk-cache-keep-free`)
 * kept: room reserved before a fill writes (disk_cache_room.ts), eviction when the cache holds
 * more than it may — whole blobs nobody has open first, then chunks of the open ones — and
 * prune (`erofs-oci cache prune`). What the cache holds is counted from the files, so other
 * processes' fills and reservations count too.
 */
import type { DiskCachedSource } from "./disk_cached.ts";
import { CacheRoom, type Reservation } from "./disk_cache_room.ts";
import { removeIfMapDamaged, removeIfUnused, scanBlobs } from "./disk_cache_scan.ts";
import { formatBytes } from "../text.ts";

/** Eviction frees down to this share of the bound, so it does not run on every fill. */
export const EVICT_TO = 0.9;
/**
 * The most bytes this process writes between two scans of the whole cache: other processes
 * fill it too (their fills count toward the bound). The file system's free space is looked at
 * more often, before writes (disk_cache_room.ts).
 */
const CHECK_EVERY_MAX_BYTES = 64 << 20;

/** The cache's settings the bound is kept by (DiskCache's). */
export interface BoundSettings {
  readonly dir: string;
  readonly blobsDir: string;
  readonly maxBytes: number;
  readonly keepFreeBytes: number;
  readonly chunkBytes: number;
}

export class CacheBound {
  readonly #settings: BoundSettings;
  /** The blobs open in this process (DiskCache's): their chunks are evicted, not the blobs. */
  readonly #open: ReadonlySet<DiskCachedSource>;
  readonly #warnOnce: (message: string) => void;
  readonly #checkEveryBytes: number;
  #writtenSinceCheck = 0;
  /** What the cache holds and may still take (its bound, keep-free): disk_cache_room.ts. */
  readonly #room: CacheRoom;
  #evicting = false;

  constructor(
    settings: BoundSettings,
    open: ReadonlySet<DiskCachedSource>,
    warnOnce: (message: string) => void,
  ) {
    this.#settings = settings;
    this.#open = open;
    this.#warnOnce = warnOnce;
    this.#checkEveryBytes = Math.max(
      settings.chunkBytes,
      Math.min(settings.maxBytes / 64, CHECK_EVERY_MAX_BYTES),
    );
    this.#room = new CacheRoom(
      settings.dir,
      { maxBytes: settings.maxBytes, keepFreeBytes: settings.keepFreeBytes },
      (bytes) => this.#noteWritten(bytes),
    );
  }

  /** Counts what the blobs on disk hold now; throws when their directory cannot be read. */
  countFromDisk(): void {
    this.#room.counted(
      scanBlobs(this.#settings.blobsDir).reduce((sum, blob) => sum + blob.bytes, 0),
    );
  }

  /**
   * Room for `wantBytes` about to be written (a fill's run, a sidecar), before they are
   * fetched: undefined when even eviction (for which this makes room first) leaves less than
   * `unitBytes` under the bound or above keep-free; else a reservation of `wantBytes`, or of
   * fewer whole units when only those fit. `allocate(bytes)` takes the blocks in the file
   * (fallocate) and says whether it could (false: the file system cannot allocate ahead, the
   * reservation is then counted here only); its errors are thrown to the caller.
   */
  reserve(
    wantBytes: number,
    unitBytes: number,
    allocate: (bytes: number) => boolean,
  ): Reservation | undefined {
    let fitting = this.#room.fitting(wantBytes);
    if (fitting < wantBytes) {
      // Not scanned (the directory is gone; said once): no room is known, nothing is stored.
      if (!this.evict(wantBytes)) return undefined;
      fitting = this.#room.fitting(wantBytes, true);
    }
    const bytes = fitting >= wantBytes ? wantBytes : Math.floor(fitting / unitBytes) * unitBytes;
    if (wantBytes > 0 && bytes <= 0) {
      this.#warnOnce(
        `disk cache ${this.#settings.dir}: no room left under its bound and ` +
          "--disk-cache-keep-free (the blobs open in other processes hold it): reads are " +
          "served without being stored",
      );
      return undefined;
    }
    return this.#room.reserve(bytes, allocate(bytes));
  }

  /** Written `bytes`: every #checkEveryBytes the whole cache is scanned again (evict). */
  #noteWritten(bytes: number): void {
    this.#writtenSinceCheck += bytes;
    if (this.#writtenSinceCheck >= this.#checkEveryBytes) this.evict();
  }

  get usageBytes(): number {
    return this.#room.usageBytes;
  }

  /**
   * When the cache holds more than it may (its bound, or less to leave keepFreeBytes free) —
   * with `needBytes` more, about to be reserved — frees down to 90% of that (at most, less by
   * `needBytes`): first whole blobs nobody has open (least recently used first, by the map's
   * mtime), then chunks of the open ones, least recently read first. False when the cache's
   * directory could not be read (said once).
   */
  evict(needBytes = 0): boolean {
    if (this.#evicting) return true;
    this.#evicting = true;
    this.#writtenSinceCheck = 0;
    try {
      // Space a killed process's fills left allocated in blobs open here goes before any
      // chunk anybody can read (disk_cache_reclaim.ts).
      for (const source of this.#open) source.reclaimUnfilled();
      let blobs;
      try {
        blobs = scanBlobs(this.#settings.blobsDir);
      } catch (error) {
        // Its directory removed or made unreadable under us: the open blobs go on; said once.
        this.#warnOnce(
          `disk cache ${this.#settings.dir}: ${(error as Error).message}; not evicting`,
        );
        return false;
      }
      this.#room.counted(blobs.reduce((sum, blob) => sum + blob.bytes, 0));
      let usage = this.#room.usageBytes;
      const limit = this.#limitBytes(usage);
      if (usage + needBytes <= limit) return true;
      const target = Math.max(0, Math.min(Math.floor(limit * EVICT_TO), limit - needBytes));
      blobs.sort((a, b) => a.usedMs - b.usedMs);
      for (const blob of blobs) {
        if (usage <= target) break;
        if (removeIfUnused(blob.base, blob.tempFiles)) usage -= blob.bytes;
      }
      // Then the least recently used chunks of all open blobs together: by blob, the one
      // read a moment before the blob being read now lost all its chunks first.
      if (usage > target) {
        const chunks = [...this.#open].flatMap((source) =>
          source.evictionOrder().map((chunk) => ({ source, ...chunk }))
        ).sort((a, b) => a.stamp - b.stamp);
        const failed = new Set<DiskCachedSource>();
        for (const { source, index } of chunks) {
          if (usage <= target) break;
          if (failed.has(source)) continue;
          const dropped = source.evictChunk(index);
          if (dropped === undefined) failed.add(source);
          else usage -= dropped;
        }
      }
      this.#room.counted(usage - this.#room.unallocatedBytes);
      return true;
    } finally {
      this.#evicting = false;
    }
  }

  /** What the cache may hold now that it holds `usageBytes`: its bound, or less for keepFreeBytes. */
  #limitBytes(usageBytes: number): number {
    const { dir, maxBytes, keepFreeBytes } = this.#settings;
    const room = usageBytes + this.#room.freeBytes(0, true);
    if (room >= maxBytes) return maxBytes;
    this.#warnOnce(
      `disk cache ${dir}: leaving ${formatBytes(keepFreeBytes)} free on its file ` +
        `system (--disk-cache-keep-free), it holds at most ${formatBytes(Math.max(0, room))} ` +
        `now instead of ${formatBytes(maxBytes)}`,
    );
    return Math.max(0, room);
  }

  /**
   * Removes the blobs no process has open, least recently used first, until the cache holds at
   * most `keepBytes` (0: every unused blob), of those last used before `usedBeforeMs` (epoch ms)
   * only; blobs in use keep all they hold. The same removal as eviction's, under each blob's
   * in-use lock: a mount opening one meanwhile gets new files.
   */
  prune(keepBytes = 0, usedBeforeMs = Infinity): PruneResult {
    let removedBlobs = 0, freedBytes = 0;
    let failed: { blobs: number; first: Error } | undefined;
    const onError = (error: Error) => {
      if (failed) failed.blobs++;
      else failed = { blobs: 1, first: error };
    };
    // Damage goes whatever the bounds: a blob with a map that is no regular file is open in
    // no process, and may hold no bytes to count (its map all it has left).
    const blobs = scanBlobs(this.#settings.blobsDir).filter((blob) => {
      if (!removeIfMapDamaged(blob.base, blob.tempFiles)) return true;
      removedBlobs++;
      freedBytes += blob.bytes;
      return false;
    }).sort((a, b) => a.usedMs - b.usedMs);
    let usage = blobs.reduce((sum, blob) => sum + blob.bytes, 0);
    for (const blob of blobs) {
      if (usage <= keepBytes || blob.usedMs >= usedBeforeMs) break;
      if (!removeIfUnused(blob.base, blob.tempFiles, onError)) continue;
      usage -= blob.bytes;
      freedBytes += blob.bytes;
      removedBlobs++;
    }
    this.#room.counted(usage);
    return { removedBlobs, freedBytes, ...failed && { failed } };
  }
}

/** What a prune removed, and what it could not (a read-only or unwritable cache). */
export interface PruneResult {
  removedBlobs: number;
  freedBytes: number;
  failed?: { blobs: number; first: Error };
}
