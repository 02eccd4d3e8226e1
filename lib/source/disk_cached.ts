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
 * This file is the blob's life (open, refusal, digest check, close) and its state; its parts are
 * made and wired to each other in disk_cache_parts.ts: the read path is disk_cache_read.ts, what
 * is fetched beyond a read (demand run-ahead, readahead, `--fetch-all`) disk_cache_ahead.ts, the
 * locked reads and drops of chunks in the files (eviction) disk_cache_chunks.ts, the check of
 * kept chunks against a table below disk_cache_kept_check.ts, the fill protocol
 * disk_cache_fill.ts and its sync batching disk_cache_sync.ts, the descriptors for the FUSE
 * reader thread's direct reads disk_cache_direct.ts, the `.meta` sidecar disk_cache_sidecar.ts,
 * the counters' shape disk_cache_stats.ts, the hash of the complete blob against its digest
 * disk_cache_whole_check.ts.
 */
import type { Source } from "./source.ts";
import type { DiskCache } from "./disk_cache.ts";
import type { DirectReadFiles } from "./direct_reads.ts";
import { openBlobFiles } from "./disk_cache_files.ts";
import type { CompletionEnd } from "./disk_cache_complete.ts";
import type { DigestCheckEnd, DigestCheckOptions } from "./disk_cache_whole_check.ts";
import type { FillPause } from "./disk_cache_fill.ts";
import type { VerifyChunk } from "./disk_cache_fetch.ts";
import { claimBoot } from "./disk_cache_boot.ts";
import { type BlobParts, makeBlobParts } from "./disk_cache_parts.ts";
import type { DiskCacheStats } from "./disk_cache_stats.ts";
import { closeQuietly } from "./disk_cache_io.ts";
import { reclaimUnfilled } from "./disk_cache_reclaim.ts";
import type { EvictableChunk } from "./disk_cache_chunks.ts";

export type { DigestCheckEnd, DigestCheckOptions } from "./disk_cache_whole_check.ts";

export class DiskCachedSource implements Source {
  readonly size: number;
  readonly chunkBytes: number;
  readonly chunkCount: number;
  readonly #cache: DiskCache;
  readonly #inner: Source;
  readonly #mapFd: number;
  readonly #dataFd: number;
  readonly #closing = new AbortController();
  #degraded = false;
  /** Set when the complete blob failed its digest: the error every read rejects with. */
  #corrupt?: Error;
  /** A refusal of the bytes under way (refuseBytes), for close() to wait for. */
  #refusing?: Promise<unknown>;
  /** The chunks, fills, reads, checks and sidecar of the blob (disk_cache_parts.ts). */
  readonly #parts: BlobParts;

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
    this.#mapFd = fds.map;
    this.#dataFd = fds.data;
    this.#parts = makeBlobParts({
      cache,
      inner,
      base,
      verify,
      fds,
      sidecarAhead,
      check,
      closing: this.#closing.signal,
      isDegraded: () => this.#degraded,
      degrade: () => this.#degraded = true,
      corruption: () => this.#corrupt,
      refuse: (reason) => this.#dropAll(reason),
    });
    this.size = this.#parts.size;
    this.chunkBytes = this.#parts.chunkBytes;
    this.chunkCount = this.#parts.chunkCount;
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
    source.reclaimUnfilled();
    source.#parts.reader.touch();
    source.#parts.wholeCheck.soon(); // found complete: checked unless recorded
    return source;
  }

  /** When a reader last used the blob (the disk cache's bound evicts the least recent first). */
  get lastUsedMs(): number {
    return this.#parts.reader.lastUsedMs;
  }

  diskStats(): DiskCacheStats {
    return {
      ...this.#parts.counters,
      evictedChunks: this.#parts.chunks.evictedChunks,
      damagedChunks: this.#parts.keptCheck?.damagedChunks ?? 0,
      degraded: this.#degraded,
      digestMismatch: this.#corrupt !== undefined,
      digestHashes: this.#parts.wholeCheck.hashes,
    };
  }

  /**
   * Resolves once the fills under way now have ended: their chunks durable and marked present
   * (or failed). Reads do not wait for this; a remount, another process and the bound do.
   */
  async whenDurable(): Promise<void> {
    this.#parts.sidecar.writePending();
    await this.#parts.filler.whenAllDurable();
  }

  /**
   * The blob's sidecar file (`<base>.meta`): bytes a caller keeps with the blob for the next
   * open, e.g. the pages of a chunk table's metadata list (the caller checks them again when it
   * reads them back). At most `maxBytes`; undefined when absent, larger or unreadable.
   */
  readSidecar(maxBytes: number): Promise<Uint8Array | undefined> {
    return this.#parts.sidecar.read(maxBytes);
  }

  /** Counts sidecar bytes a caller read back and used instead of fetching them (DISK HITS). */
  countSidecarHit(bytes: number): void {
    this.#parts.counters.diskHitBytes += bytes;
  }

  /**
   * writeSidecar `delayMs` from now (off a mount's way to ready); a later call replaces a
   * pending one, and whenDurable() and close() write a pending one at once.
   */
  writeSidecarSoon(bytes: Uint8Array, delayMs: number): void {
    this.#parts.sidecar.writeSoon(bytes, delayMs);
  }

  /** Replaces the sidecar (written whole, then renamed into place; counted in the bound). */
  writeSidecar(bytes: Uint8Array): void {
    this.#parts.sidecar.write(bytes);
  }

  /** Chunks marked present in the file now (by any process). */
  presentChunks(): number {
    return this.#parts.chunks.presentCount();
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out, signal);
    return out;
  }

  readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
    return this.#parts.reader.readInto(offset, dest, signal);
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
    this.#parts.ahead.setDemandAheadBytes(bytes, blocks);
  }

  /** Descriptors for another thread's direct reads (BlobChunks.openDirectReads), while open. */
  openDirectReads(): DirectReadFiles | undefined {
    if (this.#closing.signal.aborted || this.#corrupt) return undefined;
    return this.#parts.chunks.openDirectReads();
  }

  /** Reads served directly from the file: disk hits, most recently used chunks. */
  noteDirectReads(ranges: readonly number[]): void {
    this.#parts.reader.noteDirectReads(ranges);
  }

  /**
   * Starts fetching the missing chunks of [offset, offset + length) without waiting; the
   * promise settles (never rejects) once they are fetched, verified and written (readable
   * here; durable later, see disk_cache_fill.ts), for callers that pace their fills. `pause`:
   * awaited between the pieces of the body (a background fill yielding to a walk).
   */
  fillAhead(offset: number, length: number, pause?: FillPause): Promise<void> {
    return this.#parts.ahead.fillAhead(offset, length, pause);
  }

  /**
   * Fetches every missing chunk at low priority (`--fetch-all`, see disk_cache_complete.ts).
   * Resolves "complete" once the whole blob is present (CompletionEnd says the others).
   */
  completeInBackground(idleMs?: number, runBytes?: number): Promise<CompletionEnd> {
    return this.#parts.ahead.completeInBackground(idleMs, runBytes);
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
    return this.#parts.wholeCheck.check(digest);
  }

  /** @internal for tests: resolves once no automatic digest check is pending or running. */
  digestChecksSettled(): Promise<void> {
    return this.#parts.wholeCheck.settled();
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
    await this.#parts.chunks.dropAll();
  }

  /**
   * Drops least recently read chunks of this blob (not being filled, not locked by a reader)
   * until `bytes` are freed; returns the bytes freed (BlobChunks.evict says which go first).
   */
  evictChunks(bytes: number): number {
    return this.#parts.chunks.evict(bytes);
  }

  /** This blob's chunks in eviction order, with when each was last used (BlobChunks). */
  evictionOrder(): EvictableChunk[] {
    return this.#parts.chunks.evictionOrder();
  }

  /** Drops chunk `index` for eviction: the bytes freed, undefined when the disk failed. */
  evictChunk(index: number): number | undefined {
    return this.#parts.chunks.evictChunk(index);
  }

  /**
   * Punches out what absent chunks that no fill holds still have allocated (a fill of a process
   * killed before it gave its reservation back, disk_cache_reclaim.ts); the bytes freed. A
   * failing disk is left to the next scan, which counts what stays.
   */
  reclaimUnfilled(): number {
    if (this.#closing.signal.aborted || this.#degraded) return 0;
    try {
      return reclaimUnfilled(
        {
          mapFd: this.#mapFd,
          dataFd: this.#dataFd,
          chunkBytes: this.chunkBytes,
          chunkCount: this.chunkCount,
          size: this.size,
        },
        (index) => this.#parts.filler.isFilling(index),
      );
    } catch {
      return 0;
    }
  }

  /** close() was called. */
  get closed(): boolean {
    return this.#closing.signal.aborted;
  }

  async close(): Promise<void> {
    if (this.#closing.signal.aborted) return;
    this.#parts.sidecar.writePending();
    this.#closing.abort(new Error("disk cache closed"));
    this.#cache.released(this);
    await this.#parts.filler.whenAllDurable();
    // Both read and may write through this source's descriptors.
    await this.#parts.wholeCheck.close();
    await this.#refusing;
    await this.#parts.keptCheck?.settled();
    closeQuietly(this.#dataFd);
    closeQuietly(this.#mapFd);
    await this.#inner.close?.();
  }
}
