/**
 * Reads a layer's pinned metadata pages into its NBD device's page cache when a metadata walk
 * begins (WALK_READS reads of pinned metadata within WALK_SPAN_MS: not mount(2)'s one or two).
 * EROFS reads metadata through the block device's page cache one block at a time and without
 * readahead, each read waiting for the one before: a cold `find` of the benchmark image is 551
 * synchronous 4 KiB READs, ~1.7 ms apiece in the TCG guest against ~0.45 ms on a loop device
 * (docs/benchmarks.md, session 37) — the cost of the round trip, not of the bytes, which are
 * pinned in the server already. WILLNEED on the pinned runs puts them in flight together
 * (readahead(2) would too, but refuses block devices on some kernels); the reader thread answers
 * them back to back and the walk finds the rest cached. All runs in one process_madvise where
 * the kernel takes it (5.15+): one posix_fadvise per run was a round trip through the pool each,
 * and the warm's requests of the benchmark image then spanned 0.36-0.78 s in the TCG guest
 * against 0.15 s in one call (docs/benchmarks.md, session 39). That covers the inodes
 * (and inline directories, xattrs): a directory's own blocks are read through the directory's
 * page cache, straight from the device, one READ per block whatever is cached here.
 *
 * Started by the walk, not at ready: the device's page cache is dropped when its last opener
 * closes it (before mount(2) holds it, that would be us), and dropped again by memory pressure
 * or drop_caches, after which the next walk is when the pages are wanted.
 */
import { closeFd, libc } from "../../ffi/libc.ts";
import { openReadOnlyAsync } from "../../ffi/files.ts";
import { willNeedRangesAsync } from "../../ffi/read_ahead.ts";
import { fillTrace } from "../source/fill_trace.ts";

/** The pinned pages of a layer and the reads of them (lib/source/prefetched.ts). */
export interface PinnedPages {
  /** [offset, length] pairs of the pinned metadata runs, in offset order. */
  pinnedRuns(): readonly number[];
  /** `listener` is told of each read of pinned metadata pages only. */
  onPinnedRead(listener: () => void): void;
}

/**
 * This many reads of pinned pages within WALK_SPAN_MS are a walk. mount(2) reads one or two,
 * an `ls` of a directory a few; `find -ls` in the TCG guest ~10 a second at least.
 */
export const WALK_READS = 8;
export const WALK_SPAN_MS = 1000;
/**
 * After a warm, the next waits at least this long, doubled after each warm up to the most:
 * a directory's own blocks are never in the device's page cache (see above), so a long walk
 * goes on reading pinned pages after the warm has put every other one there.
 */
export const WARM_INTERVAL_MS = 2000;
export const WARM_INTERVAL_MAX_MS = 5 * 60_000;

/** What the warmer does to the device (a seam for tests). */
export interface WarmIo {
  /** A read-only descriptor of the device, or a negative number. */
  open(path: string): Promise<number>;
  /** posix_fadvise(WILLNEED): 0, or an errno. */
  willNeed(fd: number, offset: number, length: number): Promise<number>;
  /**
   * WILLNEED for all the runs at once: the bytes advised (a prefix of the runs), or -1 when
   * refused as a whole (then each run is advised with willNeed, from then on).
   */
  willNeedAll?(fd: number, runs: readonly number[]): Promise<number>;
  close(fd: number): void;
}

const POSIX_FADV_WILLNEED = 3;
/** On a pool thread: the device's requests are answered by this process. */
const deviceIo: WarmIo = {
  open: openReadOnlyAsync,
  willNeed: (fd, offset, length) =>
    libc().posix_fadvise_nonblocking(fd, BigInt(offset), BigInt(length), POSIX_FADV_WILLNEED),
  willNeedAll: willNeedRangesAsync,
  close: closeFd,
};

export interface WarmReport {
  runs: number;
  bytes: number;
  /** Runs whose advice failed. */
  failed: number;
  ms: number;
}

export interface PageCacheWarmerOptions {
  /** The first interval between warms (WARM_INTERVAL_MS); it doubles after each warm. */
  minIntervalMs?: number;
  /** posix_fadvise calls in flight at once (each holds a pool thread). Default 2. */
  lanes?: number;
  io?: WarmIo;
  log?: (line: string) => void;
}

export class PageCacheWarmer {
  readonly #path: string;
  readonly #runs: () => readonly number[];
  #intervalMs: number;
  readonly #lanes: number;
  readonly #io: WarmIo;
  readonly #log: (line: string) => void;
  #lastStartMs = -Infinity;
  /** When the last WALK_READS reads of pinned pages came (a ring). */
  readonly #readTimes = new Array<number>(WALK_READS).fill(-Infinity);
  #readCount = 0;
  #running?: Promise<WarmReport | undefined>;
  /** The device's read-only descriptor, opened once (see openAhead) and closed by stop(). */
  #fd?: Promise<number>;
  /** Set once the device could not be opened, or the export closed: no more warms. */
  #stopped = false;
  /** Set once WarmIo.willNeedAll was refused: each run is advised on its own. */
  #oneByOne = false;

  constructor(
    devicePath: string,
    runs: () => readonly number[],
    options: PageCacheWarmerOptions = {},
  ) {
    this.#path = devicePath;
    this.#runs = runs;
    this.#intervalMs = options.minIntervalMs ?? WARM_INTERVAL_MS;
    this.#lanes = Math.max(1, options.lanes ?? 2);
    this.#io = options.io ?? deviceIo;
    this.#log = options.log ?? ((line) => console.log(line));
  }

  /**
   * Warms `pages`' device on their walks (see notePinnedRead). The device is opened now: a
   * walk's warm then starts with its one call, not with an open through the pool first (4-130
   * ms in the TCG guest, and the main thread may be held meanwhile).
   */
  static onWalks(
    devicePath: string,
    pages: PinnedPages,
    options?: PageCacheWarmerOptions,
  ): PageCacheWarmer {
    const warmer = new PageCacheWarmer(devicePath, () => pages.pinnedRuns(), options);
    pages.onPinnedRead(() => warmer.notePinnedRead());
    warmer.openAhead();
    return warmer;
  }

  /** Opens the device now (once), for the first warm. */
  openAhead(): void {
    if (this.#stopped || this.#fd) return;
    const opened = this.#io.open(this.#path).catch(() => -1);
    this.#fd = opened;
    opened.then((fd) => {
      this.#openFd = fd;
      this.#closeIfIdle();
    });
  }

  /** #fd once it settled; -1 once closed. */
  #openFd?: number;
  /**
   * Closes the device once the warmer stopped and neither its open nor a warm is in progress:
   * run when each of those ends.
   */
  #closeIfIdle(): void {
    if (!this.#stopped || this.#running || this.#openFd === undefined) return;
    if (this.#openFd >= 0) this.#io.close(this.#openFd);
    this.#openFd = -1;
  }

  /** A read of pinned pages at `nowMs`: the device's page cache lacked them; a walk warms. */
  notePinnedRead(nowMs = performance.now()): void {
    this.#readTimes[this.#readCount++ % WALK_READS] = nowMs;
    // The next slot holds the read WALK_READS - 1 before this one.
    if (nowMs - this.#readTimes[this.#readCount % WALK_READS] <= WALK_SPAN_MS) this.request(nowMs);
  }

  /**
   * Starts a warm, unless one is running, the interval since the last one has not passed (the
   * walk goes on through directory blocks, or through the warm's own READs), or the warmer
   * stopped.
   */
  request(nowMs = performance.now()): void {
    if (this.#stopped || this.#running || nowMs - this.#lastStartMs < this.#intervalMs) return;
    if (this.#runs().length === 0) return;
    if (this.#lastStartMs > -Infinity) {
      this.#intervalMs = Math.min(WARM_INTERVAL_MAX_MS, 2 * this.#intervalMs);
    }
    this.#lastStartMs = nowMs;
    fillTrace("warm-start");
    this.#running = this.#warm().finally(() => {
      this.#running = undefined;
      this.#closeIfIdle();
    });
  }

  /** The warm in progress, if any. */
  get running(): Promise<WarmReport | undefined> | undefined {
    return this.#running;
  }

  /**
   * No warm starts from now on; one in progress stops after its current calls. The device is
   * closed (now, or when the warm in progress or the open ends): call it before the device is
   * disconnected, as an open descriptor holds the device's configuration.
   */
  stop(): void {
    this.#stopped = true;
    this.#closeIfIdle();
  }

  async #warm(): Promise<WarmReport | undefined> {
    const startMs = performance.now();
    const runs = this.#runs();
    this.openAhead();
    const fd = await this.#fd!;
    const openMs = Math.round(performance.now() - startMs);
    if (this.#stopped) return undefined;
    if (fd < 0) {
      this.#stopped = true;
      this.#log(
        `${this.#path}: could not open it to read metadata ahead; walks read it page by page`,
      );
      return undefined;
    }
    let next = 0, failed = 0, bytes = 0, batched = false;
    const lane = async () => {
      while (!this.#stopped && next < runs.length) {
        const offset = runs[next], length = runs[next + 1];
        next += 2;
        if (await this.#io.willNeed(fd, offset, length) !== 0) failed++;
        else bytes += length;
      }
    };
    if (this.#io.willNeedAll && !this.#oneByOne) {
      const advised = await this.#io.willNeedAll(fd, runs);
      if (advised < 0) this.#oneByOne = true;
      else {
        // The kernel stops at the first run it refuses: those after it were not advised.
        while (next < runs.length && bytes + runs[next + 1] <= advised) {
          bytes += runs[next + 1];
          next += 2;
        }
        failed = (runs.length - next) / 2;
        next = runs.length;
        batched = true;
      }
    }
    await Promise.all(Array.from({ length: this.#lanes }, lane));
    fillTrace("warm-end");
    const report = {
      runs: runs.length / 2,
      bytes,
      failed,
      ms: Math.round(performance.now() - startMs),
    };
    this.#log(
      `${this.#path}: metadata walk: ${report.bytes} bytes of pinned pages (${report.runs} runs${
        failed ? `, ${failed} failed` : ""
      }) read ahead into the page cache in ${report.ms} ms (open ${openMs} ms${
        batched ? ", one batch" : ""
      })`,
    );
    return report;
  }
}
