/**
 * The background windows of a scattered image (metadata_prefetch.ts, issue 12): once the mount is
 * ready and file data is read, the aligned windows around the listed metadata are filled through
 * the disk cache, a few at a time, because mkfs.erofs puts each directory's files next to it and
 * an application starting up reads files of a few directories (cold python: 40 GETs without
 * them, 5 with).
 *
 * Two rules decide when and in which order, from what the mount is being asked:
 * - While a metadata walk is under way (a cold `find`: pinned pages read at a walk's rate,
 *   WALK_MIN_READS within WALK_SPAN_MS, served by the FUSE reader thread), no new window
 *   starts: the windows hold file data, which such a walk never reads, and their fetch, hash
 *   and write took the 2 cores from it (find 2.8–4.6× local with the windows right after the
 *   mount). A few pinned reads are no walk: mount(2)'s superblock and root directory came ~20
 *   ms after ready and held every window back for 200 ms, until the bench's find began, then
 *   until python's first data read (cold python 40 GETs, 1.6–1.8×, with the windows "started"
 *   at ready). Once file data is read, or after a short quiet, they go.
 * - What starts them: the first read of file data (start()), and on a FUSE mount also a short
 *   quiet after ready (startWhenQuiet(), QUIET_START): the idle time before the first
 *   application then fetches what it would otherwise wait for (cold python: see QUIET_START).
 * - A window where file data was just read goes first (and the one after it): the reader is
 *   working in that directory's files, and the rest of them are the likeliest next reads. Once
 *   file data was read, the other windows go nearest to the latest such read first.
 */
import type { FillPause } from "./disk_cache_fill.ts";
import { after, sleep, type Timer } from "../timers.ts";
import { fillTrace } from "./fill_trace.ts";
import { type WalkClock, walkClockBody, type WalkRules } from "./walk_clock_body.ts";

/**
 * When a metadata walk (pinned-only reads at a walk's rate, see walk_clock_body.ts) and reads
 * of other bytes last came (performance.now(); -Infinity: never).
 */
export interface ReadActivity {
  walkMs: number;
  dataMs: number;
  /** How long after the walk's last read it counts as over (WalkClock.quietMs; default max). */
  walkQuietMs?: number;
}

/**
 * Pinned-only reads this many within WALK_SPAN_MS are a walk. A cold `find` of the benchmark
 * image reads ~600 pinned pages in 64-read batches (the FUSE reader thread's reports); mount(2)
 * reads 1–2 (superblock, root directory), an `ls` of one directory a few.
 */
export const WALK_MIN_READS = 16;
export const WALK_SPAN_MS = 100;

/**
 * A walk's reads this recent hold new windows back (a walk in progress): at most this long.
 * The FUSE reader thread reports its reads in batches (64 READs, or after 5 ms without one):
 * at load 7 a cold find's batches came 40–160 ms apart, and windows slipped in between at 30 ms.
 */
export const METADATA_WALK_QUIET_MS = 200;
/**
 * ...and at least this long: on an idle machine the batches come a few ms apart, and the 200 ms
 * after the walk are idle time the windows can use. Cold python right after a cold find
 * (python_ab.ts, 5 interleaved rounds, load 1.0-1.5): 20 ms 0.639 s median and 0-1 misses,
 * 200 ms 0.673 s and 6.
 */
export const METADATA_WALK_QUIET_MIN_MS = 20;
/** A walk is over once silent for this many times its longest pause (within the two above). */
export const WALK_QUIET_GAPS = 3;

/** The walk clock's rules (walk_clock_body.ts): the constants above. */
export const WALK_RULES: WalkRules = {
  minReads: WALK_MIN_READS,
  spanMs: WALK_SPAN_MS,
  quietMinMs: METADATA_WALK_QUIET_MIN_MS,
  quietMaxMs: METADATA_WALK_QUIET_MS,
  quietGaps: WALK_QUIET_GAPS,
};

/** A walk clock following WALK_RULES. */
export function newWalkClock(): WalkClock {
  return walkClockBody(WALK_RULES);
}
/** File data read this recently lets windows start whatever else is read. */
export const DATA_READ_RECENT_MS = 250;
/**
 * A FUSE mount's windows start once nothing was read for `quietMs` after ready, one at a time
 * (`idleInFlight`) until file data is read, `inFlight` at a time while it is (metadata_prefetch.ts,
 * PrefetchOptions.windowsWhenQuiet). NBD mounts too, since their partition scan is part of the
 * attach (lib/nbd/attach.ts) and mount(2) reads only pinned pages: the VM benchmark's full read
 * after a find then went from 2.1–2.6× the loop device to 1.6–2.0× (docs/benchmarks.md, session
 * 26), as most of the image came in the idle time before the find. Cold find and cold python of
 * the benchmark, 3 interleaved rounds each at load 1.2-1.5
 * (scripts/bench/python_ab.ts; local find 0.044-0.048 s, python 0.445-0.462 s):
 * - first data read only, 2 lanes (before): find 0.060-0.063 s, python 0.706-0.723 s;
 * - quiet start, 1 idle lane (this): find 0.049-0.050 s, python 0.679-0.690 s;
 * - 2 idle lanes: find 0.067-0.082 s, python 0.630-0.644 s;
 * - 4 idle lanes: find 0.075-0.123 s, python 0.560-0.623 s.
 * More lanes in the idle time fetch more before python (up to 115 MB against 21 MB) but slow a
 * find that starts right after the mount: the registry's disk reads and the fills' writes and
 * syncs delay the find's own start from the host disk (iowait 30-60 ms against 10-20 ms), so
 * issue 12's find target holds only with one.
 */
export const QUIET_START = { quietMs: 50, inFlight: 4, idleInFlight: 1 } as const;
/** How often a lane that runs only while file data is read looks again. */
const LANE_POLL_MS = 20;

/**
 * Milliseconds to wait before the next window may start, given the reads' last times (0: now).
 * File data read recently: go. Else a walk's reads recently: wait for quiet.
 */
export function windowDelayMs(activity: ReadActivity, nowMs: number): number {
  if (nowMs - activity.dataMs < DATA_READ_RECENT_MS) return 0;
  const quietMs = activity.walkQuietMs ?? METADATA_WALK_QUIET_MS;
  const sinceWalk = nowMs - activity.walkMs;
  return sinceWalk < quietMs ? quietMs - sinceWalk : 0;
}

/**
 * How long a background fill pauses for walks at most, in all, while a reader of another process
 * waits for its chunks (it holds their write lock): such a reader must not be held by a walk.
 */
export const WALK_PAUSE_MAX_MS = 500;
/**
 * ...and while nobody else waits for them: as long as walks last, within this bound (the
 * registry's send waits on the socket meanwhile). A cold find in the QEMU TCG guest lasts 1.5-3
 * s, and with the 500 ms cap the fill in flight when it began verified and wrote 33 MiB during
 * it (find 3.6-7.3x the loop device's, qemu-nbd's 2.0-4.0x; docs/benchmarks.md, session 28).
 */
export const WALK_PAUSE_ALONE_MAX_MS = 10_000;
/** How often a paused fill looks again (a data read, or a waiter, ends the pause). */
const WALK_PAUSE_POLL_MS = 5;

/**
 * A window fill's pause (DiskCachedSource.fillAhead): between the pieces of its body it waits
 * while windowDelayMs says a walk holds the windows back, WALK_PAUSE_ALONE_MAX_MS at most, or
 * WALK_PAUSE_MAX_MS once another process waits for its chunks. A window in flight when a cold
 * find begins then stops costing it CPU within a piece (1 MiB), and goes on when the walk is
 * over or file data is read (a reader of this process may wait for its chunks).
 */
export function pauseDuringWalks(
  activity: () => ReadActivity,
  maxMs = WALK_PAUSE_MAX_MS,
  aloneMaxMs = WALK_PAUSE_ALONE_MAX_MS,
): FillPause {
  let pausedMs = 0;
  return async (closing, othersWaiting) => {
    while (!closing.aborted) {
      const startMs = performance.now();
      const delayMs = windowDelayMs(activity(), startMs);
      if (delayMs <= 0) return;
      const capMs = othersWaiting() ? maxMs : aloneMaxMs;
      if (pausedMs >= capMs) return;
      if (pausedMs === 0) fillTrace("paused", delayMs.toFixed(1));
      await sleep(Math.min(WALK_PAUSE_POLL_MS, delayMs, capMs - pausedMs));
      pausedMs += performance.now() - startMs;
    }
  };
}

export interface BackgroundWindowsOptions {
  /** Window starts (multiples of windowBytes), in the order to fill them when nothing is read. */
  starts: readonly number[];
  windowBytes: number;
  sizeBytes: number;
  /** Fills [offset, offset + length) (missing chunks only); settles when done, never rejects. */
  fill(offset: number, length: number): Promise<void>;
  /** Fills in flight at most while file data is being read. */
  inFlight: number;
  /** Fills in flight at most otherwise (idle, or before anything was read). Default 1. */
  idleInFlight?: number;
  /**
   * Unless file data is being read, a window is filled in pieces, one after the other, the
   * rules checked before each: the first of this many bytes (default: whole windows), each next
   * one twice the last while no walk came, up to the window. What is in flight when a walk
   * begins is then small, and idle time goes to large GETs (metadata_prefetch.ts BACKGROUND_WINDOW_BYTES).
   */
  pieceBytes?: number;
  /**
   * Asked before a window not in `starts` is added because file data was read in it (the
   * caller's budget of window bytes); false: not added.
   */
  admit?(window: number): boolean;
  /** When a walk and file data were last read (PrefetchedSource.readActivity). */
  activity(): ReadActivity;
  /** Told once, when the workers start (a mount server lowers its priority then). */
  onStart?(): void;
  signal?: AbortSignal;
}

export class BackgroundWindows {
  readonly #options: BackgroundWindowsOptions;
  /** Windows (indexes) not started yet. */
  readonly #pending = new Set<number>();
  /** Windows queued, started, or refused by `admit`: never added again. */
  readonly #seen = new Set<number>();
  /** Windows moved forward by reads, most recent last. */
  readonly #promoted: number[] = [];
  #next = 0;
  #started = false;
  /** Workers running now. */
  #working = 0;
  readonly #workers: Promise<void>[] = [];
  /** Fills started, for tests and logs. */
  fills = 0;
  /** The window of the latest file-data read (-1: none yet): the others go nearest first. */
  #lastReadWindow = -1;
  /** The next piece's size while nothing is read (see pieceBytes), and the walk it follows. */
  #pieceBytes = 0;
  #pieceWalkMs = -Infinity;

  constructor(options: BackgroundWindowsOptions) {
    this.#options = options;
    for (const start of options.starts) {
      const w = Math.floor(start / options.windowBytes);
      this.#pending.add(w);
      this.#seen.add(w);
    }
  }

  /** Windows not started yet. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /**
   * A read of file data at `offset`: its window, then the next, are filled before the rest;
   * windows the list lacks are added when `admit` allows (a directory's files may lie in a
   * window of their own: python's `__pycache__` files on the benchmark image).
   */
  promote(offset: number, length: number): void {
    const { windowBytes, sizeBytes } = this.#options;
    const first = Math.floor(offset / windowBytes);
    const last = Math.min(
      Math.floor((offset + Math.max(1, length) - 1) / windowBytes) + 1,
      Math.ceil(sizeBytes / windowBytes) - 1,
    );
    // Pushed last-first: the worker takes from the end, so `first` goes before `last`.
    for (let w = last; w >= first; w--) {
      if (!this.#pending.has(w)) {
        if (this.#seen.has(w)) continue;
        this.#seen.add(w);
        if (!this.#options.admit?.(w)) continue;
        this.#pending.add(w);
        if (this.#started) this.#spawn();
      }
      this.#promoted.push(w);
    }
    this.#lastReadWindow = first;
    // Many reads in the same windows: keep the most recent, the older are mostly started.
    if (this.#promoted.length > 4096) this.#promoted.splice(0, 2048);
  }

  /** Whether the workers were started (start() or startWhenQuiet()). */
  get started(): boolean {
    return this.#started;
  }

  /** Starts the workers (once); resolves when every window was started and its fill ended. */
  start(): Promise<void> {
    if (!this.#started) {
      this.#started = true;
      fillTrace("windows-start", this.#pending.size);
      this.#options.onStart?.();
      this.#spawn();
    }
    return Promise.all(this.#workers).then(() => {});
  }

  /**
   * Starts the workers once neither file data nor a walk was read for `quietMs` (counted from
   * when `after` settles, else from this call): idle bandwidth after the mount is ready. A few
   * pinned reads (mount(2)'s) are no activity. Resolves true when this started them, false
   * when start() did first or the signal aborted.
   */
  startWhenQuiet(quietMs: number, after?: Promise<unknown>): Promise<boolean> {
    if (!after) return this.#startWhenQuiet(quietMs);
    const signal = this.#options.signal;
    return new Promise<boolean>((resolve) => {
      const abort = () => resolve(false);
      signal?.addEventListener("abort", abort, { once: true });
      const go = () => {
        signal?.removeEventListener("abort", abort);
        if (signal?.aborted) return resolve(false);
        resolve(this.#startWhenQuiet(quietMs));
      };
      after.then(go, go);
    });
  }

  #startWhenQuiet(quietMs: number): Promise<boolean> {
    const { promise, resolve } = Promise.withResolvers<boolean>();
    const calledMs = performance.now();
    let timer: Timer | undefined;
    const signal = this.#options.signal;
    const abort = () => {
      timer?.cancel();
      resolve(false);
    };
    const check = () => {
      if (this.#started || signal?.aborted) {
        signal?.removeEventListener("abort", abort);
        return resolve(false);
      }
      const { walkMs, dataMs } = this.#options.activity();
      const waitMs = Math.max(calledMs, walkMs, dataMs) + quietMs - performance.now();
      if (waitMs > 0) {
        timer = after(waitMs, check);
        return;
      }
      signal?.removeEventListener("abort", abort);
      this.start();
      resolve(true);
    };
    signal?.addEventListener("abort", abort, { once: true });
    timer = after(quietMs, check);
    return promise;
  }

  /** Workers up to `inFlight` (after they ran out, a promoted window starts them again). */
  #spawn(): void {
    while (this.#working < this.#options.inFlight) {
      this.#working++;
      this.#workers.push(this.#work(this.#working - 1).finally(() => this.#working--));
    }
  }

  /** Milliseconds worker `lane` waits before its next fill (0: now). */
  #delayMs(lane: number): number {
    const activity = this.#options.activity();
    const now = performance.now();
    const delayMs = windowDelayMs(activity, now);
    if (delayMs > 0 || lane < (this.#options.idleInFlight ?? 1)) return delayMs;
    // The lanes past the idle ones run only while file data is being read.
    return this.#dataRecent() ? 0 : LANE_POLL_MS;
  }

  #take(): number | undefined {
    while (this.#promoted.length) {
      const w = this.#promoted.pop()!;
      if (this.#pending.delete(w)) return w;
    }
    const starts = this.#options.starts;
    if (this.#lastReadWindow >= 0) return this.#takeNearest(this.#lastReadWindow);
    while (this.#next < starts.length) {
      const w = Math.floor(starts[this.#next++] / this.#options.windowBytes);
      if (this.#pending.delete(w)) return w;
    }
    return undefined;
  }

  /**
   * The pending window nearest `w` (the one after it on a tie): an application starting up
   * reads the files of a few directories, in windows near each other (cold python on the
   * benchmark image: 10.5 -> 8.5 misses median, 6 runs each), not in offset order.
   */
  #takeNearest(w: number): number | undefined {
    let best: number | undefined;
    let bestDistance = Infinity;
    for (const p of this.#pending) {
      const distance = Math.abs(p - w) * 2 - (p > w ? 1 : 0);
      if (distance < bestDistance) [best, bestDistance] = [p, distance];
    }
    if (best !== undefined) this.#pending.delete(best);
    return best;
  }

  async #work(lane: number): Promise<void> {
    const { windowBytes, sizeBytes, signal } = this.#options;
    while (this.#pending.size && !signal?.aborted) {
      if (await this.#waited(lane)) continue;
      const w = this.#take();
      if (w === undefined) return;
      this.#seen.add(w);
      const end = Math.min(sizeBytes, (w + 1) * windowBytes);
      for (let at = w * windowBytes; at < end && !signal?.aborted;) {
        if (at > w * windowBytes && await this.#waited(lane)) continue;
        // While file data is read, the rest of the window in one fetch (a GET costs the
        // registry ~3.5 ms of CPU whatever its size); in pieces otherwise.
        const length = this.#dataRecent() ? end - at : Math.min(this.#nextPieceBytes(), end - at);
        this.fills++;
        await this.#options.fill(at, length);
        at += length;
        this.#pieceFilled();
      }
    }
  }

  /** The size of a piece starting now: back to the first size when a walk came since. */
  #nextPieceBytes(): number {
    const { windowBytes, pieceBytes = windowBytes } = this.#options;
    const walkMs = this.#options.activity().walkMs;
    if (walkMs !== this.#pieceWalkMs || this.#pieceBytes === 0) {
      this.#pieceWalkMs = walkMs;
      this.#pieceBytes = Math.min(windowBytes, pieceBytes);
    }
    return this.#pieceBytes;
  }

  /** A fill ended: the next piece is twice as large if no walk came meanwhile. */
  #pieceFilled(): void {
    if (this.#options.activity().walkMs !== this.#pieceWalkMs) return;
    this.#pieceBytes = Math.min(this.#options.windowBytes, this.#pieceBytes * 2);
  }

  #dataRecent(): boolean {
    return performance.now() - this.#options.activity().dataMs < DATA_READ_RECENT_MS;
  }

  /** Waits if this lane may not fill now; true if it waited (ask again). */
  async #waited(lane: number): Promise<boolean> {
    const delayMs = this.#delayMs(lane);
    if (delayMs <= 0) return false;
    await sleep(delayMs);
    return true;
  }
}
