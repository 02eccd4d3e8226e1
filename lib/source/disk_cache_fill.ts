/**
 * The fill protocol of one disk-cached blob (disk_cached.ts has the whole picture and the read
 * path; disk_cache.ts the layout and locking rules): missing chunks are fetched as runs (one
 * underlying read per run, written where they belong, no per-chunk copies) under the map's
 * write lock — a run another process holds is waited for, not repeated — verified, written,
 * synced with the other fills of the moment (group commit) and only then marked present.
 * Readers of this process may read a chunk as soon as it is verified and written (`isWritten`),
 * before its sync, while the fill still holds the write lock: no other process fills or evicts
 * it meanwhile, and a crash before the sync leaves it absent.
 */
import type { Source } from "./source.ts";
import type { DiskCache } from "./disk_cache.ts";
import { streamInPieces } from "./disk_cache_stream.ts";
import { fillTrace, nextFillId } from "./fill_trace.ts";
import { dataSync, F_WRLCK, pwriteAll, tryLock, unlock } from "./disk_cache_io.ts";

/** Checks a fetched chunk before it is stored (chunk-digest tables plug in here). */
export type VerifyChunk = (chunkIndex: number, bytes: Uint8Array) => boolean | Promise<boolean>;

/** A chunk failed `verify`: it is not stored and the read fails (never wrong bytes). */
export class ChunkVerifyError extends Error {}

/** A write or sync of the cache files failed: the cache goes memory-only. */
class DiskWriteError extends Error {}

/** The map byte of a chunk whose bytes are written, synced and verified. */
export const PRESENT = 1;
const POLL_MS = 10;

/** How a reader's wait for a chunk ended: before its sync, after one, or with no sync of ours. */
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
  const runs: [number, number][] = [];
  for (let i = 0; i < map.length;) {
    if ((map[i] === PRESENT) !== present) {
      i++;
      continue;
    }
    let j = i + 1;
    while (j < map.length && (map[j] === PRESENT) === present) j++;
    runs.push([first + i, j - i]);
    i = j;
  }
  return runs;
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What a filler needs of its blob (DiskCachedSource hands its own state). */
export interface FillBlob {
  readonly cache: DiskCache;
  readonly inner: Source;
  /** The blob's files without .map/.data (for messages). */
  readonly base: string;
  readonly verify?: VerifyChunk;
  readonly mapFd: number;
  readonly dataFd: number;
  readonly size: number;
  readonly chunkBytes: number;
  readonly chunkCount: number;
  /** Aborted when the source closes. */
  readonly closing: AbortSignal;
  /** Chunks known present, least recently read first: filled chunks are added. */
  readonly lru: Map<number, true>;
  readMap(start: number, stop: number): Uint8Array;
  /** The disk failed: nothing more is written. */
  isDegraded(): boolean;
  /** Called once a write or sync failed (after which isDegraded() is true). */
  degrade(): void;
  /** Set when the complete blob failed its digest: every fill rejects with it. */
  corruption(): Error | undefined;
}

/** The counters a filler adds to (part of DiskCacheStats). */
export interface FillStats {
  fetchedBytes: number;
  fetches: number;
  waitedForOthers: number;
  syncs: number;
}

export class BlobFiller {
  readonly #blob: FillBlob;
  readonly #stats: FillStats;
  readonly #filling = new Map<number, Promise<void>>();
  /** Per chunk being filled here: settles once its bytes are verified and in the file. */
  readonly #readable = new Map<number, Readable>();
  /**
   * Chunks verified and written by a fill of this process that still holds their write lock,
   * waiting for the sync before it marks them: readable here, absent for everyone else.
   */
  readonly #written = new Set<number>();
  /** Chunks per unit the inner source reads whole (1: any range). */
  readonly #innerUnitChunks: number;
  #syncing?: Promise<void>;
  #nextSync?: Promise<void>;

  constructor(blob: FillBlob, stats: FillStats) {
    this.#blob = blob;
    this.#stats = stats;
    const unit = (blob.inner as { chunkBytes?: unknown }).chunkBytes;
    this.#innerUnitChunks = typeof unit === "number" && unit > blob.chunkBytes &&
        unit % blob.chunkBytes === 0
      ? unit / blob.chunkBytes
      : 1;
  }

  /** A fill of this process has chunk `index` under way. */
  isFilling(index: number): boolean {
    return this.#filling.has(index);
  }

  /** Chunk `index` is verified and written by a fill of ours, not yet marked (see above). */
  isWritten(index: number): boolean {
    return this.#written.has(index);
  }

  /** Chunks being filled by this process now. */
  get fillingCount(): number {
    return this.#filling.size;
  }

  /** The fills under way now (each settles when its chunks are durable and marked, or failed). */
  fills(): Promise<void>[] {
    return [...new Set(this.#filling.values())];
  }

  /** Fills the missing chunks, joining fills of this process already under way. */
  fill(wanted: number[]): Promise<unknown> {
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
      const run = this.#fillRun(start, stop).then(
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
  fillReadable(wanted: number[], ahead: readonly number[] = []): Promise<ReadableEnd[]> {
    // The full fill's failure reaches the reader through the chunk's own promise below.
    // Chunks `ahead` join the same run (one fetch, streamed in order): nobody waits for them.
    this.fill(ahead.length ? [...wanted, ...ahead] : wanted).catch(() => {});
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
      if (map[c - lo] !== PRESENT && units.has(Math.floor(c / k))) chunks.push(c);
    }
    return chunks;
  }

  /**
   * Takes the write lock of chunks [start, stop) (waiting for another filler), fills the gaps.
   * Resolves true when it synced data of its own (the last step before the map says present).
   */
  async #fillRun(start: number, stop: number): Promise<boolean> {
    let waited = false;
    while (!tryLock(this.#blob.mapFd, F_WRLCK, start, stop - start)) {
      if (!waited) this.#stats.waitedForOthers++;
      waited = true;
      await sleep(POLL_MS);
      if (this.#blob.closing.aborted) throw new Error("disk cache closed");
      if (this.#blob.readMap(start, stop).every((byte) => byte === PRESENT)) return false;
    }
    let synced = false;
    try {
      // Gaps (chunks another process filled meanwhile split the run) go one by one.
      for (const [at, count] of chunkRuns(this.#blob.readMap(start, stop), start, false)) {
        if (await this.#fetchAndStore(at, at + count)) synced = true;
      }
    } finally {
      unlock(this.#blob.mapFd, start, stop - start);
    }
    return synced;
  }

  /** Resolves true when the chunks were synced and marked present. */
  async #fetchAndStore(start: number, stop: number): Promise<boolean> {
    const offset = start * this.#blob.chunkBytes;
    const length = Math.min(this.#blob.size, stop * this.#blob.chunkBytes) - offset;
    this.#stats.fetches++;
    this.#stats.fetchedBytes += length;
    const id = nextFillId();
    fillTrace("fetch", id, offset, length, this.#filling.size);
    try {
      if (this.#blob.inner.readTo) {
        await streamInPieces(
          this.#blob.inner,
          offset,
          length,
          this.#blob.chunkBytes,
          (at, bytes) => this.#storeRun(at, bytes, id),
          this.#blob.closing,
          id,
        );
      } else await this.#storeRun(offset, await this.#readRun(offset, length), id);
      fillTrace("stored", id);
      if (this.#blob.isDegraded()) return false;
      // The bytes must be on disk before the map says so: a crash between the two then
      // leaves the chunk absent, never present with old or zero bytes. Readers of this
      // process read them meanwhile (#written), under this fill's write lock.
      await this.#durable().then(
        () => pwriteAll(this.#blob.mapFd, new Uint8Array(stop - start).fill(PRESENT), start),
      ).catch((cause) => {
        throw new DiskWriteError("disk sync failed", { cause });
      });
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
    }
    for (let c = start; c < stop; c++) this.#blob.lru.set(c, true);
    this.#blob.cache.noteWritten(length);
    return true;
  }

  async #readRun(offset: number, length: number): Promise<Uint8Array> {
    const bytes = await this.#blob.inner.read(offset, length, this.#blob.closing);
    if (bytes.length !== length) {
      throw new Error(`source returned ${bytes.length} bytes for a read of ${length}`);
    }
    return bytes;
  }

  /** Verifies whole chunks at `offset` (chunk-aligned) and writes them to the data file. */
  async #storeRun(offset: number, bytes: Uint8Array, id = 0): Promise<void> {
    fillTrace("piece", id, offset, bytes.length);
    if (this.#blob.verify) {
      const first = offset / this.#blob.chunkBytes;
      for (let from = 0; from < bytes.length; from += this.#blob.chunkBytes) {
        const chunk = bytes.subarray(from, Math.min(bytes.length, from + this.#blob.chunkBytes));
        const index = first + from / this.#blob.chunkBytes;
        if (!(await this.#blob.verify(index, chunk))) {
          throw new ChunkVerifyError(`chunk ${index} of ${this.#blob.base} failed verification`);
        }
      }
    }
    fillTrace("verified", id, offset);
    if (this.#blob.isDegraded()) return;
    try {
      pwriteAll(this.#blob.dataFd, bytes, offset);
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
    for (let c = first; c < stop; c++) {
      this.#written.add(c);
      this.#readable.get(c)?.settle("written");
    }
  }

  /**
   * fdatasync of the data file shared by the fills that wrote before it started (group
   * commit): a fill arriving while a sync runs waits for the next one, which covers everyone
   * who arrived meanwhile, so concurrent fills cost about two syncs, not one each.
   */
  #durable(): Promise<void> {
    if (!this.#syncing) {
      this.#stats.syncs++;
      this.#syncing = dataSync(this.#blob.dataFd).finally(() => this.#syncing = undefined);
      return this.#syncing;
    }
    this.#nextSync ??= this.#syncing.catch(() => {}).then(() => {
      this.#nextSync = undefined;
      return this.#durable();
    });
    return this.#nextSync;
  }
}
