/**
 * Mount-time prefetch from a trace: reads the traced ranges in trace order through the
 * layer's caches, a few at a time, so the bytes are local before the application asks.
 *
 * Application reads never wait behind this queue: a read wholly inside traced pieces not in
 * yet waits only for those, started at once if queued (claim: read once, where the prefetch
 * puts it); other reads go straight to the caches, and a queued piece such a read covers is
 * dropped instead of read again. Failures only stop the prefetch: it is an optimisation, the
 * reads themselves still work.
 */

import type { ByteSpan } from "../source/aligned_runs.ts";

/** What the prefetch reads through (the layer's cached source). */
export interface PrefetchTarget {
  read(offset: number, length: number, signal?: AbortSignal): Promise<unknown>;
  /**
   * Several pieces together (any order), when the target can fetch them in few requests (one
   * multi-range GET): each request saved is a round trip and the registry's and the server's
   * work for it.
   */
  readMany?(ranges: readonly ByteSpan[], signal?: AbortSignal): Promise<unknown>;
}

export interface PrefetchRange {
  layerIndex: number;
  offset: number;
  length: number;
}

/** What `list` shows per layer. */
export interface PrefetchProgress {
  /** Traced bytes this layer will prefetch (after the budget). */
  bytesTotal: number;
  /** Of those: read by the prefetch, or read by the application first. */
  bytesDone: number;
  /** Of bytesDone: pieces a reader asked for before the prefetch got to them. */
  bytesReadFirst: number;
  state: "waiting" | "running" | "done" | "failed" | "stopped";
}

/**
 * Reads in flight at once. The prefetch is bound by round trips (a python start's trace is ~75
 * small ranges): 8 finish it in ~10 round trips and still leave readers connections.
 */
export const PREFETCH_PARALLEL = 8;
/** One prefetch read: whole traced ranges up to this, longer ones split. */
export const PREFETCH_PIECE_BYTES = 1 << 20;
/**
 * One readMany: the next queued pieces of a layer, in trace order, up to this many pieces and
 * bytes to fetch (see groupBytes). Small enough that the first batches (what the application
 * reads first) arrive in one round trip each, PARALLEL at a time; the VM benchmark's python
 * trace (89 pieces, a layer with 64 KiB subchunks) takes 22 requests instead of 89.
 */
export const PREFETCH_BATCH_BYTES = 512 << 10;
export const PREFETCH_BATCH_PIECES = 32;
/** Ranges this close to a piece queued shortly before are joined into it (one read). */
const COALESCE_GAP_BYTES = 128 << 10;
/** How many of the latest pieces a range may join: nearby in order, so the order holds. */
const COALESCE_LOOKBACK = 16;
/** After this many failed reads the prefetch stops (the registry is unwell). */
const MAX_FAILURES = 3;

interface Piece {
  layerIndex: number;
  offset: number;
  length: number;
  state: "pending" | "running" | "done" | "skipped";
  /** While running: settles when its read has. */
  reading?: Promise<void>;
}

export class TracePrefetcher {
  readonly #targets: (PrefetchTarget | undefined)[];
  readonly #pieces: Piece[] = [];
  /** Per layer: its pieces sorted by offset (for noteRead). */
  readonly #byOffset: Piece[][];
  readonly #progress: PrefetchProgress[];
  #next = 0;
  /** Reads made: one per piece, or per readMany of several. */
  #requests = 0;
  #signal?: AbortSignal;
  readonly #groupBytes: (number | undefined)[];

  /**
   * `targets[i]` undefined: layer i is not prefetched (local, or not traced). `budgetBytes[i]`
   * bounds what layer i takes (a memory-only cache evicts what does not fit).
   */
  constructor(
    targets: (PrefetchTarget | undefined)[],
    ranges: PrefetchRange[],
    options: {
      budgetBytes?: (number | undefined)[];
      pieceBytes?: number;
      /**
       * Per layer: the unit its source fetches whole (a verified layer's chunk). A piece is
       * read together with the queued pieces in the same units: one fetch and one check for
       * all of them, instead of one each when the trace comes back to a unit later.
       */
      groupBytes?: (number | undefined)[];
    } = {},
  ) {
    this.#targets = targets;
    this.#groupBytes = targets.map((_, i) => options.groupBytes?.[i]);
    const pieceBytes = options.pieceBytes ?? PREFETCH_PIECE_BYTES;
    const left = targets.map((_, i) => options.budgetBytes?.[i] ?? Infinity);
    this.#progress = targets.map(() => ({
      bytesTotal: 0,
      bytesDone: 0,
      bytesReadFirst: 0,
      state: "waiting",
    }));
    for (const range of ranges) {
      if (!targets[range.layerIndex]) continue;
      const take = Math.min(range.length, left[range.layerIndex]);
      if (take <= 0) continue;
      left[range.layerIndex] -= take;
      for (let from = 0; from < take; from += pieceBytes) {
        this.#add(
          range.layerIndex,
          range.offset + from,
          Math.min(pieceBytes, take - from),
          pieceBytes,
        );
      }
    }
    this.#trimOverlaps();
    this.#byOffset = targets.map(() => []);
    for (const piece of this.#pieces) {
      this.#byOffset[piece.layerIndex].push(piece);
      this.#progress[piece.layerIndex].bytesTotal += piece.length;
    }
    for (const list of this.#byOffset) list.sort((a, b) => a.offset - b.offset);
  }

  /**
   * Coalescing looks back COALESCE_LOOKBACK pieces only, so a piece widened over a gap can hold
   * bytes a later one holds too (a trace of 90 MB counted 285 MB over a 261 MB layer, the
   * overlaps read twice from the cache). Each piece keeps only what no piece before it in trace
   * order holds at its ends; one now wholly covered goes.
   */
  #trimOverlaps(): void {
    const covered = this.#targets.map(() => new CoveredRanges());
    const kept: Piece[] = [];
    for (const piece of this.#pieces) {
      const ranges = covered[piece.layerIndex];
      const end = piece.offset + piece.length;
      const start = ranges.endOfRunAt(piece.offset);
      const stop = ranges.startOfRunAt(end);
      ranges.add(piece.offset, end);
      if (stop <= start) continue;
      piece.offset = start;
      piece.length = stop - start;
      kept.push(piece);
    }
    this.#pieces.splice(0, this.#pieces.length, ...kept);
  }

  #add(layerIndex: number, offset: number, length: number, pieceBytes: number): void {
    const end = offset + length;
    const from = Math.max(0, this.#pieces.length - COALESCE_LOOKBACK);
    for (let i = this.#pieces.length - 1; i >= from; i--) {
      const piece = this.#pieces[i];
      if (piece.layerIndex !== layerIndex) continue;
      const start = Math.min(piece.offset, offset);
      const stop = Math.max(piece.offset + piece.length, end);
      const gap = Math.max(offset - (piece.offset + piece.length), piece.offset - end);
      if (gap <= COALESCE_GAP_BYTES && stop - start <= pieceBytes) {
        piece.offset = start;
        piece.length = stop - start;
        return;
      }
    }
    this.#pieces.push({ layerIndex, offset, length, state: "pending" });
  }

  get pieceCount(): number {
    return this.#pieces.length;
  }

  progress(layerIndex: number): PrefetchProgress | undefined {
    const progress = this.#progress[layerIndex];
    return progress && progress.bytesTotal > 0 ? { ...progress } : undefined;
  }

  /** A reader asked for these bytes: queued pieces inside them need no prefetch read. */
  noteRead(layerIndex: number, offset: number, length: number): void {
    const list = this.#byOffset[layerIndex];
    if (!list?.length) return;
    const end = offset + length;
    // First piece that ends after `offset` (pieces of a layer may overlap by coalescing).
    const lo = firstIndexWhereNot(list, (piece) => piece.offset + piece.length <= offset);
    for (let i = Math.max(0, lo - 1); i < list.length && list[i].offset < end; i++) {
      const piece = list[i];
      if (piece.state !== "pending") continue;
      if (piece.offset >= offset && piece.offset + piece.length <= end) {
        piece.state = "skipped";
        this.#progress[layerIndex].bytesDone += piece.length;
        this.#progress[layerIndex].bytesReadFirst += piece.length;
      }
    }
  }

  /**
   * Whether [offset, offset + length) of the layer lies in pieces the prefetch has read or is
   * reading (not in pieces still queued, nor after it stopped or failed): there the prefetch
   * is the readahead. Overlapping pieces are looked for among the COALESCE_LOOKBACK before.
   */
  covers(layerIndex: number, offset: number, length: number): boolean {
    const list = this.#byOffset[layerIndex];
    const state = this.#progress[layerIndex]?.state;
    if (!list?.length || state === "failed" || state === "stopped") return false;
    const end = offset + length;
    // First piece starting after `offset`.
    const lo = firstIndexWhereNot(list, (piece) => piece.offset <= offset);
    let reached = offset;
    for (let i = Math.max(0, lo - COALESCE_LOOKBACK); i < list.length; i++) {
      const piece = list[i];
      if (piece.offset > reached) break;
      if (piece.state === "done" || piece.state === "running") {
        reached = Math.max(reached, piece.offset + piece.length);
        if (reached >= end) return true;
      }
    }
    return false;
  }

  /**
   * A reader wants [offset, offset + length) of the layer and it lies wholly in pieces queued
   * or being read: those queued are read now, ahead of the queue, and the promise settles when
   * all of them are in (then the reader finds the bytes where the prefetch puts them: pinned
   * pages, or the cache). Undefined when the prefetch does not hold the whole range (not
   * traced, partly outside, done already, or the prefetch has stopped): read as usual.
   */
  claim(layerIndex: number, offset: number, length: number): Promise<void> | undefined {
    const list = this.#byOffset[layerIndex];
    if (!list?.length || this.#progress[layerIndex].state !== "running") return undefined;
    const end = offset + length;
    const lo = firstIndexWhereNot(list, (piece) => piece.offset <= offset);
    // Pieces (queued or running) that cover the range from its start, in offset order.
    const wanted: Piece[] = [];
    let reached = offset;
    for (let i = Math.max(0, lo - COALESCE_LOOKBACK); i < list.length && reached < end; i++) {
      const piece = list[i];
      if (piece.offset > reached) break;
      if (piece.offset + piece.length <= reached) continue;
      if (piece.state === "skipped") return undefined;
      if (piece.state !== "done") wanted.push(piece);
      reached = Math.max(reached, piece.offset + piece.length);
    }
    if (reached < end || wanted.length === 0) return undefined;
    for (const piece of wanted) {
      if (piece.state !== "pending") continue;
      piece.state = "running";
      this.#progress[layerIndex].bytesReadFirst += piece.length;
      this.#start(piece, this.#signal).catch(() => {});
    }
    return Promise.all(wanted.map((piece) => piece.reading)).then(() => {});
  }

  /** Reads one piece through its target; rejects with the read (the piece goes back to pending). */
  #start(piece: Piece, signal?: AbortSignal): Promise<void> {
    return this.#startTogether([piece], signal);
  }

  /**
   * Reads pieces of one layer in one readMany (one read when there is one piece or the target
   * has no readMany); each piece's `reading` is the whole read's. Rejects with the read (the
   * pieces go back to pending).
   */
  #startTogether(pieces: Piece[], signal?: AbortSignal): Promise<void> {
    const target = this.#targets[pieces[0].layerIndex]!;
    const progress = this.#progress[pieces[0].layerIndex];
    this.#requests += target.readMany ? 1 : pieces.length;
    const reading = (async () => {
      try {
        if (pieces.length === 1 || !target.readMany) {
          await Promise.all(pieces.map((piece) => target.read(piece.offset, piece.length, signal)));
        } else {
          await target.readMany(
            pieces.map(({ offset, length }) => ({ offset, length })),
            signal,
          );
        }
        for (const piece of pieces) {
          piece.state = "done";
          progress.bytesDone += piece.length;
        }
      } catch (error) {
        for (const piece of pieces) piece.state = "pending";
        throw error;
      } finally {
        for (const piece of pieces) piece.reading = undefined;
      }
    })();
    for (const piece of pieces) piece.reading = reading;
    return reading;
  }

  /** Reads every pending piece in trace order, PREFETCH_PARALLEL at a time. Never rejects. */
  async run(signal: AbortSignal, parallel = PREFETCH_PARALLEL): Promise<string> {
    this.#signal = signal;
    for (const progress of this.#progress) if (progress.bytesTotal) progress.state = "running";
    let failures = 0;
    let lastError = "";
    const worker = async () => {
      while (!signal.aborted && failures < MAX_FAILURES) {
        const piece = this.#take();
        if (!piece) return;
        try {
          if (this.#targets[piece.layerIndex]!.readMany) {
            await this.#startTogether(this.#takeBatch(piece), signal);
          } else if (this.#groupBytes[piece.layerIndex]) {
            await Promise.all(
              [piece, ...this.#takeMates(piece)].map((p) => this.#start(p, signal)),
            );
          } else {
            await this.#start(piece, signal);
          }
        } catch (error) {
          if (signal.aborted) return;
          failures++;
          lastError = (error as Error)?.message ?? String(error);
        }
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
    // Pieces readers claimed ahead of the queue may still be in flight.
    await Promise.allSettled(this.#pieces.map((piece) => piece.reading));
    const state = signal.aborted ? "stopped" : failures >= MAX_FAILURES ? "failed" : "done";
    for (const progress of this.#progress) if (progress.bytesTotal) progress.state = state;
    const total = this.#progress.reduce((sum, p) => sum + p.bytesTotal, 0);
    const first = this.#progress.reduce((sum, p) => sum + p.bytesReadFirst, 0);
    return state === "failed"
      ? `trace prefetch stopped: ${failures} reads failed (it stops at ${MAX_FAILURES}; those ` +
        `under way when it did end too): ${lastError}`
      : `trace prefetch ${state}: ${total} bytes in ${this.#pieces.length} pieces, ` +
        `${this.#requests} reads (${first} read by the application first)`;
  }

  /** Queued pieces in the same fetch units as `piece` (see groupBytes), marked running. */
  #takeMates(piece: Piece): Piece[] {
    const unit = this.#groupBytes[piece.layerIndex];
    if (!unit) return [];
    const list = this.#byOffset[piece.layerIndex];
    const from = Math.floor(piece.offset / unit) * unit;
    const to = Math.ceil((piece.offset + piece.length) / unit) * unit;
    const lo = firstIndexWhereNot(list, (piece) => piece.offset < from);
    const mates: Piece[] = [];
    for (let i = lo; i < list.length && list[i].offset < to; i++) {
      const mate = list[i];
      if (mate.state !== "pending" || mate.offset + mate.length > to) continue;
      mate.state = "running";
      mates.push(mate);
    }
    return mates;
  }

  /**
   * `piece` and the queued pieces right after it in trace order, of its layer, marked running:
   * up to PREFETCH_BATCH_PIECES, and PREFETCH_BATCH_BYTES of what they cost to fetch (with
   * groupBytes: the fetch units they touch, at least one unit; the queued pieces within those
   * units come along for nothing). Stops at another layer's piece, so the order across layers
   * holds.
   */
  #takeBatch(piece: Piece): Piece[] {
    const unit = this.#groupBytes[piece.layerIndex];
    const limit = Math.max(PREFETCH_BATCH_BYTES, unit ?? 0);
    const units = new Set<number>();
    const unitsOf = (p: Piece) => {
      const first = Math.floor(p.offset / unit!);
      return Array.from(
        { length: Math.ceil((p.offset + p.length) / unit!) - first },
        (_, i) => first + i,
      );
    };
    const costOf = (p: Piece) =>
      unit ? unitsOf(p).filter((u) => !units.has(u)).length * unit : p.length;
    const batch: Piece[] = [];
    let spent = 0;
    const add = (p: Piece) => {
      spent += costOf(p);
      batch.push(p);
      if (!unit) return;
      for (const u of unitsOf(p)) units.add(u);
      batch.push(...this.#takeMates(p));
    };
    add(piece);
    while (this.#next < this.#pieces.length && batch.length < PREFETCH_BATCH_PIECES) {
      const next = this.#pieces[this.#next];
      if (next.state !== "pending") {
        this.#next++;
        continue;
      }
      if (next.layerIndex !== piece.layerIndex || spent + costOf(next) > limit) break;
      this.#next++;
      next.state = "running";
      add(next);
    }
    return batch;
  }

  #take(): Piece | undefined {
    while (this.#next < this.#pieces.length) {
      const piece = this.#pieces[this.#next++];
      if (piece.state === "pending") {
        piece.state = "running";
        return piece;
      }
    }
    return undefined;
  }
}

/** Binary search: the first index not `before`, in a list where every `before` item comes first. */
function firstIndexWhereNot<T>(list: readonly T[], before: (item: T) => boolean): number {
  let lo = 0, hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (before(list[mid])) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Disjoint byte ranges [start, end), sorted, merged as they are added. */
class CoveredRanges {
  readonly #starts: number[] = [];
  readonly #ends: number[] = [];

  /** Index of the last range starting at or before `offset`, or -1. */
  #before(offset: number): number {
    let low = 0, high = this.#starts.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (this.#starts[mid] <= offset) low = mid + 1;
      else high = mid;
    }
    return low - 1;
  }

  /** Where the covered run holding `offset` ends (`offset` itself when it is not covered). */
  endOfRunAt(offset: number): number {
    const i = this.#before(offset);
    return i >= 0 && this.#ends[i] > offset ? this.#ends[i] : offset;
  }

  /** Where the covered run holding the byte before `end` starts (`end` when not covered). */
  startOfRunAt(end: number): number {
    const i = this.#before(end - 1);
    return i >= 0 && this.#ends[i] >= end ? this.#starts[i] : end;
  }

  add(start: number, end: number): void {
    if (end <= start) return;
    let first = this.#before(start);
    if (first < 0 || this.#ends[first] < start) first++;
    let last = first;
    while (last < this.#starts.length && this.#starts[last] <= end) last++;
    // Ranges first..last-1 touch [start, end): one range replaces them.
    const mergedStart = last > first ? Math.min(start, this.#starts[first]) : start;
    const mergedEnd = last > first ? Math.max(end, this.#ends[last - 1]) : end;
    this.#starts.splice(first, last - first, mergedStart);
    this.#ends.splice(first, last - first, mergedEnd);
  }
}
