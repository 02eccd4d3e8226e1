/**
 * The metadata prefetch at mount (`prefetchErofsMetadata`): pins an EROFS image's directories
 * (and the listed metadata of its chunk table) in a PrefetchedSource, then plans the background
 * windows that fill the disk cache around them once file data is read.
 */
import { walkErofsMetadata } from "../erofs/metadata_walk.ts";
import type { Source } from "./source.ts";
import { mark } from "../timing.ts";
import { BackgroundWindows, pauseDuringWalks } from "./background_windows.ts";
import { fillTrace } from "./fill_trace.ts";
import type { FillPause } from "./disk_cache_fill.ts";
import { sleep } from "../timers.ts";
import { PIN_PAGE_BYTES, type PrefetchedSource } from "./prefetched.ts";

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
   * Called when the listed metadata (`metadata`) is pinned, before the walk that looks for
   * directories the list lacks (none in a list this tool made: the walk then only parses pinned
   * pages). Not called when nothing listed was pinned.
   */
  onListedPinned?: (summary: string) => void;
  /**
   * The image's metadata pieces known up front (a chunk table's metadata range list, each range
   * checked against its digest by the caller): pinned before the walk, which then reads only
   * the pages they lack — without windows, as those pages are all a list can miss.
   */
  metadata?: (
    signal?: AbortSignal,
    /** Told the pieces of the image head as soon as they are checked, before the rest. */
    onHead?: (pieces: { offset: number; bytes: Uint8Array }[]) => void,
  ) => Promise<{
    pieces: { offset: number; bytes: Uint8Array }[];
    note: string;
  }>;
  /**
   * Called once the image head's listed pages are pinned, ahead of the rest of the list (a new
   * NBD device's partition scan reads only those): at the latest with onListedPinned.
   */
  onHeadPinned?: () => void;
  /**
   * Also pin every file's inode (second pass). Off by default: on the benchmark image it
   * doubled the prefetch GETs (321 → 711) and pinned 15.6 MB more for `stat`-heavy walks,
   * which then read those inodes through the chunk cache instead.
   */
  fileInodes?: boolean;
  /**
   * The background windows also start once nothing was read for `quietMs` after the
   * directories are pinned: `idleInFlight` at a time, `inFlight` while file data is read
   * (background_windows.ts QUIET_START; mounts). Unset: only the first data read past the
   * image head starts them, 2 at a time.
   */
  windowsWhenQuiet?: {
    quietMs: number;
    inFlight: number;
    idleInFlight: number;
    /** The quiet counts from when this settles (a mount: its server is ready). */
    after?: Promise<unknown>;
  };
  /**
   * false: no windows once the mount is ready (fillWindowsAfterReady), nor a reader's fetch
   * running on past its own block: only what is read is fetched (EROFS_OCI_BACKGROUND_WINDOWS).
   */
  backgroundWindows?: boolean;
  /** Told once, when the background windows start (BackgroundWindowsOptions.onStart). */
  onWindowsStart?: () => void;
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
  const readyBeforeWalk = Boolean(listed?.pages.size && options.onListedPinned);
  if (readyBeforeWalk) {
    options.onListedPinned!(
      `listed: ${listed!.pages.size} pages pinned, ${listed!.ms} ms (${listed!.note})`,
    );
  }
  const fillAhead = (raw as Partial<FillsAhead>).fillAhead?.bind(raw);
  // With a list the walk needs no window; they come once the listed pages are pinned.
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
    if (!fillAhead || size <= 0 || options.backgroundWindows === false) return;
    if (options.signal?.aborted) return;
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
      onStart: options.onWindowsStart,
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
    // Or the idle time after ready, one window at a time until file data is read: more
    // in flight slowed a find that began right after the mount (QUIET_START).
    if (options.windowsWhenQuiet) {
      const { quietMs, after } = options.windowsWhenQuiet;
      windows.startWhenQuiet(quietMs, after).then((started) => {
        if (started) mark("server: background windows start (quiet after ready)");
      });
    }
  };
  const read = async (offset: number, length: number, signal?: AbortSignal) => {
    // The read below joins the window's fill (or finds its chunks already there). None with a
    // list: its pages are all the walk can miss.
    if (!listed?.pages.size) fillWindows(offset, length);
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
  /** Once the mount is ready (the listed pages pinned): the image head's fill and the windows. */
  const afterReady = async (pages: Map<number, Uint8Array>) => {
    // The set-up (the head's fill, the windows' plan: ~5 ms of the event loop) and a walk after
    // it wait for the mount(2) that follows ready, which needs this event loop too (a FUSE
    // mount's LOOKUP and OPEN; bench-host: mount(2) 8-14 ms, 18 ms with the walk at once).
    await sleep(WINDOWS_SETUP_DELAY_MS);
    // The walk reads nothing through the disk cache: store the image's head there (in the
    // background), which the next mount's superblock check reads without a GET. Once the
    // device is attached, as the windows: a slow attach (VM, queue tuning 0.5 s) otherwise
    // had this GET compete with it before ready.
    const storeHead = () => void fillAhead?.(0, Math.min(raw.size, PIN_PAGE_BYTES));
    const attached = options.windowsWhenQuiet?.after;
    if (attached) attached.then(storeHead, () => {});
    else storeHead();
    fillWindowsAfterReady(pages);
  };
  try {
    // Ready before the walk: the windows are planned from the list at once, not after the walk
    // (under TCG 0.3-0.8 s, which they then lost of the idle time before a find).
    if (readyBeforeWalk) await afterReady(listed!.pages);
    const dirs = await walkErofsMetadata(read, raw.size, {
      ...common,
      fileInodes: false,
      knownPages: listed?.pages,
    });
    // One text for both (its time in it): the server logs each different summary once.
    const dirsSummary = describe("directories", dirs);
    options.onDirectoriesDone?.(dirsSummary);
    if (listed?.pages.size && !readyBeforeWalk) await afterReady(listed.pages);
    if (dirs.incomplete || !options.fileInodes) return dirsSummary;
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
  const maxPages = Math.floor(
    Math.min(options.maxBytes ?? Infinity, target.pinBudgetBytes) / PIN_PAGE_BYTES,
  );
  const pinPieces = (pieces: { offset: number; bytes: Uint8Array }[]) => {
    for (const { offset, bytes } of pieces) {
      // The piece's whole pages (and the source's last), pinned in one call: the target writes
      // runs of pages at once to where its reader thread reads them.
      const first = Math.ceil(offset / PIN_PAGE_BYTES) * PIN_PAGE_BYTES - offset;
      let end = first;
      while (end < bytes.length && pages.size < maxPages) {
        const at = offset + end;
        const pageBytes = Math.min(PIN_PAGE_BYTES, sizeBytes - at);
        if (pageBytes <= 0 || end + pageBytes > bytes.length) break;
        pages.set(at / PIN_PAGE_BYTES, bytes.subarray(end, end + pageBytes));
        end += pageBytes;
      }
      if (end > first) target.pin(offset + first, bytes.subarray(first, end));
    }
  };
  let headTold = false;
  const headPinned = () => {
    if (!headTold) options.onHeadPinned?.();
    headTold = true;
  };
  try {
    const loaded = await options.metadata!(options.signal, (head) => {
      pinPieces(head); // pinned again with the rest: pin() keeps pages it holds
      headPinned();
    });
    note = loaded.note;
    pinPieces(loaded.pieces);
  } catch (error) {
    note = `metadata list not used: ${(error as Error)?.message ?? error}`;
  }
  headPinned();
  return { pages, note, ms: Math.round(performance.now() - startedMs) };
}

function pinAligned(target: PrefetchedSource, offset: number, bytes: Uint8Array): void {
  // Walk pages are 4 KiB or one (larger) block: both multiples of PIN_PAGE_BYTES.
  if (offset % PIN_PAGE_BYTES === 0) target.pin(offset, bytes);
}
