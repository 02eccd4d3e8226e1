/**
 * Reads a layer's pinned metadata pages into its NBD device's page cache when a metadata walk
 * begins. EROFS reads metadata through the block device's page cache one block at a time and
 * without readahead, each read waiting for the one before: a cold `find` of the benchmark image
 * is 551 synchronous 4 KiB READs, ~1.7 ms apiece in the TCG guest against ~0.45 ms on a loop
 * device (docs/benchmarks.md, session 37) — the cost of the round trip, not of the bytes, which
 * are pinned in the server already. readahead(2) of the pinned runs puts them in flight
 * together; the reader thread answers them back to back and the walk finds the rest cached.
 *
 * Started by the walk, not at ready: the device's page cache is dropped when its last opener
 * closes it (before mount(2) holds it, that would be us), and dropped again by memory pressure
 * or drop_caches, after which the next walk is when the pages are wanted.
 */
import { closeFd, cstr, libc, O_CLOEXEC, O_RDONLY } from "../../ffi/libc.ts";

/** The pinned pages of a layer and the walks over them (lib/source/prefetched.ts). */
export interface PinnedPages {
  /** [offset, length] pairs of the pinned runs, in offset order. */
  pinnedRuns(): readonly number[];
  onMetadataWalk(listener: () => void): void;
}

/** What the warmer does to the device (a seam for tests). */
export interface WarmIo {
  /** A read-only descriptor of the device, or a negative number. */
  open(path: string): Promise<number>;
  /** readahead(2): negative on failure. */
  readahead(fd: number, offset: number, length: number): Promise<number>;
  close(fd: number): void;
}

/** On a pool thread: the device's requests are answered by this process. */
const deviceIo: WarmIo = {
  open: async (path) => Number(await libc().open_nonblocking(cstr(path), O_RDONLY | O_CLOEXEC, 0)),
  readahead: async (fd, offset, length) =>
    Number(await libc().readahead_nonblocking(fd, BigInt(offset), BigInt(length))),
  close: closeFd,
};

export interface WarmReport {
  runs: number;
  bytes: number;
  /** Runs whose readahead(2) failed. */
  failed: number;
  ms: number;
}

export interface PageCacheWarmerOptions {
  /** A walk within this long of the last warm's start starts none. Default 2000 ms. */
  minIntervalMs?: number;
  /** readahead(2) calls in flight at once (each holds a pool thread). Default 2. */
  lanes?: number;
  io?: WarmIo;
  log?: (line: string) => void;
}

export class PageCacheWarmer {
  readonly #path: string;
  readonly #runs: () => readonly number[];
  readonly #minIntervalMs: number;
  readonly #lanes: number;
  readonly #io: WarmIo;
  readonly #log: (line: string) => void;
  #lastStartMs = -Infinity;
  #running?: Promise<WarmReport | undefined>;
  /** Set once the device could not be opened, or the export closed: no more warms. */
  #stopped = false;

  constructor(
    devicePath: string,
    runs: () => readonly number[],
    options: PageCacheWarmerOptions = {},
  ) {
    this.#path = devicePath;
    this.#runs = runs;
    this.#minIntervalMs = options.minIntervalMs ?? 2000;
    this.#lanes = Math.max(1, options.lanes ?? 2);
    this.#io = options.io ?? deviceIo;
    this.#log = options.log ?? ((line) => console.log(line));
  }

  /** Warms `pages`' device on each of their walks (see PageCacheWarmer.request). */
  static onWalks(
    devicePath: string,
    pages: PinnedPages,
    options?: PageCacheWarmerOptions,
  ): PageCacheWarmer {
    const warmer = new PageCacheWarmer(devicePath, () => pages.pinnedRuns(), options);
    pages.onMetadataWalk(() => warmer.request());
    return warmer;
  }

  /**
   * Starts a warm, unless one is running, one started less than minIntervalMs ago (the walk
   * goes on through pages the last one put in the cache, or through its own READs), or the
   * warmer stopped.
   */
  request(): void {
    const nowMs = performance.now();
    if (this.#stopped || this.#running || nowMs - this.#lastStartMs < this.#minIntervalMs) return;
    if (this.#runs().length === 0) return;
    this.#lastStartMs = nowMs;
    this.#running = this.#warm().finally(() => this.#running = undefined);
  }

  /** The warm in progress, if any. */
  get running(): Promise<WarmReport | undefined> | undefined {
    return this.#running;
  }

  /** No warm starts from now on; one in progress stops after its current calls. */
  stop(): void {
    this.#stopped = true;
  }

  async #warm(): Promise<WarmReport | undefined> {
    const startMs = performance.now();
    const runs = this.#runs();
    const fd = await this.#io.open(this.#path);
    if (fd < 0) {
      this.#stopped = true;
      this.#log(
        `${this.#path}: could not open it to read metadata ahead; walks read it page by page`,
      );
      return undefined;
    }
    let next = 0, failed = 0, bytes = 0;
    const lane = async () => {
      while (!this.#stopped && next < runs.length) {
        const offset = runs[next], length = runs[next + 1];
        next += 2;
        if (await this.#io.readahead(fd, offset, length) < 0) failed++;
        else bytes += length;
      }
    };
    try {
      await Promise.all(Array.from({ length: this.#lanes }, lane));
    } finally {
      this.#io.close(fd);
    }
    const report = {
      runs: runs.length / 2,
      bytes,
      failed,
      ms: Math.round(performance.now() - startMs),
    };
    this.#log(
      `${this.#path}: metadata walk: ${report.bytes} bytes of pinned pages (${report.runs} runs${
        failed ? `, ${failed} failed` : ""
      }) read ahead into the page cache in ${report.ms} ms`,
    );
    return report;
  }
}
