/**
 * A blob's chunks in its cache files under the locking rules of disk_cache.ts: present chunks
 * copied out under read locks (so no evictor of any process punches a hole under the copy),
 * chunks dropped under their write lock (eviction, damage found by a check), and every chunk
 * dropped at once when the blob's bytes are refused. The read path (disk_cache_read.ts) reads
 * and fills through it; what is being filled is BlobFiller's (disk_cache_fill.ts).
 */
import { forgetSum } from "./disk_cache_files.ts";
import { chunkRuns, isPresent } from "./disk_cache_present.ts";
import type { CheckedChunks } from "./stored_check.ts";
import type { DirectReadFiles } from "./direct_reads.ts";
import { openDirectReadFiles } from "./disk_cache_direct.ts";
import {
  dataSyncNow,
  dropChunks,
  F_RDLCK,
  F_WRLCK,
  preadExact,
  pwriteAll,
  tryLock,
  unlock,
} from "./disk_cache_io.ts";
import { sleep } from "../timers.ts";

const POLL_MS = 10;

/** A cached blob's files and shape, as its parts (chunks, fills) share them. */
export interface BlobFiles {
  /** The blob's files without .map/.data (for messages). */
  readonly base: string;
  readonly mapFd: number;
  readonly dataFd: number;
  readonly size: number;
  readonly chunkBytes: number;
  readonly chunkCount: number;
  /** Aborted when the source closes. */
  readonly closing: AbortSignal;
  /**
   * Chunks known present, least recently read first, each with the useStamp() of its last read
   * or fill (fills add): the order eviction takes across every open blob.
   */
  readonly lru: Map<number, number>;
}

/** What the chunk operations need of their blob (DiskCachedSource hands its own state). */
export interface ChunkFiles extends BlobFiles {
  /** The chunks checked in this process, when a source below checks bytes (stored_check.ts). */
  readonly checked?: CheckedChunks;
  /** A fill of this process has chunk `index` under way. */
  isFilling(index: number): boolean;
  /** Chunk `index` is written by a fill of this process and not marked yet. */
  isWritten(index: number): boolean;
  warn(message: string): void;
}

let lastUseStamp = 0;

/**
 * A number larger than every one handed out before in this process: when a chunk was last read
 * (or filled), comparable across blobs, so eviction takes the least recently read chunks of
 * all open blobs first — by blob, a layer read a moment ago lost all its chunks before older
 * ones of the layer being read now (and was fetched again and again).
 */
export function useStamp(): number {
  return ++lastUseStamp;
}

/** A chunk eviction may drop, and when it was last used (0: never read here). */
export interface EvictableChunk {
  index: number;
  stamp: number;
}

/** The chunk operations of one blob (see above). */
export class BlobChunks {
  readonly #blob: ChunkFiles;
  #evicted = 0;

  constructor(blob: ChunkFiles) {
    this.#blob = blob;
  }

  /** Chunks dropped by evict(). */
  get evictedChunks(): number {
    return this.#evicted;
  }

  /** Chunks marked present in the file now (by any process). */
  presentCount(): number {
    return this.readMap(0, this.#blob.chunkCount).reduce(
      (n, byte) => n + (isPresent(byte) ? 1 : 0),
      0,
    );
  }

  /**
   * Descriptors for another thread's direct reads (direct_reads.ts): the map and data file
   * opened again, so that thread's read locks keep this process's fillers and evictors off
   * the chunks it reads, exactly as another process's would.
   */
  openDirectReads(): DirectReadFiles | undefined {
    return openDirectReadFiles({
      mapFd: this.#blob.mapFd,
      dataFd: this.#blob.dataFd,
      chunkBytes: this.#blob.chunkBytes,
      size: this.#blob.size,
      checked: this.#blob.checked?.marks,
    });
  }

  readMap(start: number, stop: number): Uint8Array {
    const map = new Uint8Array(stop - start);
    preadExact(this.#blob.mapFd, map, start);
    return map;
  }

  /**
   * Copies the bytes at `offset` (chunks [first, end)) from the data file into `dest` when
   * every chunk is readable: marked present, or written by this process's fills and not yet
   * marked ("early"). Chunks written by those fills are held by their write lock: a read lock
   * here (same descriptor) would replace it, so only the marked runs are locked.
   */
  readKept(
    first: number,
    end: number,
    dest: Uint8Array,
    offset: number,
  ): "ok" | "early" | "missing" | "busy" {
    const readable = (byte: number, i: number) =>
      isPresent(byte) || this.#blob.isWritten(first + i);
    const map = this.readMap(first, end);
    if (!map.every(readable)) return "missing";
    const locked = chunkRuns(map, first, true);
    const taken = locked.filter(([at, n]) => tryLock(this.#blob.mapFd, F_RDLCK, at, n));
    if (taken.length !== locked.length) {
      for (const [at, n] of taken) unlock(this.#blob.mapFd, at, n);
      return "busy";
    }
    try {
      // Re-read under the lock: an evictor may have dropped a chunk since.
      const now = this.readMap(first, end);
      if (!now.every(readable)) return "missing";
      preadExact(this.#blob.dataFd, dest, offset);
      return now.every(isPresent) ? "ok" : "early";
    } finally {
      for (const [at, n] of locked) unlock(this.#blob.mapFd, at, n);
    }
  }

  /**
   * Copies the bytes at `offset` into `into` when every chunk there is present, under read
   * locks so that no evictor (of any process) punches a hole under the copy, without fetching
   * or moving the chunks in the LRU; false when one is not present. The whole-blob hash reads
   * through this: a hole read as zeros would make a correct layer fail its digest.
   */
  async readPresentInto(into: Uint8Array, offset: number): Promise<boolean> {
    const first = Math.floor(offset / this.#blob.chunkBytes);
    const end = Math.floor((offset + into.length - 1) / this.#blob.chunkBytes) + 1;
    while (!this.#blob.closing.aborted) {
      const read = this.readKept(first, end, into, offset);
      if (read === "ok") return true;
      // Absent, or written by a fill here and not yet marked: not present.
      if (read !== "busy") return false;
      await sleep(POLL_MS); // a filler or evictor of another process holds some of them
    }
    return false;
  }

  /**
   * Drops chunk `index` from the files (dropChunks) under its write lock and forgets it here;
   * 0 when a fill of this process or a reader of any process holds it or it is not present,
   * else the bytes freed. Errors of the disk are thrown.
   */
  dropChunk(index: number): number {
    if (this.#blob.isFilling(index)) return 0;
    if (!tryLock(this.#blob.mapFd, F_WRLCK, index, 1)) return 0;
    try {
      this.#blob.lru.delete(index);
      this.#blob.checked?.forget(index);
      if (!isPresent(this.readMap(index, index + 1)[0])) return 0;
      return dropChunks(
        {
          mapFd: this.#blob.mapFd,
          dataFd: this.#blob.dataFd,
          chunkBytes: this.#blob.chunkBytes,
          sizeBytes: this.#blob.size,
        },
        index,
        index + 1,
      );
    } finally {
      unlock(this.#blob.mapFd, index, 1);
    }
  }

  /**
   * Drops least recently read chunks of this blob (not being filled, not locked by a reader)
   * until `bytes` are freed; returns the bytes freed. Chunks another process filled since this
   * source opened were never read here and go first. The map byte is cleared and synced
   * before the hole is punched, so no reader or restart sees a hole marked present.
   */
  evict(bytes: number): number {
    let freed = 0;
    for (const { index } of this.evictionOrder()) {
      if (freed >= bytes) break;
      const dropped = this.evictChunk(index);
      if (dropped === undefined) break;
      freed += dropped;
    }
    return freed;
  }

  /**
   * This blob's present chunks in the order eviction takes them: those another process filled
   * since this source opened (never read here: stamp 0) first, then least recently read.
   */
  evictionOrder(): EvictableChunk[] {
    const order: EvictableChunk[] = [];
    this.readMap(0, this.#blob.chunkCount).forEach((byte, index) =>
      isPresent(byte) && !this.#blob.lru.has(index) && order.push({ index, stamp: 0 })
    );
    for (const [index, stamp] of this.#blob.lru) order.push({ index, stamp });
    return order;
  }

  /**
   * Drops chunk `index` for eviction (dropChunk); the bytes freed, undefined when the disk
   * failed (said; eviction stops there).
   */
  evictChunk(index: number): number | undefined {
    try {
      const dropped = this.dropChunk(index);
      if (dropped > 0) this.#evicted++;
      return dropped;
    } catch (error) {
      this.#blob.warn(`disk cache eviction: ${(error as Error).message}`);
      return undefined;
    }
  }

  /**
   * Marks every chunk absent (synced) and forgets them here, under the write lock of the whole
   * map (waiting for readers and fillers of other processes): a refusal of the blob's bytes.
   * A fill of this process holds its run's lock on the same descriptor, so it cannot be waited
   * for: the lock taken here covers it too, and releasing the whole map released the fill's run
   * while it still wrote there (another process could fill and mark those chunks, and then
   * have them overwritten). The runs filling here stay locked, for their fills to release.
   */
  async dropAll(): Promise<void> {
    const count = this.#blob.chunkCount;
    while (!tryLock(this.#blob.mapFd, F_WRLCK, 0, count)) await sleep(POLL_MS);
    try {
      pwriteAll(this.#blob.mapFd, new Uint8Array(count), 0);
      dataSyncNow(this.#blob.mapFd);
      forgetSum(this.#blob.base);
      this.#blob.lru.clear();
      this.#blob.checked?.forgetAll();
    } catch (error) {
      this.#blob.warn(`disk cache ${this.#blob.base}: ${(error as Error).message}`);
    } finally {
      for (let start = 0; start < count;) {
        if (this.#blob.isFilling(start)) {
          start++;
          continue;
        }
        let stop = start + 1;
        while (stop < count && !this.#blob.isFilling(stop)) stop++;
        unlock(this.#blob.mapFd, start, stop - start);
        start = stop;
      }
    }
  }
}
