/**
 * One blob behind the disk cache (see disk_cache.ts for the layout and the locking rules):
 * reads are pread from the data file once their chunks are marked present; missing chunks are
 * fetched as runs (one underlying read per run, written where they belong, no per-chunk
 * copies), verified, written and marked WRITTEN (readable by every process of this boot); a
 * later sync marks them PRESENT (disk_cache_fill.ts). Readers in this process read a chunk as
 * soon as it is written, even before its mark, under its fill's write lock. A fill another
 * process holds is waited for, not repeated; one held past OTHERS_FILL_WAIT_MS (a stopped
 * process) is read around, from the inner source without storing (disk_cache_held.ts). When
 * the disk fails (full, quota, I/O error) the source warns once and serves what is missing from
 * the inner source directly from then on.
 * This file is the read path and the blob's life (open, refusal, digest check, close); the
 * locked reads and drops of chunks in the files (eviction) are disk_cache_chunks.ts, the check
 * of kept chunks against a table below disk_cache_kept_check.ts, the fill protocol
 * disk_cache_fill.ts and its sync batching disk_cache_sync.ts, the descriptors for the FUSE reader thread's direct reads
 * disk_cache_direct.ts, the `.meta` sidecar disk_cache_sidecar.ts, how far a demand fetch runs
 * ahead disk_cache_demand_ahead.ts, the counters' shape disk_cache_stats.ts, the hash of the
 * complete blob against its digest disk_cache_whole_check.ts.
 */
import { abortable } from "./abortable.ts";
import { SysError } from "../../ffi/libc.ts";
import { fillTrace } from "./fill_trace.ts";
import type { Source } from "./source.ts";
import type { DiskCache } from "./disk_cache.ts";
import type { DirectReadFiles } from "./direct_reads.ts";
import { openBlobFiles } from "./disk_cache_files.ts";
import { completeInBackground, type CompletionEnd } from "./disk_cache_complete.ts";
import {
  type DigestCheckEnd,
  type DigestCheckOptions,
  WholeDigestCheck,
} from "./disk_cache_whole_check.ts";
import {
  BlobFiller,
  type FillPause,
  isPresent,
  sleep,
  type VerifyChunk,
} from "./disk_cache_fill.ts";
import { claimBoot } from "./disk_cache_boot.ts";
import { BlobChunks } from "./disk_cache_chunks.ts";
import { KeptChunkCheck } from "./disk_cache_kept_check.ts";
import { HeldByOthersError } from "./disk_cache_held.ts";
import { BlobSidecar } from "./disk_cache_sidecar.ts";
import { DemandAhead } from "./disk_cache_demand_ahead.ts";
import { CheckedChunks, type StoredBytesChecker, storedBytesChecker } from "./stored_check.ts";
import type { DiskCacheStats } from "./disk_cache_stats.ts";
import { servedChunks } from "./disk_cache_direct.ts";
import { closeQuietly } from "./disk_cache_io.ts";

export { ChunkVerifyError, type VerifyChunk } from "./disk_cache_fill.ts";
export type { DigestCheckEnd, DigestCheckOptions } from "./disk_cache_whole_check.ts";

/** Reads that lost their chunks to eviction this often in a row are served from the inner source. */
const MAX_ATTEMPTS = 5;
/** The map's mtime is the blob's last use for eviction; refreshed at most this often. */
const TOUCH_EVERY_MS = 60_000;

export class DiskCachedSource implements Source {
  readonly size: number;
  readonly chunkBytes: number;
  readonly chunkCount: number;
  readonly #cache: DiskCache;
  readonly #inner: Source;
  readonly #base: string;
  readonly #verify?: VerifyChunk;
  /**
   * The source below checks bytes against a table (stored_check.ts): chunks found in the files
   * are checked once in this process before any reader gets them, as its own fills were.
   */
  readonly #checker?: StoredBytesChecker;
  readonly #checked?: CheckedChunks;
  /** The check of chunks found in the files (disk_cache_kept_check.ts), with #checker. */
  readonly #keptCheck?: KeptChunkCheck;
  readonly #mapFd: number;
  readonly #dataFd: number;
  /** The chunks in the files: locked reads, drops (disk_cache_chunks.ts). */
  readonly #chunks: BlobChunks;
  /** The fill and sync protocol (disk_cache_fill.ts). */
  readonly #filler: BlobFiller;
  /** Chunks known present, least recently read first (chunk eviction order). */
  readonly #lru = new Map<number, true>();
  readonly #closing = new AbortController();
  #degraded = false;
  /** Set when the complete blob failed its digest: the error every read rejects with. */
  #corrupt?: Error;
  /** When a reader last needed a fetch: background completion waits for quiet. */
  #lastForegroundMs = 0;
  /** How far a demand fetch runs past its read (disk_cache_demand_ahead.ts). */
  readonly #demandAhead = new DemandAhead();
  #touchedMs = 0;
  /** The whole-blob digest check (disk_cache_whole_check.ts). */
  readonly #wholeCheck: WholeDigestCheck;
  /** A refusal of the bytes under way (refuseBytes), for close() to wait for. */
  #refusing?: Promise<unknown>;
  /** The blob's `.meta` file (disk_cache_sidecar.ts). */
  readonly #sidecar: BlobSidecar;
  lastUsedMs = Date.now();
  readonly #stats = {
    diskHitBytes: 0,
    fetchedBytes: 0,
    fetches: 0,
    waitedForOthers: 0,
    syncs: 0,
    readsBeforeDurable: 0,
    readsWaitedForSync: 0,
  };

  private constructor(
    cache: DiskCache,
    inner: Source,
    base: string,
    verify: VerifyChunk | undefined,
    fds: { map: number; data: number },
    sidecarAhead: Promise<Uint8Array | undefined> | undefined,
    check: DigestCheckOptions,
  ) {
    this.#cache = cache;
    this.#inner = inner;
    this.#base = base;
    this.#verify = verify;
    this.size = inner.size;
    this.chunkBytes = cache.chunkBytes;
    this.chunkCount = Math.ceil(this.size / this.chunkBytes);
    this.#checker = storedBytesChecker(inner);
    if (this.#checker) this.#checked = new CheckedChunks(this.chunkCount);
    this.#mapFd = fds.map;
    this.#dataFd = fds.data;
    // What every part of this source is told of the blob's files.
    const files = {
      base,
      mapFd: fds.map,
      dataFd: fds.data,
      size: this.size,
      chunkBytes: this.chunkBytes,
      chunkCount: this.chunkCount,
      closing: this.#closing.signal,
      lru: this.#lru,
      warn: (message: string) => cache.warnOnce(message),
    };
    this.#chunks = new BlobChunks({
      ...files,
      checked: this.#checked,
      isFilling: (index) => this.#filler.isFilling(index),
      isWritten: (index) => this.#filler.isWritten(index),
    });
    this.#filler = new BlobFiller({
      ...files,
      cache,
      inner,
      verify,
      readMap: (start, stop) => this.#chunks.readMap(start, stop),
      isDegraded: () => this.#degraded,
      degrade: () => this.#degraded = true,
      corruption: () => this.#corrupt,
      stored: (first, end) => this.#checked?.mark(first, end),
      marked: () => this.#wholeCheck.soon(),
    }, this.#stats);
    if (this.#checker && this.#checked) {
      this.#keptCheck = new KeptChunkCheck({
        ...files,
        checker: this.#checker,
        checked: this.#checked,
        filler: this.#filler,
        chunks: this.#chunks,
      });
    }
    this.#sidecar = new BlobSidecar(cache, base, {
      closed: () => this.#closing.signal.aborted,
      degraded: () => this.#degraded,
    }, sidecarAhead);
    const map = this.#chunks.readMap(0, this.chunkCount);
    map.forEach((byte, index) => isPresent(byte) && this.#lru.set(index, true));
    // Nothing but its digest checks a blob without a chunk table (neither `verify` nor a
    // checking source below): it checks itself once complete, and records a passed check.
    const tableLess = !verify && !this.#checker;
    this.#wholeCheck = new WholeDigestCheck({
      ...files,
      stopped: () => this.#degraded || this.#corrupt !== undefined,
      isComplete: () => this.#chunks.readMap(0, this.chunkCount).every(isPresent),
      readPresentInto: (into, offset) => this.#chunks.readPresentInto(into, offset),
      refuse: (reason) => this.#dropAll(reason),
    }, {
      ownDigest: tableLess ? check.digest : undefined,
      auto: check.auto,
      prepare: this.#keptCheck ? () => this.#keptCheck!.checkAll() : undefined,
      report: check.report,
    });
  }

  /** Opens or creates the blob's files (holding its in-use lock) and the source on them. */
  static open(
    cache: DiskCache,
    inner: Source,
    base: string,
    verify: VerifyChunk | undefined,
    sidecarAhead: Promise<Uint8Array | undefined> | undefined,
    check: DigestCheckOptions,
  ): DiskCachedSource {
    const chunkCount = Math.ceil(inner.size / cache.chunkBytes);
    const fds = openBlobFiles(base, inner.size, chunkCount);
    try {
      claimBoot(base, fds.map, chunkCount);
    } catch (error) {
      closeQuietly(fds.data);
      closeQuietly(fds.map);
      throw error;
    }
    const source = new DiskCachedSource(cache, inner, base, verify, fds, sidecarAhead, check);
    source.#touch();
    source.#wholeCheck.soon(); // found complete: checked unless recorded
    return source;
  }

  diskStats(): DiskCacheStats {
    return {
      ...this.#stats,
      evictedChunks: this.#chunks.evictedChunks,
      damagedChunks: this.#keptCheck?.damagedChunks ?? 0,
      degraded: this.#degraded,
      digestMismatch: this.#corrupt !== undefined,
      digestHashes: this.#wholeCheck.hashes,
    };
  }

  /**
   * Resolves once the fills under way now have ended: their chunks durable and marked present
   * (or failed). Reads do not wait for this; a remount, another process and the bound do.
   */
  async whenDurable(): Promise<void> {
    this.#sidecar.writePending();
    await this.#filler.whenAllDurable();
  }

  /**
   * The blob's sidecar file (`<base>.meta`): bytes a caller keeps with the blob for the next
   * open, e.g. the pages of a chunk table's metadata list (the caller checks them again when it
   * reads them back). At most `maxBytes`; undefined when absent, larger or unreadable.
   */
  readSidecar(maxBytes: number): Promise<Uint8Array | undefined> {
    return this.#sidecar.read(maxBytes);
  }

  /**
   * writeSidecar `delayMs` from now (off a mount's way to ready); a later call replaces a
   * pending one, and whenDurable() and close() write a pending one at once.
   */
  writeSidecarSoon(bytes: Uint8Array, delayMs: number): void {
    this.#sidecar.writeSoon(bytes, delayMs);
  }

  /** Replaces the sidecar (written whole, then renamed into place; counted in the bound). */
  writeSidecar(bytes: Uint8Array): void {
    this.#sidecar.write(bytes);
  }

  /** Chunks marked present in the file now (by any process). */
  presentChunks(): number {
    return this.#chunks.presentCount();
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out, signal);
    return out;
  }

  async readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
    const length = dest.length;
    this.#assertOpen();
    if (this.#corrupt) throw this.#corrupt;
    if (
      !Number.isSafeInteger(offset) || offset < 0 || offset + length > this.size
    ) throw new RangeError(`read of ${length} bytes at ${offset} outside 0..${this.size}`);
    if (length === 0) return;
    this.lastUsedMs = Date.now();
    const first = Math.floor(offset / this.chunkBytes);
    const end = Math.floor((offset + length - 1) / this.chunkBytes) + 1;
    try {
      if (await this.#readCached(offset, dest, first, end, signal)) return;
    } catch (error) {
      if (error instanceof HeldByOthersError) {
        // A fill of another process (stopped?) holds some of these chunks: they stay its to
        // fill, this reader gets its bytes from the inner source, checked as a fill's are.
        const from = first * this.chunkBytes;
        const bytes = await this.#filler.fetchUnstored(first, end, signal);
        dest.set(bytes.subarray(offset - from, offset - from + length));
        return;
      }
      if (!(error instanceof SysError)) throw error;
      // The cache files failed under us (truncated, an I/O error of the disk): this blob goes
      // on from the inner source, as after a failed write; what was cached is not trusted.
      this.#degraded = true;
      this.#cache.warnOnce(
        `disk cache ${this.#base}: ${error.message}; continuing with the memory cache only`,
      );
    }
    // Degraded (or starved by eviction under a tiny bound): the inner source, nothing stored.
    this.#assertOpen();
    this.#stats.fetches++;
    this.#stats.fetchedBytes += length;
    dest.set(await this.#inner.read(offset, length, signal));
  }

  /** The cached read of readInto: true when `dest` was filled from the cache files. */
  async #readCached(
    offset: number,
    dest: Uint8Array,
    first: number,
    end: number,
    signal?: AbortSignal,
  ): Promise<boolean> {
    const length = dest.length;
    let fetched = false;
    for (let attempt = 0; attempt < MAX_ATTEMPTS && !this.#degraded; attempt++) {
      // Closed while this read waited (a fill, a busy lock): its descriptors may be gone.
      this.#assertOpen();
      const map = this.#chunks.readMap(first, end);
      const missing: number[] = [];
      map.forEach((byte, i) =>
        !isPresent(byte) && !this.#filler.isWritten(first + i) && missing.push(first + i)
      );
      if (missing.length) {
        // Gone (evicted by some process): whatever is there later is checked again.
        for (const c of missing) this.#checked?.forget(c);
        fetched = true;
        this.#lastForegroundMs = Date.now();
        const ahead = this.#aheadOf(missing[missing.length - 1] + 1);
        fillTrace("miss", offset, length, missing.join(","), ahead.length);
        const ends = await abortable(this.#filler.fillReadable(missing, ahead), signal);
        fillTrace("miss-ready", offset, length, ends.join(","));
        if (ends.includes("synced")) this.#stats.readsWaitedForSync++;
        continue;
      }
      const unchecked = this.#checked?.uncheckedIn(first, end) ?? [];
      if (unchecked.length && !(await abortable(this.#keptCheck!.check(unchecked), signal))) {
        continue;
      }
      const read = this.#chunks.readKept(first, end, dest, offset);
      if (read === "busy") {
        await abortable(sleep(1), signal); // a filler or evictor holds some of these chunks
        continue;
      }
      if (read === "missing") continue; // an evictor dropped a chunk since
      if (read === "early") this.#stats.readsBeforeDurable++;
      if (!fetched) this.#stats.diskHitBytes += length;
      for (let i = first; i < end; i++) {
        this.#lru.delete(i);
        this.#lru.set(i, true);
      }
      this.#touch();
      return true;
    }
    return false;
  }

  /**
   * A demand fetch goes on past the read to the end of its aligned block of `bytes` (0: stops
   * at the read) and of the `blocks - 1` blocks after it, in the same GET: the reader is
   * answered as soon as its own chunks are verified, the rest follows without a request of its
   * own (a GET to docker-registry costs the same time to its first byte for 4 KiB as for 4 MiB:
   * it reads 4 MiB from the offset first). For images whose files are read in clusters
   * (metadata_prefetch.ts sets it with its background windows, which fetch those blocks next anyway).
   */
  setDemandAheadBytes(bytes: number, blocks = 1): void {
    this.#demandAhead.set(bytes, blocks);
  }

  /** The chunks a demand fetch of a read ending before chunk `from` runs on to. */
  #aheadOf(from: number): number[] {
    return this.#demandAhead.chunksFrom(from, {
      chunkBytes: this.chunkBytes,
      chunkCount: this.chunkCount,
      readMap: (start, stop) => this.#chunks.readMap(start, stop),
      isHeld: (byte, c) =>
        isPresent(byte) || this.#filler.isFilling(c) || this.#filler.isWritten(c),
    });
  }

  /** Descriptors for another thread's direct reads (BlobChunks.openDirectReads), while open. */
  openDirectReads(): DirectReadFiles | undefined {
    if (this.#closing.signal.aborted || this.#corrupt) return undefined;
    return this.#chunks.openDirectReads();
  }

  /** Reads served directly from the file: disk hits, most recently used chunks. */
  noteDirectReads(ranges: readonly number[]): void {
    if (this.#closing.signal.aborted) return;
    this.#stats.diskHitBytes += servedChunks(ranges, this.size, this.chunkBytes, (c) => {
      this.#lru.delete(c);
      this.#lru.set(c, true);
    });
    this.lastUsedMs = Date.now();
    this.#touch();
  }

  /**
   * Starts fetching the missing chunks of [offset, offset + length) without waiting; the
   * promise settles (never rejects) once they are fetched, verified and written (readable
   * here; durable later, see disk_cache_fill.ts), for callers that pace their fills. `pause`:
   * awaited between the pieces of the body (a background fill yielding to a walk).
   */
  fillAhead(offset: number, length: number, pause?: FillPause): Promise<void> {
    const done = Promise.resolve();
    if (this.#degraded || this.#corrupt || this.#closing.signal.aborted || length <= 0) return done;
    const first = Math.floor(offset / this.chunkBytes);
    const end = Math.min(this.chunkCount, Math.ceil((offset + length) / this.chunkBytes));
    if (first >= end) return done;
    const missing: number[] = [];
    this.#chunks.readMap(first, end).forEach((byte, i) => {
      if (!isPresent(byte) && !this.#filler.isFilling(first + i)) missing.push(first + i);
    });
    // Nobody waits for readahead: its failure surfaces (if at all) on the read that needs it.
    if (!missing.length) return done;
    fillTrace("ahead", offset, length, missing.length);
    this.#lastForegroundMs = Date.now();
    return this.#filler.fillReadable(missing, [], pause).then(() => {}, () => {});
  }

  /**
   * Fetches every missing chunk at low priority (`--fetch-all`, see disk_cache_complete.ts).
   * Resolves "complete" once the whole blob is present (CompletionEnd says the others).
   */
  completeInBackground(idleMs?: number, runBytes?: number): Promise<CompletionEnd> {
    return completeInBackground(
      {
        chunkBytes: this.chunkBytes,
        stopped: () => this.#closing.signal.aborted || this.#degraded,
        presence: () => this.#chunks.readMap(0, this.chunkCount),
        quietMs: () => this.#filler.fillingCount > 0 ? 0 : Date.now() - this.#lastForegroundMs,
        fill: (chunks) => this.#filler.fill(chunks),
        warn: (message) => this.#cache.warnOnce(message),
      },
      idleMs,
      runBytes,
    );
  }

  /**
   * Hashes the complete blob against `digest` (disk_cache_whole_check.ts), joining a check of
   * it under way; "ok" without a hash when a blob without a table holds the record of a passed
   * check. "mismatch": the registry sent other bytes somewhere: every chunk is marked absent
   * (no other mount reads them) and every read of this source fails from now on (EIO).
   * "incomplete": a chunk is absent (evicted meanwhile), nothing is known. A blob with a table
   * has its kept chunks checked first (damaged ones fetched again): damage on this disk is not
   * the registry's bytes failing their digest.
   */
  checkDigest(digest: string): Promise<DigestCheckEnd> {
    return this.#wholeCheck.check(digest);
  }

  /** @internal for tests: resolves once no automatic digest check is pending or running. */
  digestChecksSettled(): Promise<void> {
    return this.#wholeCheck.settled();
  }

  /**
   * The blob's bytes failed a check its reader made (a whole-blob stream hashed as it passed,
   * `mount --index-missing`): every chunk is marked absent, so no mount reads them again, and
   * every read of this source fails from now on with `reason`.
   */
  async refuseBytes(reason: string): Promise<void> {
    if (this.#closing.signal.aborted) return;
    const dropping = this.#dropAll(reason);
    this.#refusing = Promise.allSettled([this.#refusing, dropping]);
    await dropping;
  }

  /** Every read fails with `reason` from now on, and every chunk is dropped (BlobChunks). */
  async #dropAll(reason: string): Promise<void> {
    this.#corrupt = new Error(reason);
    await this.#chunks.dropAll();
  }

  /**
   * Drops least recently read chunks of this blob (not being filled, not locked by a reader)
   * until `bytes` are freed; returns the bytes freed (BlobChunks.evict says which go first).
   */
  evictChunks(bytes: number): number {
    return this.#chunks.evict(bytes);
  }

  /** close() was called. */
  get closed(): boolean {
    return this.#closing.signal.aborted;
  }

  async close(): Promise<void> {
    if (this.#closing.signal.aborted) return;
    this.#sidecar.writePending();
    this.#closing.abort(new Error("disk cache closed"));
    this.#cache.released(this);
    await this.#filler.whenAllDurable();
    // Both read and may write through this source's descriptors.
    await this.#wholeCheck.close();
    await this.#refusing;
    await this.#keptCheck?.settled();
    closeQuietly(this.#dataFd);
    closeQuietly(this.#mapFd);
    await this.#inner.close?.();
  }

  #assertOpen(): void {
    if (this.#closing.signal.aborted) throw new Error("read from a closed DiskCachedSource");
  }

  #touch(): void {
    const now = Date.now();
    if (now - this.#touchedMs < TOUCH_EVERY_MS) return;
    this.#touchedMs = now;
    try {
      Deno.utimeSync(`${this.#base}.map`, new Date(now), new Date(now));
    } catch { /* evicted or replaced: the next open recreates it */ }
  }
}
