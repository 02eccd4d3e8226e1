/**
 * A Source in front of the chunk cache that answers reads of pinned pages (the EROFS metadata
 * fetched at mount by `prefetchErofsMetadata`) from memory and passes every other read through.
 * Pinned pages are never evicted: they are the few MB the kernel reads one block at a time.
 * They count against the cache's own bound (`--cache-size`): the cache shrinks by what is
 * pinned, and pins stop at `pinBudgetBytes` (half the cache) whatever an image claims.
 */
import { walkErofsMetadata } from "../erofs/metadata_walk.ts";
import type { CacheStats } from "./cached.ts";
import type { Source } from "./source.ts";
import { type DirectReadFiles, isDirectReadable } from "./direct_reads.ts";
import {
  closeQuietly,
  openCacheFile,
  openMemoryFile,
  pwriteAll,
  reopenReadOnly,
} from "./disk_cache_io.ts";
import { mark } from "../timing.ts";
import {
  BackgroundWindows,
  pauseDuringWalks,
  type ReadActivity,
  WalkClock,
} from "./background_windows.ts";
import { fillTrace } from "./fill_trace.ts";
import { type FillPause, sleep } from "./disk_cache_fill.ts";

/** The kernel reads the block device in 4 KiB pages; pins are kept at that granularity. */
export const PIN_PAGE_BYTES = 4096;

/** The pin map's byte of a page written to the pin file (PinnedPageFile). */
const PINNED_BYTE = new Uint8Array([1]);

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
  /** Settles at the first read of anything not pinned after nextDataRead() was asked. */
  #nextDataRead?: PromiseWithResolvers<{ offset: number; length: number }>;
  /** When (performance.now()) reads of pinned pages only came at a walk's rate. */
  readonly #walk = new WalkClock();
  /** When (performance.now()) a read of bytes not all pinned last came. */
  #lastDataReadMs = -Infinity;
  /** Told of every read of bytes not all pinned (background windows move theirs forward). */
  #dataReadListener?: (offset: number, length: number) => void;
  /** The pinned pages in a file too, for another thread's direct reads (openDirectReads). */
  #pinFile?: { fd: number; mapFd: number };

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
   * pinned (reads of them go through the cache).
   */
  pin(offset: number, bytes: Uint8Array): void {
    if (offset % PIN_PAGE_BYTES) throw new RangeError(`pin at ${offset}: not page aligned`);
    const before = this.#pinnedBytes;
    for (let from = 0; from < bytes.length; from += PIN_PAGE_BYTES) {
      const index = (offset + from) / PIN_PAGE_BYTES;
      if (this.#pages.has(index)) continue;
      // Every pinned page counts whole: the map entry and its view cost the same either way.
      if (this.#pinnedBytes + PIN_PAGE_BYTES > this.pinBudgetBytes) break;
      const page = bytes.subarray(from, from + PIN_PAGE_BYTES);
      const wanted = Math.min(PIN_PAGE_BYTES, this.size - index * PIN_PAGE_BYTES);
      if (page.length !== wanted) continue;
      this.#pages.set(index, page);
      this.#pinnedBytes += PIN_PAGE_BYTES;
      this.#writePinned(index, page);
    }
    if (this.#pinnedBytes !== before) this.#inner.reserveBytes?.(this.#pinnedBytes);
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
    return {
      walkMs: this.#walk.walkMs,
      dataMs: this.#lastDataReadMs,
      walkQuietMs: this.#walk.quietMs,
    };
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
      this.#hit(length);
      if (first === last) {
        const start = offset - first * PIN_PAGE_BYTES;
        return Promise.resolve(this.#pages.get(first)!.subarray(start, start + length));
      }
      const out = new Uint8Array(length);
      this.#copy(offset, out, first, last);
      return Promise.resolve(out);
    }
    this.#noteData(offset, length);
    return this.#inner.read(offset, length, signal);
  }

  async readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
    const first = Math.floor(offset / PIN_PAGE_BYTES);
    const last = Math.floor((offset + dest.length - 1) / PIN_PAGE_BYTES);
    if (dest.length > 0 && this.#allPinned(first, last)) {
      this.#hit(dest.length);
      this.#copy(offset, dest, first, last);
      return;
    }
    this.#noteData(offset, dest.length);
    if (this.#inner.readInto) return await this.#inner.readInto(offset, dest, signal);
    dest.set(await this.#inner.read(offset, dest.length, signal));
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
    const pins = this.#openPinFile();
    if (!pins) return files;
    let readerFd = -1, readerMapFd = -1;
    try {
      readerFd = reopenReadOnly(pins.fd);
      readerMapFd = reopenReadOnly(pins.mapFd);
    } catch {
      closeQuietly(readerFd);
      return files;
    }
    return {
      mapFd: files.mapFd,
      dataFd: files.dataFd,
      chunkBytes: files.chunkBytes,
      sizeBytes: files.sizeBytes,
      presentBytes: files.presentBytes,
      pins: { fd: readerFd, mapFd: readerMapFd, pageBytes: PIN_PAGE_BYTES },
      close: () => {
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

  /** Page `index` into the pin file, then its map byte (the other thread reads the map first). */
  #writePinned(index: number, page: Uint8Array): void {
    const file = this.#pinFile;
    if (!file) return;
    try {
      pwriteAll(file.fd, page, index * PIN_PAGE_BYTES);
      pwriteAll(file.mapFd, PINNED_BYTE, index);
    } catch { /* not marked: that page's reads go through this thread */ }
  }

  /** Reads of pinned pages count as pinned hits, as when served here (no readahead below). */
  noteDirectReads(ranges: readonly number[]): void {
    const passed: number[] = [];
    for (let i = 0; i + 1 < ranges.length; i += 2) {
      const offset = ranges[i], length = ranges[i + 1];
      const first = Math.floor(offset / PIN_PAGE_BYTES);
      const last = Math.floor((offset + length - 1) / PIN_PAGE_BYTES);
      if (length > 0 && this.#allPinned(first, last)) this.#hit(length);
      else {
        passed.push(offset, length);
        this.#noteData(offset, length);
      }
    }
    if (passed.length && isDirectReadable(this.#inner)) this.#inner.noteDirectReads(passed);
  }

  stats(): PrefetchStats {
    const inner: CacheStats = this.#inner.stats?.() ?? {
      bytesRequested: 0,
      bytesFetched: 0,
      fetches: 0,
      readaheadFetches: 0,
      hits: 0,
      misses: 0,
      joined: 0,
      cachedBytes: 0,
      cachedChunks: 0,
    };
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
    };
  }

  async close(): Promise<void> {
    this.#pages.clear();
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

  #hit(length: number): void {
    this.#walk.note(performance.now());
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

/**
 * How long after the directories are pinned (a mount's ready) the background windows are
 * planned and the image head's fill starts. Cold host mount, directories -> CLI mounted: 22 ms
 * when they ran before ready, 21-22 ms one event-loop turn after it (the CLI's mount(2) waited
 * for them), 9-13 ms with this delay (the mount(2) takes 8-14 ms).
 */
export const WINDOWS_SETUP_DELAY_MS = 25;
/**
 * Over a disk cache, each walk read first fills the aligned window around it, one GET per
 * missing run: a GET costs about the same for 1 MiB as for 4 MiB on a loopback registry (per
 * request, not per byte), and mkfs.erofs scatters the directories in clusters. Benchmark image:
 * 75 GETs of 1 MiB chunks (77.6 MB) -> 27 GETs (106.5 MB, the extra chunks are the layer's and
 * stay on disk), prefetch 564-639 -> 417-457 ms; 8 MiB windows: 16 GETs, 119 MB, no faster.
 */
export const DEFAULT_PREFETCH_WINDOW_BYTES = 4 << 20;
/**
 * The background windows after ready (fillWindowsAfterReady) are larger than a walk's: each GET
 * costs docker-registry ~3.5 ms of CPU and a cold 4 MiB disk read before its first byte, the
 * one idle lane is bound by that, and an application starting up reads a few KiB in each of
 * many windows (cold python on the benchmark image: 3.6 MB in 28 of its 1 MiB chunks, in 22 of
 * its 4 MiB windows). Cold python right after a cold find (scripts/bench/python_ab.ts, 8
 * interleaved rounds, load 1.0-1.3, local 0.452-0.490 s): 4 MiB median 0.638 s (1.35x), 28
 * GETs, registry CPU 160-200 ms; 16 MiB 0.552 s (1.17x), lower in every round, 7 GETs, registry
 * 80-130 ms; the find 0.057 / 0.061 s median. 2 MiB: 0.648 s, 51 GETs; 8 MiB: 0.570-0.574 s;
 * 16 MiB fetched in 4 or 8 MiB pieces while nothing is read: 0.605-0.656 / 0.583 s (the idle
 * lane's GETs are what gained).
 */
export const BACKGROUND_WINDOW_BYTES = 16 << 20;
/** Windows fetched by one prefetch at most; past it, walk reads fetch their own chunks only. */
export const DEFAULT_PREFETCH_WINDOWS_MAX_BYTES = 128 << 20;

/** Listed metadata in at least this many windows is scattered (see fillWindowsAfterReady). */
const SCATTERED_WINDOWS = 8;
/** Window fills in flight after the mount is ready. */
const WINDOWS_IN_FLIGHT_AFTER_READY = 2;
/**
 * A reader's fetch runs on to the end of the window after its own: python's next reads are often
 * there (cold python, 6 interleaved runs each, load 2.5-4.7: 9 -> 6.5 misses median, their
 * waits 236 -> 180 ms, 36 -> 30 GETs, against running on to the end of its own window only).
 */
const DEMAND_AHEAD_WINDOWS = 2;

/**
 * The image head that the kernel and blkid read on their own: a new NBD device's partition scan
 * at its first open (mount(2)'s; /work/shared/docs/kernel-notes.md), in whole 4 KiB pages (the
 * amiga parser's sectors 0-15 are pages 0-1, the GPT header at LBA 1 of a 4 KiB-block device is
 * page 1, ultrix's sector 31 page 3), and filesystem signature probes
 * (up to btrfs's at 64 KiB). Reads there are no file data of a user: in the VM, a 4 KiB read at
 * 4096 0.12 s after ready, during mount(2) (EROFS's superblock and root inode lie in page 0),
 * started the windows, and ~25 window GETs ran through the mount and the cold find.
 */
export const IMAGE_HEAD_PROBE_BYTES = 64 << 10;

/** The first data read of `source` from now on that reaches past the first `headBytes`. */
export async function firstDataReadPast(
  source: Pick<PrefetchedSource, "nextDataRead">,
  headBytes: number,
): Promise<{ offset: number; length: number }> {
  for (;;) {
    const read = await source.nextDataRead();
    if (read.offset + read.length > headBytes) return read;
  }
}

/** How the disk cache lets a reader's fetch run on (DiskCachedSource). */
interface DemandAware {
  setDemandAheadBytes(bytes: number, blocks: number): void;
}

/** The disk cache's way to start a fill without waiting (DiskCachedSource.fillAhead). */
interface FillsAhead {
  /** Settles (never rejects) when the fill is over, if the source says so. */
  fillAhead(offset: number, length: number, pause?: FillPause): void | Promise<void>;
}

export interface PrefetchOptions {
  /**
   * Window filled around each walk read when `raw` is disk-cached (0: none). Default
   * DEFAULT_PREFETCH_WINDOW_BYTES. Its bytes count against the disk cache, not the pins.
   */
  windowBytes?: number;
  /** Bytes of windows one prefetch fills at most. Default DEFAULT_PREFETCH_WINDOWS_MAX_BYTES. */
  windowsMaxBytes?: number;
  /** Upper bound of pinned metadata. Default (and at most) the target's pinBudgetBytes. */
  maxBytes?: number;
  /** Parallel reads. Default 8. */
  concurrency?: number;
  signal?: AbortSignal;
  /** Called when the directory pass is done (a cold `find` is then all hits). */
  onDirectoriesDone?: (summary: string) => void;
  /**
   * The image's metadata pieces known up front (a chunk table's metadata range list, each range
   * checked against its digest by the caller): pinned before the walk, which then reads only
   * the pages they lack — without windows, as those pages are all a list can miss.
   */
  metadata?: (signal?: AbortSignal) => Promise<{
    pieces: { offset: number; bytes: Uint8Array }[];
    note: string;
  }>;
  /**
   * Also pin every file's inode (second pass). Off by default: on the benchmark image it
   * doubled the prefetch GETs (321 → 711) and pinned 15.6 MB more for `stat`-heavy walks,
   * which then read those inodes through the chunk cache instead.
   */
  fileInodes?: boolean;
  /**
   * The background windows also start once nothing was read for `quietMs` after the
   * directories are pinned: `idleInFlight` at a time, `inFlight` while file data is read
   * (background_windows.ts QUIET_START; FUSE mounts). Unset: only the first data read past the
   * image head starts them, 2 at a time.
   */
  windowsWhenQuiet?: { quietMs: number; inFlight: number; idleInFlight: number };
}

/**
 * Walks the EROFS image behind `target` and pins its metadata there, reading through `raw`
 * (parallel coalesced ranged reads, around the chunk cache and its readahead): directories
 * (what a cold `find` needs), then with `fileInodes` the inodes of everything else (what
 * `stat`/`tar` need). Never rejects: the prefetch is an optimisation. Resolves with a summary.
 */
export async function prefetchErofsMetadata(
  raw: Source,
  target: PrefetchedSource,
  options: PrefetchOptions = {},
): Promise<string> {
  const startedMs = performance.now();
  const listed = options.metadata ? await pinListed(raw.size, target, options) : undefined;
  const fillAhead = (raw as Partial<FillsAhead>).fillAhead?.bind(raw);
  // With a list the walk needs no window; they come after the directories are pinned.
  let windowBytes = listed?.pages.size ? 0 : options.windowBytes ?? DEFAULT_PREFETCH_WINDOW_BYTES;
  let windowsLeft = options.windowsMaxBytes ?? DEFAULT_PREFETCH_WINDOWS_MAX_BYTES;
  const windowsStarted = new Set<number>();
  const fillWindows = (offset: number, length: number, fill = fillAhead) => {
    // A read this large is the walk's own speculative window (the image start): on a compact
    // image it holds all the metadata, and a window around it would fetch only file data.
    if (!fillAhead || windowBytes <= 0 || length <= 0 || length >= windowBytes / 4) return;
    const last = Math.floor((offset + length - 1) / windowBytes);
    // Windows not started yet, in runs: one fill (one fetch per missing run) for each run.
    let runStart = -1, runEnd = -1;
    const flush = () => {
      if (runStart >= 0) fill!(runStart, runEnd - runStart);
      runStart = -1;
    };
    for (let w = Math.floor(offset / windowBytes); w <= last; w++) {
      if (windowsStarted.has(w)) {
        flush();
        continue;
      }
      const start = w * windowBytes;
      const end = Math.min(raw.size, start + windowBytes);
      if (end - start > windowsLeft) break;
      windowsLeft -= end - start;
      windowsStarted.add(w);
      if (runStart < 0) runStart = start;
      runEnd = end;
    }
    flush();
  };
  /**
   * Once the mount is ready: the windows the walk would have filled, when the listed metadata
   * is scattered (mkfs.erofs puts files next to their directories: the benchmark's cold python
   * needed 5 GETs after a windowed mount, 30 without). Not for metadata packed in a few
   * windows (`erofs-oci build`): those windows hold only file data nobody asked for yet.
   */
  const fillWindowsAfterReady = (pages: Map<number, Uint8Array>) => {
    const size = options.windowBytes ?? BACKGROUND_WINDOW_BYTES;
    if (!fillAhead || size <= 0 || options.signal?.aborted) return;
    const offsets = [...pages.keys()].sort((a, b) => a - b).map((p) => p * PIN_PAGE_BYTES);
    // Scattered or not at a walk's window size: the larger windows would call an image of
    // less than SCATTERED_WINDOWS of them compact whatever its layout.
    const spread = options.windowBytes ?? DEFAULT_PREFETCH_WINDOW_BYTES;
    if (new Set(offsets.map((o) => Math.floor(o / spread))).size < SCATTERED_WINDOWS) return;
    windowBytes = size;
    const starts: number[] = [];
    const queue = (offset: number) =>
      // One window per fill: a fill under way when a reader comes back is short.
      fillWindows(offset, PIN_PAGE_BYTES, (start, length) => {
        for (let at = start; at < start + length; at += size) starts.push(at);
      });
    offsets.forEach(queue);
    // A lone window between two with metadata: a large directory's files run on past the
    // next window (python's __pycache__ on the benchmark image, 22 of its reads).
    const withMetadata = new Set(starts.map((start) => start / size));
    for (const w of [...withMetadata]) {
      if (!withMetadata.has(w + 1) && withMetadata.has(w + 2)) queue((w + 1) * size);
    }
    starts.sort((a, b) => a - b);
    // Paced by what the mount is asked (background_windows.ts): none while only pinned pages
    // are read (a walk), the window of each file-data read first.
    const windows = new BackgroundWindows({
      starts,
      windowBytes: size,
      sizeBytes: raw.size,
      fill: (start, length) => {
        fillTrace("window", start, length);
        // A walk that begins meanwhile pauses it (the window in flight when a find starts).
        return Promise.resolve(
          fillAhead(start, length, pauseDuringWalks(() => target.readActivity())),
        );
      },
      inFlight: options.windowsWhenQuiet?.inFlight ?? WINDOWS_IN_FLIGHT_AFTER_READY,
      idleInFlight: options.windowsWhenQuiet?.idleInFlight ?? WINDOWS_IN_FLIGHT_AFTER_READY,
      // A walk's window at first: what is in flight when a find begins (QUIET_START).
      pieceBytes: spread,
      // A window the list lacks, where file data was read: from the same budget.
      admit: (w) => {
        if (windowsStarted.has(w)) return false;
        const start = w * size;
        const bytes = Math.min(raw.size, start + size) - start;
        if (bytes > windowsLeft) return false;
        windowsLeft -= bytes;
        windowsStarted.add(w);
        return true;
      },
      activity: () => target.readActivity(),
      signal: options.signal,
    });
    // A reader's fetch runs on to the end of the walk-sized block after its own (the windows
    // around it are promoted next).
    (raw as Partial<DemandAware>).setDemandAheadBytes?.(spread, DEMAND_AHEAD_WINDOWS);
    target.onDataRead((offset, length) => windows.promote(offset, length));
    // Not before file data is read. Started at ready they never got the gap before a find to
    // themselves (bench-host, quiet host, 2026-12-01 16:00): mount(2)'s 1-2 pinned reads held
    // them 200 ms as if a walk had begun (fixed: WalkClock), and without that hold the windows
    // in flight when the find began slowed it 2.9-4.1x (2 lanes of 4 MiB; python 1.0-1.2x) or
    // 1.5-3.3x (1 lane of 1 MiB pieces; python no better than from the first data read).
    firstDataReadPast(target, IMAGE_HEAD_PROBE_BYTES).then(({ offset, length }) => {
      if (windows.started) return;
      mark(`server: background windows start (data read of ${length} at ${offset})`);
      windows.start();
    });
    // Or (FUSE) the idle time after ready, one window at a time until file data is read: more
    // in flight slowed a find that began right after the mount (QUIET_START).
    if (options.windowsWhenQuiet) {
      windows.startWhenQuiet(options.windowsWhenQuiet.quietMs).then((started) => {
        if (started) mark("server: background windows start (quiet after ready)");
      });
    }
  };
  const read = async (offset: number, length: number, signal?: AbortSignal) => {
    // The read below joins the window's fill (or finds its chunks already there).
    fillWindows(offset, length);
    const bytes = await raw.read(offset, length, signal);
    target.countPrefetch(bytes.length);
    return bytes;
  };
  const common = {
    maxBytes: Math.min(options.maxBytes ?? Infinity, target.pinBudgetBytes),
    concurrency: options.concurrency,
    signal: options.signal,
    onPage: (offset: number, bytes: Uint8Array) => pinAligned(target, offset, bytes),
  };
  const describe = (what: string, walk: Awaited<ReturnType<typeof walkErofsMetadata>>) =>
    `${what}: ${walk.directories} directories, ${walk.entries} entries, ` +
    `${walk.pagesBytes} bytes pinned, ${walk.reads} reads of ${walk.bytesRead} bytes, ` +
    `${Math.round(performance.now() - startedMs)} ms` +
    (walk.incomplete ? ` (stopped: ${walk.incomplete})` : "") +
    (walk.skipped ? ` (${walk.skipped} branches skipped)` : "") +
    (listed ? ` (${listed.note}, ${listed.pages.size} pages, ${listed.ms} ms)` : "");
  try {
    const dirs = await walkErofsMetadata(read, raw.size, {
      ...common,
      fileInodes: false,
      knownPages: listed?.pages,
    });
    options.onDirectoriesDone?.(describe("directories", dirs));
    if (listed?.pages.size) {
      // The set-up below (the head's fill, the windows' plan: ~5 ms of the event loop) waits
      // for the mount(2) that follows ready, which needs this event loop too.
      await sleep(WINDOWS_SETUP_DELAY_MS);
      // The walk read nothing through the disk cache: store the image's head there (in the
      // background), which the next mount's superblock check reads without a GET.
      fillAhead?.(0, Math.min(raw.size, PIN_PAGE_BYTES));
      fillWindowsAfterReady(listed.pages);
    }
    if (dirs.incomplete || !options.fileInodes) return describe("directories", dirs);
    const all = await walkErofsMetadata(read, raw.size, {
      ...common,
      fileInodes: true,
      knownPages: dirs.pages,
    });
    return describe("all inodes", all);
  } catch (error) {
    return `metadata prefetch failed: ${(error as Error)?.message ?? error}`;
  }
}

/**
 * Loads the listed pieces and pins their whole pages (4 KiB, or the image's short last one);
 * they are also the walk's known pages. A failed load pins nothing (the walk does it all).
 */
async function pinListed(
  sizeBytes: number,
  target: PrefetchedSource,
  options: PrefetchOptions,
): Promise<{ pages: Map<number, Uint8Array>; note: string; ms: number }> {
  const startedMs = performance.now();
  const pages = new Map<number, Uint8Array>();
  let note: string;
  try {
    const loaded = await options.metadata!(options.signal);
    note = loaded.note;
    const maxPages = Math.floor(
      Math.min(options.maxBytes ?? Infinity, target.pinBudgetBytes) / PIN_PAGE_BYTES,
    );
    for (const { offset, bytes } of loaded.pieces) {
      for (let from = 0; from < bytes.length && pages.size < maxPages; from += PIN_PAGE_BYTES) {
        const at = offset + from;
        if (at % PIN_PAGE_BYTES) continue;
        const page = bytes.slice(from, from + PIN_PAGE_BYTES);
        if (page.length !== Math.min(PIN_PAGE_BYTES, sizeBytes - at)) continue;
        pages.set(at / PIN_PAGE_BYTES, page);
        target.pin(at, page);
      }
    }
  } catch (error) {
    note = `metadata list not used: ${(error as Error)?.message ?? error}`;
  }
  return { pages, note, ms: Math.round(performance.now() - startedMs) };
}

function pinAligned(target: PrefetchedSource, offset: number, bytes: Uint8Array): void {
  // Walk pages are 4 KiB or one (larger) block: both multiples of PIN_PAGE_BYTES.
  if (offset % PIN_PAGE_BYTES === 0) target.pin(offset, bytes);
}
