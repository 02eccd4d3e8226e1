/**
 * One blob behind the disk cache (see disk_cache.ts for the layout and the locking rules):
 * reads are pread from the data file once their chunks are marked present; missing chunks are
 * fetched as runs (one underlying read per run, written where they belong, no per-chunk
 * copies), verified, written and marked WRITTEN (readable by every process of this boot); a
 * later sync marks them PRESENT (disk_cache_fill.ts). Readers in this process read a chunk as
 * soon as it is written, even before its mark, under its fill's write lock. A fill another
 * process holds is waited for, not repeated; one held past OTHERS_FILL_WAIT_MS (a stopped
 * process) is read around, from the inner source without storing (disk_cache_fill.ts). When
 * the disk fails (full, quota, I/O error) the source warns once and serves what is missing from
 * the inner source directly from then on.
 * This file is the read path and the blob's life (eviction, digest check, close); the fill and
 * sync protocol is disk_cache_fill.ts, the descriptors for the FUSE reader thread's direct reads
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
import { forgetSum, openBlobFiles } from "./disk_cache_files.ts";
import { completeInBackground, type CompletionEnd } from "./disk_cache_complete.ts";
import { type DigestCheckEnd, WholeDigestCheck } from "./disk_cache_whole_check.ts";
import {
  BlobFiller,
  chunkRuns,
  type FillPause,
  HeldByOthersError,
  isPresent,
  sleep,
  type VerifyChunk,
} from "./disk_cache_fill.ts";
import { claimBoot } from "./disk_cache_boot.ts";
import { BlobSidecar } from "./disk_cache_sidecar.ts";
import { DemandAhead } from "./disk_cache_demand_ahead.ts";
import { CheckedChunks, type StoredBytesChecker, storedBytesChecker } from "./stored_check.ts";
import type { DiskCacheStats } from "./disk_cache_stats.ts";
import { openDirectReadFiles, servedChunks } from "./disk_cache_direct.ts";
import {
  closeQuietly,
  dataSyncNow,
  dropChunks,
  F_RDLCK,
  F_WRLCK,
  preadExact,
  pwriteAll,
  tryLock,
  unlock,
} from "./disk_cache_io.ts";

export { ChunkVerifyError, type VerifyChunk } from "./disk_cache_fill.ts";
export type { DigestCheckEnd } from "./disk_cache_whole_check.ts";

/** The whole-blob digest check of one source (WholeDigestCheck). */
export interface DigestCheckOptions {
  /** The blob's digest: a blob without a chunk table is checked against it once complete. */
  digest: string;
  /** Check by itself once complete (false: only when checkDigest is called). */
  auto: boolean;
  /** Told the end of every check that hashed the blob. */
  report: (digest: string, end: DigestCheckEnd, tookMs: number) => void;
}

const POLL_MS = 10;
/** Reads that lost their chunks to eviction this often in a row are served from the inner source. */
const MAX_ATTEMPTS = 5;
/** The map's mtime is the blob's last use for eviction; refreshed at most this often. */
const TOUCH_EVERY_MS = 60_000;
/** Rounds of #checkAllKept: a damaged chunk is dropped, fetched again, then checked. */
const CHECK_ALL_ROUNDS = 4;

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
  /** Checks of kept spans under way, by span: reads of one span wait for one check. */
  readonly #checking = new Map<number, Promise<boolean>>();
  readonly #mapFd: number;
  readonly #dataFd: number;
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
  #evictedChunks = 0;
  #damagedChunks = 0;

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
    this.#filler = new BlobFiller({
      cache,
      inner,
      base,
      verify,
      mapFd: fds.map,
      dataFd: fds.data,
      size: this.size,
      chunkBytes: this.chunkBytes,
      chunkCount: this.chunkCount,
      closing: this.#closing.signal,
      lru: this.#lru,
      readMap: (start, stop) => this.#readMap(start, stop),
      isDegraded: () => this.#degraded,
      degrade: () => this.#degraded = true,
      corruption: () => this.#corrupt,
      stored: (first, end) => this.#checked?.mark(first, end),
      marked: () => this.#wholeCheck.soon(),
    }, this.#stats);
    this.#sidecar = new BlobSidecar(cache, base, {
      closed: () => this.#closing.signal.aborted,
      degraded: () => this.#degraded,
    }, sidecarAhead);
    const map = this.#readMap(0, this.chunkCount);
    map.forEach((byte, index) => isPresent(byte) && this.#lru.set(index, true));
    // Nothing but its digest checks a blob without a chunk table (neither `verify` nor a
    // checking source below): it checks itself once complete, and records a passed check.
    const tableLess = !verify && !this.#checker;
    this.#wholeCheck = new WholeDigestCheck({
      base,
      mapFd: fds.map,
      dataFd: fds.data,
      chunkCount: this.chunkCount,
      size: this.size,
      closing: this.#closing.signal,
      stopped: () => this.#degraded || this.#corrupt !== undefined,
      isComplete: () => this.#readMap(0, this.chunkCount).every(isPresent),
      readPresentInto: (into, offset) => this.#readPresentInto(into, offset),
      refuse: (reason) => this.#dropAll(reason),
      warn: (message) => cache.warnOnce(message),
    }, {
      ownDigest: tableLess ? check.digest : undefined,
      auto: check.auto,
      prepare: this.#checked ? () => this.#checkAllKept() : undefined,
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
      evictedChunks: this.#evictedChunks,
      damagedChunks: this.#damagedChunks,
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
    return this.#readMap(0, this.chunkCount).reduce((n, byte) => n + (isPresent(byte) ? 1 : 0), 0);
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
      const map = this.#readMap(first, end);
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
      if (unchecked.length && !(await abortable(this.#checkKept(unchecked), signal))) continue;
      const read = this.#readKept(first, end, dest, offset);
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
   * Copies the bytes at `offset` (chunks [first, end)) from the data file into `dest` when
   * every chunk is readable: marked present, or written by this process's fills and not yet
   * marked ("early"). Chunks written by those fills are held by their write lock: a read lock
   * here (same descriptor) would replace it, so only the marked runs are locked.
   */
  #readKept(
    first: number,
    end: number,
    dest: Uint8Array,
    offset: number,
  ): "ok" | "early" | "missing" | "busy" {
    const readable = (byte: number, i: number) =>
      isPresent(byte) || this.#filler.isWritten(first + i);
    const map = this.#readMap(first, end);
    if (!map.every(readable)) return "missing";
    const locked = chunkRuns(map, first, true);
    const taken = locked.filter(([at, n]) => tryLock(this.#mapFd, F_RDLCK, at, n));
    if (taken.length !== locked.length) {
      for (const [at, n] of taken) unlock(this.#mapFd, at, n);
      return "busy";
    }
    try {
      // Re-read under the lock: an evictor may have dropped a chunk since.
      const now = this.#readMap(first, end);
      if (!now.every(readable)) return "missing";
      preadExact(this.#dataFd, dest, offset);
      return now.every(isPresent) ? "ok" : "early";
    } finally {
      for (const [at, n] of locked) unlock(this.#mapFd, at, n);
    }
  }

  /**
   * Checks the chunks of `chunks` found in the files (not fetched here) against the table of
   * the source below, in spans of whole units of both the table and the chunks; a span's
   * chunks not in the files are fetched first (the source below checks them). Chunks whose
   * bytes fail are dropped, to be fetched again. True when every one of `chunks` is checked.
   */
  async #checkKept(chunks: number[]): Promise<boolean> {
    const spanChunks = this.#spanChunks();
    let all = true;
    for (const span of new Set(chunks.map((c) => Math.floor(c / spanChunks)))) {
      let check = this.#checking.get(span);
      if (!check) {
        check = this.#checkSpan(
          span * spanChunks,
          Math.min(this.chunkCount, (span + 1) * spanChunks),
        )
          .finally(() => this.#checking.delete(span));
        this.#checking.set(span, check);
      }
      if (!(await check)) all = false;
    }
    return all;
  }

  /** Chunks per span of #checkKept: the least common multiple of both units, in chunks. */
  #spanChunks(): number {
    const unit = this.#checker!.checkUnitBytes;
    const gcd = (a: number, b: number): number => b === 0 ? a : gcd(b, a % b);
    return unit / gcd(unit, this.chunkBytes);
  }

  async #checkSpan(first: number, end: number): Promise<boolean> {
    const checker = this.#checker!;
    const offset = first * this.chunkBytes;
    const bytes = new Uint8Array(Math.min(this.size, end * this.chunkBytes) - offset);
    const read = this.#readKept(first, end, bytes, offset);
    if (read === "busy") {
      await sleep(1);
      return false;
    }
    if (read === "missing") {
      const absent: number[] = [];
      this.#readMap(first, end).forEach((byte, i) =>
        !isPresent(byte) && !this.#filler.isWritten(first + i) && absent.push(first + i)
      );
      for (const c of absent) this.#checked!.forget(c);
      if (absent.length) await this.#filler.fillReadable(absent, []);
      return false;
    }
    const unitBytes = checker.checkUnitBytes;
    const units: Promise<boolean>[] = [];
    for (let at = 0; at < bytes.length; at += unitBytes) {
      const unit = bytes.subarray(at, Math.min(bytes.length, at + unitBytes));
      units.push(checker.checkStored((offset + at) / unitBytes, unit));
    }
    // Hashed side by side (Web Crypto runs them on the blocking pool).
    let badFrom = -1, badTo = -1;
    (await Promise.all(units)).forEach((good, k) => {
      if (good) return;
      if (badFrom < 0) badFrom = offset + k * unitBytes;
      badTo = Math.min(offset + bytes.length, offset + (k + 1) * unitBytes);
    });
    if (this.#closing.signal.aborted) return false;
    if (badFrom < 0) {
      // Chunks evicted while they were hashed are not marked: their next bytes are checked.
      const now = this.#readMap(first, end);
      let all = true;
      now.forEach((byte, i) => {
        if (isPresent(byte) || this.#filler.isWritten(first + i)) {
          this.#checked!.mark(first + i, first + i + 1);
        } else all = false;
      });
      return all;
    }
    const from = Math.floor(badFrom / this.chunkBytes);
    const to = Math.ceil(badTo / this.chunkBytes);
    this.#cache.warnOnce(
      `disk cache ${this.#base}: the kept bytes at offset ${badFrom} do not match the layer's ` +
        "chunk table (damaged on disk?); fetching them again",
    );
    this.#dropDamaged(from, to);
    return false;
  }

  /**
   * Marks chunks [first, end) absent and punches their bytes out (as eviction does), unless a
   * reader or filler of some process holds them now: then they stay, still unchecked here.
   */
  #dropDamaged(first: number, end: number): void {
    for (let index = first; index < end; index++) {
      if (this.#filler.isWritten(index)) continue;
      try {
        if (this.#dropChunk(index) > 0) this.#damagedChunks++;
      } catch (error) {
        this.#cache.warnOnce(`disk cache ${this.#base}: ${(error as Error).message}`);
        return;
      }
    }
  }

  /**
   * Drops chunk `index` from the files (dropChunks) under its write lock and forgets it here;
   * 0 when a fill of this process or a reader of any process holds it or it is not present,
   * else the bytes freed. Errors of the disk are thrown.
   */
  #dropChunk(index: number): number {
    if (this.#filler.isFilling(index)) return 0;
    if (!tryLock(this.#mapFd, F_WRLCK, index, 1)) return 0;
    try {
      this.#lru.delete(index);
      this.#checked?.forget(index);
      if (!isPresent(this.#readMap(index, index + 1)[0])) return 0;
      return dropChunks(
        {
          mapFd: this.#mapFd,
          dataFd: this.#dataFd,
          chunkBytes: this.chunkBytes,
          sizeBytes: this.size,
        },
        index,
        index + 1,
      );
    } finally {
      unlock(this.#mapFd, index, 1);
    }
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
      readMap: (start, stop) => this.#readMap(start, stop),
      isHeld: (byte, c) =>
        isPresent(byte) || this.#filler.isFilling(c) || this.#filler.isWritten(c),
    });
  }

  /**
   * Descriptors for another thread's direct reads (direct_reads.ts): the map and data file
   * opened again, so that thread's read locks keep this process's fillers and evictors off
   * the chunks it reads, exactly as another process's would.
   */
  openDirectReads(): DirectReadFiles | undefined {
    if (this.#closing.signal.aborted || this.#corrupt) return undefined;
    return openDirectReadFiles({
      mapFd: this.#mapFd,
      dataFd: this.#dataFd,
      chunkBytes: this.chunkBytes,
      size: this.size,
      checked: this.#checked?.marks,
    });
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
    this.#readMap(first, end).forEach((byte, i) => {
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
        presence: () => this.#readMap(0, this.chunkCount),
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

  /** Checks every chunk not checked here yet (#checkKept), a few rounds; true when all are. */
  async #checkAllKept(): Promise<boolean> {
    for (let round = 0; round < CHECK_ALL_ROUNDS; round++) {
      if (this.#closing.signal.aborted) return false;
      const unchecked = this.#checked!.uncheckedIn(0, this.chunkCount);
      if (unchecked.length === 0 || await this.#checkKept(unchecked)) return true;
    }
    return false;
  }

  /**
   * Copies the bytes at `offset` into `into` when every chunk there is present, under read
   * locks so that no evictor (of any process) punches a hole under the copy, without fetching
   * or moving the chunks in the LRU; false when one is not present. The whole-blob hash reads
   * through this: a hole read as zeros would make a correct layer fail its digest.
   */
  async #readPresentInto(into: Uint8Array, offset: number): Promise<boolean> {
    const first = Math.floor(offset / this.chunkBytes);
    const end = Math.floor((offset + into.length - 1) / this.chunkBytes) + 1;
    while (!this.#closing.signal.aborted) {
      const read = this.#readKept(first, end, into, offset);
      if (read === "ok") return true;
      // Absent, or written by a fill here and not yet marked: not present.
      if (read !== "busy") return false;
      await sleep(POLL_MS); // a filler or evictor of another process holds some of them
    }
    return false;
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

  async #dropAll(reason: string): Promise<void> {
    this.#corrupt = new Error(reason);
    while (!tryLock(this.#mapFd, F_WRLCK, 0, this.chunkCount)) await sleep(POLL_MS);
    try {
      pwriteAll(this.#mapFd, new Uint8Array(this.chunkCount), 0);
      dataSyncNow(this.#mapFd);
      forgetSum(this.#base);
      this.#lru.clear();
      this.#checked?.forgetAll();
    } catch (error) {
      this.#cache.warnOnce(`disk cache ${this.#base}: ${(error as Error).message}`);
    } finally {
      unlock(this.#mapFd, 0, this.chunkCount);
    }
  }

  /**
   * Drops least recently read chunks of this blob (not being filled, not locked by a reader)
   * until `bytes` are freed; returns the bytes freed. Chunks another process filled since this
   * source opened were never read here and go first. The map byte is cleared and synced
   * before the hole is punched, so no reader or restart sees a hole marked present.
   */
  evictChunks(bytes: number): number {
    let freed = 0;
    const unreadHere: number[] = [];
    this.#readMap(0, this.chunkCount).forEach((byte, index) =>
      isPresent(byte) && !this.#lru.has(index) && unreadHere.push(index)
    );
    for (const index of [...unreadHere, ...this.#lru.keys()]) {
      if (freed >= bytes) break;
      try {
        const dropped = this.#dropChunk(index);
        freed += dropped;
        if (dropped > 0) this.#evictedChunks++;
      } catch (error) {
        this.#cache.warnOnce(`disk cache eviction: ${(error as Error).message}`);
        break;
      }
    }
    return freed;
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
    await Promise.allSettled(this.#checking.values());
    closeQuietly(this.#dataFd);
    closeQuietly(this.#mapFd);
    await this.#inner.close?.();
  }

  #assertOpen(): void {
    if (this.#closing.signal.aborted) throw new Error("read from a closed DiskCachedSource");
  }

  #readMap(start: number, stop: number): Uint8Array {
    const map = new Uint8Array(stop - start);
    preadExact(this.#mapFd, map, start);
    return map;
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
