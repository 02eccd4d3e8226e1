/**
 * A Source in front of the chunk cache that answers reads of pinned pages (the EROFS metadata
 * fetched at mount by `prefetchErofsMetadata`, metadata_prefetch.ts) from memory and passes every other read through.
 * Pinned pages are never evicted: they are the few MB the kernel reads one block at a time.
 * They count against the cache's own bound (`--cache-size`): the cache shrinks by what is
 * pinned, and pins stop at `pinBudgetBytes` (half the cache) whatever an image claims.
 */
import { type CacheStats, noCacheStats } from "./cached.ts";
import type { Source } from "./source.ts";
import { type DirectReadFiles, isDirectReadable } from "./direct_reads.ts";
import {
  closeQuietly,
  openCacheFile,
  openMemoryFile,
  pwriteAll,
  reopenReadOnly,
} from "./disk_cache_io.ts";
import { newWalkClock, type ReadActivity } from "./background_windows.ts";
import { SharedReadActivity } from "./read_activity_cell.ts";

/** The kernel reads the block device in 4 KiB pages; pins are kept at that granularity. */
export const PIN_PAGE_BYTES = 4096;

/** The pin map's byte of a page written to the pin file (PinnedPageFile). */
/** Map bytes saying `count` pages are pinned. */
function pinnedBytes(count: number): Uint8Array {
  return new Uint8Array(count).fill(1);
}

/** Pin budget when the inner source has no cache bound to share. */
export const DEFAULT_PIN_BUDGET_BYTES = 64 << 20;

/** What the inner source may offer besides read(). */
export interface InnerSource extends Source {
  readInto?(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
  stats?(): CacheStats;
  /** The cache's bound; pins take their budget out of it. */
  readonly cacheBytes?: number;
  /** Told how many of `cacheBytes` the pins hold (CachedSource.reserveBytes). */
  reserveBytes?(bytes: number): void;
}

export interface PrefetchStats extends CacheStats {
  /** Bytes pinned in memory. */
  pinnedBytes: number;
  /** Reads answered from pinned pages. */
  pinnedHits: number;
  /** Reads the prefetch made (included in fetches) and their bytes (in bytesFetched). */
  prefetchFetches: number;
  prefetchBytes: number;
  /** Reads that failed (the reader got EIO): the registry gone, bytes refused by their table. */
  readErrors: number;
}

export class PrefetchedSource implements InnerSource {
  readonly size: number;
  /** Pins beyond this are dropped: the metadata walk's budget, and a hard stop behind it. */
  readonly pinBudgetBytes: number;
  readonly #inner: InnerSource;
  readonly #pages = new Map<number, Uint8Array>();
  #pinnedBytes = 0;
  #pinnedHits = 0;
  #pinnedRequested = 0;
  #prefetchFetches = 0;
  #prefetchBytes = 0;
  #readErrors = 0;
  /** Settles at the first read of anything not pinned after nextDataRead() was asked. */
  #nextDataRead?: PromiseWithResolvers<{ offset: number; length: number }>;
  /** When (performance.now()) reads of pinned pages only came at a walk's rate. */
  readonly #walk = newWalkClock();
  /** What the reader thread of openDirectReads() saw (read_activity_cell.ts). */
  readonly #shared = new SharedReadActivity();
  /** When (performance.now()) a read of bytes not all pinned last came. */
  #lastDataReadMs = -Infinity;
  /** Told of every read of bytes not all pinned (background windows move theirs forward). */
  #dataReadListener?: (offset: number, length: number) => void;
  /** The pinned pages in a file too, for another thread's direct reads (openDirectReads). */
  #pinFile?: { fd: number; mapFd: number };
  /** Told of each read of pinned metadata pages (onPinnedRead). */
  #pinnedReadListener?: () => void;
  /** Pinned pages of file data (pin's `data`), not metadata. */
  readonly #dataPages = new Set<number>();
  /** pinnedRuns() as of the last pin (undefined: to be made again). */
  #runs?: number[];

  constructor(inner: InnerSource, options: { pinBudgetBytes?: number } = {}) {
    this.#inner = inner;
    this.size = inner.size;
    this.pinBudgetBytes = options.pinBudgetBytes ??
      (inner.cacheBytes !== undefined
        ? Math.floor(inner.cacheBytes / 2 / PIN_PAGE_BYTES) * PIN_PAGE_BYTES
        : DEFAULT_PIN_BUDGET_BYTES);
  }

  /**
   * Pins `bytes` at `offset` (a multiple of PIN_PAGE_BYTES; `bytes` whole pages except at the
   * end of the source). Pages pinned already are kept; pages past `pinBudgetBytes` are not
   * pinned (reads of them go through the cache). `data`: the pages are file data (a trace
   * prefetch's), not metadata: they are not in pinnedRuns() and their reads are not told to
   * onPinnedRead's listener.
   */
  pin(offset: number, bytes: Uint8Array, options: { data?: boolean } = {}): void {
    if (offset % PIN_PAGE_BYTES) throw new RangeError(`pin at ${offset}: not page aligned`);
    const before = this.#pinnedBytes;
    // Consecutive new pages go to the pin file in one write (and one for their map bytes): a
    // mount pins its listed metadata, ~570 pages for the benchmark image, in ~440 ranges.
    let runStart = -1, runFrom = 0, runPages = 0;
    const flush = () => {
      if (runPages) {
        this.#writePinned(runStart, bytes.subarray(runFrom, runFrom + runPages * PIN_PAGE_BYTES));
      }
      runPages = 0;
    };
    for (let from = 0; from < bytes.length; from += PIN_PAGE_BYTES) {
      const index = (offset + from) / PIN_PAGE_BYTES;
      if (this.#pages.has(index)) {
        flush();
        continue;
      }
      // Every pinned page counts whole: the map entry and its view cost the same either way.
      if (this.#pinnedBytes + PIN_PAGE_BYTES > this.pinBudgetBytes) break;
      const page = bytes.subarray(from, from + PIN_PAGE_BYTES);
      const wanted = Math.min(PIN_PAGE_BYTES, this.size - index * PIN_PAGE_BYTES);
      if (page.length !== wanted) {
        flush();
        continue;
      }
      this.#pages.set(index, page);
      if (options.data) this.#dataPages.add(index);
      this.#pinnedBytes += PIN_PAGE_BYTES;
      if (!runPages) [runStart, runFrom] = [index, from];
      runPages++;
    }
    flush();
    if (this.#pinnedBytes !== before) {
      this.#runs = undefined;
      this.#inner.reserveBytes?.(this.#pinnedBytes);
    }
  }

  /**
   * The pinned metadata pages as [offset, length] pairs of maximal runs, in offset order (the
   * last run may end at the source's end, short of a whole page).
   */
  pinnedRuns(): readonly number[] {
    if (this.#runs) return this.#runs;
    const runs: number[] = [];
    const metadata = [...this.#pages.keys()].filter((index) => !this.#dataPages.has(index));
    for (const index of metadata.sort((a, b) => a - b)) {
      const offset = index * PIN_PAGE_BYTES;
      const length = this.#pages.get(index)!.length;
      const last = runs.length - 2;
      if (last >= 0 && runs[last] + runs[last + 1] === offset) runs[last + 1] += length;
      else runs.push(offset, length);
    }
    this.#runs = runs;
    return runs;
  }

  /** `listener` is told of each later read of pinned metadata pages only (one listener). */
  onPinnedRead(listener: () => void): void {
    this.#pinnedReadListener = listener;
  }

  /** Counts a read the prefetch made around the cache (for stats()). */
  countPrefetch(bytes: number): void {
    this.#prefetchFetches++;
    this.#prefetchBytes += bytes;
  }

  get pinnedBytes(): number {
    return this.#pinnedBytes;
  }

  /**
   * Resolves at the first read of bytes not all pinned from now on: after a mount, the first
   * read of file data (a cold `find` reads pinned pages only). Background fills wait for it.
   * Reads before the call do not count: an NBD attach's block-size probe reads the image head
   * before its pages are pinned. The partition scan of mount(2)'s open comes after: the windows
   * wait for firstDataReadPast(IMAGE_HEAD_PROBE_BYTES).
   */
  nextDataRead(): Promise<{ offset: number; length: number }> {
    this.#nextDataRead ??= Promise.withResolvers();
    return this.#nextDataRead.promise;
  }

  /**
   * When reads of pinned pages only at a walk's rate (a metadata walk: `find`; not mount(2)'s
   * few) and reads of other bytes (file data) last came, on the performance.now() clock;
   * -Infinity: none yet.
   */
  readActivity(): ReadActivity {
    return this.#shared.merge({
      walkMs: this.#walk.walkMs,
      dataMs: this.#lastDataReadMs,
      walkQuietMs: this.#walk.quietMs,
    });
  }

  /** `listener` is told of each later read of bytes not all pinned (one listener). */
  onDataRead(listener: (offset: number, length: number) => void): void {
    this.#dataReadListener = listener;
  }

  #noteData(offset: number, length: number): void {
    this.#lastDataReadMs = performance.now();
    this.#nextDataRead?.resolve({ offset, length });
    this.#nextDataRead = undefined;
    this.#dataReadListener?.(offset, length);
  }

  read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    const first = Math.floor(offset / PIN_PAGE_BYTES);
    const last = Math.floor((offset + length - 1) / PIN_PAGE_BYTES);
    if (length > 0 && this.#allPinned(first, last)) {
      this.#hit(length, first);
      if (first === last) {
        const start = offset - first * PIN_PAGE_BYTES;
        return Promise.resolve(this.#pages.get(first)!.subarray(start, start + length));
      }
      const out = new Uint8Array(length);
      this.#copy(offset, out, first, last);
      return Promise.resolve(out);
    }
    this.#noteData(offset, length);
    return this.#inner.read(offset, length, signal).catch((error) => this.#failed(error, signal));
  }

  /** Counts a read that failed for its reader (not one its reader gave up on), and rethrows. */
  #failed(error: unknown, signal?: AbortSignal): never {
    if (!signal?.aborted) this.#readErrors++;
    throw error;
  }

  async readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
    const first = Math.floor(offset / PIN_PAGE_BYTES);
    const last = Math.floor((offset + dest.length - 1) / PIN_PAGE_BYTES);
    if (dest.length > 0 && this.#allPinned(first, last)) {
      this.#hit(dest.length, first);
      this.#copy(offset, dest, first, last);
      return;
    }
    this.#noteData(offset, dest.length);
    try {
      if (this.#inner.readInto) return await this.#inner.readInto(offset, dest, signal);
      dest.set(await this.#inner.read(offset, dest.length, signal));
    } catch (error) {
      this.#failed(error, signal);
    }
  }

  /**
   * Direct reads of the disk cache below, if any, and of the pinned pages: a metadata list's
   * pages are pinned without their chunks being on disk, and a cold `find` reads nothing else,
   * so without them each of its READs would go through this thread (~85 µs each when quiet).
   * The pinned pages are written to an unlinked file as they are pinned, for that thread.
   */
  openDirectReads(): DirectReadFiles | undefined {
    if (!isDirectReadable(this.#inner)) return undefined;
    const files = this.#inner.openDirectReads();
    if (!files) return undefined;
    // Without the pin file the reader answers chunk reads only (pinned pages come here, where
    // the walk clock sees them); it still tells the pacing of its data reads at once.
    const withoutPins = { ...files, activity: this.#shared.arg() };
    const pins = this.#openPinFile();
    if (!pins) return withoutPins;
    let readerFd = -1, readerMapFd = -1;
    try {
      readerFd = reopenReadOnly(pins.fd);
      readerMapFd = reopenReadOnly(pins.mapFd);
    } catch {
      closeQuietly(readerFd);
      return withoutPins;
    }
    let open = true;
    return {
      ...withoutPins,
      pins: { fd: readerFd, mapFd: readerMapFd, pageBytes: PIN_PAGE_BYTES },
      // Once, as the disk cache's own close (disk_cache_direct.ts): a second close would close
      // numbers other files may hold by then.
      close: () => {
        if (!open) return;
        open = false;
        files.close();
        closeQuietly(readerFd);
        closeQuietly(readerMapFd);
      },
    };
  }

  #openPinFile(): { fd: number; mapFd: number } | undefined {
    if (this.#pinFile) return this.#pinFile;
    const opened: number[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        // In memory where possible: on disk, dropping the page cache sent a cold find's reads
        // of pinned pages to the disk, behind the background windows' writes (find 2-3x local).
        const inMemory = openMemoryFile();
        if (inMemory !== undefined) {
          opened.push(inMemory);
          continue;
        }
        const path = Deno.makeTempFileSync({ prefix: "erofs-oci-pins-" });
        try {
          opened.push(openCacheFile(path, false));
        } finally {
          Deno.removeSync(path); // unlinked: gone with the last descriptor
        }
      }
      this.#pinFile = { fd: opened[0], mapFd: opened[1] };
      for (const [index, page] of this.#pages) this.#writePinned(index, page);
      return this.#pinFile;
    } catch {
      for (const fd of opened) closeQuietly(fd);
      return undefined;
    }
  }

  /**
   * Pages from `index` on (`pages`: whole pages, but for the source's last) into the pin file,
   * then their map bytes (the other thread reads the map first).
   */
  #writePinned(index: number, pages: Uint8Array): void {
    const file = this.#pinFile;
    if (!file) return;
    try {
      pwriteAll(file.fd, pages, index * PIN_PAGE_BYTES);
      pwriteAll(file.mapFd, pinnedBytes(Math.ceil(pages.length / PIN_PAGE_BYTES)), index);
    } catch { /* not marked: those pages' reads go through this thread */ }
  }

  /** Reads of pinned pages count as pinned hits, as when served here (no readahead below). */
  noteDirectReads(ranges: readonly number[]): void {
    const passed: number[] = [];
    for (let i = 0; i + 1 < ranges.length; i += 2) {
      const offset = ranges[i], length = ranges[i + 1];
      const first = Math.floor(offset / PIN_PAGE_BYTES);
      const last = Math.floor((offset + length - 1) / PIN_PAGE_BYTES);
      if (length > 0 && this.#allPinned(first, last)) this.#hit(length, first);
      else {
        passed.push(offset, length);
        this.#noteData(offset, length);
      }
    }
    if (passed.length && isDirectReadable(this.#inner)) this.#inner.noteDirectReads(passed);
  }

  stats(): PrefetchStats {
    const inner: CacheStats = this.#inner.stats?.() ?? noCacheStats();
    return {
      ...inner,
      bytesRequested: inner.bytesRequested + this.#pinnedRequested,
      bytesFetched: inner.bytesFetched + this.#prefetchBytes,
      fetches: inner.fetches + this.#prefetchFetches,
      hits: inner.hits + this.#pinnedHits,
      pinnedBytes: this.#pinnedBytes,
      pinnedHits: this.#pinnedHits,
      prefetchFetches: this.#prefetchFetches,
      prefetchBytes: this.#prefetchBytes,
      readErrors: this.#readErrors,
    };
  }

  async close(): Promise<void> {
    this.#pages.clear();
    this.#dataPages.clear();
    this.#pinnedBytes = 0;
    if (this.#pinFile) { // the reader's descriptors are its own
      closeQuietly(this.#pinFile.fd);
      closeQuietly(this.#pinFile.mapFd);
    }
    this.#pinFile = undefined;
    await this.#inner.close?.();
  }

  #allPinned(first: number, last: number): boolean {
    for (let p = first; p <= last; p++) if (!this.#pages.has(p)) return false;
    return true;
  }

  /** A read of pinned pages from page `first` on. */
  #hit(length: number, first: number): void {
    this.#walk.note(performance.now());
    if (!this.#dataPages.has(first)) this.#pinnedReadListener?.();
    this.#pinnedHits++;
    this.#pinnedRequested += length;
  }

  #copy(offset: number, out: Uint8Array, first: number, last: number): void {
    const end = offset + out.length;
    for (let p = first; p <= last; p++) {
      const pageStart = p * PIN_PAGE_BYTES;
      const page = this.#pages.get(p)!;
      const from = Math.max(offset, pageStart);
      const to = Math.min(end, pageStart + page.length);
      out.set(page.subarray(from - pageStart, to - pageStart), from - offset);
    }
  }
}
