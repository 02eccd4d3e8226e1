/**
 * Random reads in the uncompressed stream of a gzip blob, through its zinfo checkpoints.
 *
 * The output between two checkpoints (an "interval") is cut into pieces (1 MiB); produced
 * pieces go to an LRU cache with a byte budget, and the inflate cursor that made them is kept
 * (a few, LRU) so the next sequential read continues where it stopped: a sequential pass costs
 * one inflate of each byte. Work on one interval is serialized (a later piece waits for the
 * cursor making an earlier one instead of starting a second inflate); intervals run in parallel.
 * Compressed bytes come from `blob`, so a chunk cache in front of it coalesces and reads ahead.
 */
import { FormatError } from "../errors.ts";
import type { Source } from "../source/source.ts";
import { BufferPool } from "./buffer_pool.ts";
import { type CursorSnapshot, InflateCursor, type InflaterKind } from "./inflate_cursor.ts";
import { MAX_CHECKPOINT_GAP_BYTES, Zinfo } from "./zinfo.ts";
import { piecesMoved, ReadRuns } from "./read_runs.ts";
import { PieceDigests, sha256 } from "./piece_digests.ts";
import { after } from "../timers.ts";

export interface GzipRandomAccessOptions {
  /** Budget of the decompressed-piece cache (default 32 MiB). */
  cacheBytes?: number;
  /** Piece size (default 1 MiB). */
  pieceBytes?: number;
  /** Paused inflate cursors kept (default 8; each holds ~1 MiB of input at most). */
  maxCursors?: number;
  /** "zlib" (default, libz.so.1 via FFI) or "ts" (pure TypeScript; slower, for comparison). */
  inflater?: InflaterKind;
  /** Inflate on a pool thread so the event loop never waits for zlib (default false). */
  offThread?: boolean;
  /**
   * Check every piece against these digests before serving it (their piece size replaces
   * `pieceBytes`; the stream ends at their `totalBytes`).
   */
  verify?: PieceDigests;
  /** For `open`: the piece digests file (NAME.pieces) to build `verify` from. */
  pieceDigests?: { bytes: Uint8Array; pieceBytes: number; totalBytes: number };
  /**
   * For `open`: uncompressed bytes reads may reach (the tar size), so the gap from the last
   * checkpoint to it is refused up front (default: the piece digests' total). Unknown, a read
   * more than MAX_CHECKPOINT_GAP_BYTES past the last checkpoint fails instead.
   */
  streamBytes?: number;
  /** For `open`: names the zinfo (file, layer) in its errors. */
  zinfoName?: string;
}

export interface GzipRandomAccessStats {
  pieceHits: number;
  pieceMisses: number;
  cursorsOpened: number;
  inflatedBytes: number;
  /** Pieces made ahead of a sequential reader (before any read asked for them). */
  piecesAhead: number;
  /** Intervals whose compressed bytes were fetched ahead of a sequential reader. */
  intervalsPrefetched: number;
  /** Pieces made by a cursor started from a snapshot instead of a checkpoint. */
  snapshotsUsed: number;
}

/**
 * A sequential reader (a run of reads, see read_runs.ts) gets the next piece made while it
 * uses this one and each interval's compressed bytes fetched in one read; once its run is
 * this many spans long and past the middle of an interval, the next interval's compressed
 * bytes are fetched too (into a cursor parked there), so a long pass never waits for a fetch.
 * A random reader gets only the compressed bytes up to the end of the piece it asks for.
 */
const SPANS_BEFORE_INTERVAL_PREFETCH = 2;
/**
 * Compressed input the paused cursors may hold together, or a quarter of the piece cache if
 * more (4 MiB for one layer with the default cache). Was 8 MiB: lowered with the random
 * readers' 1 MiB fetches and the views of cached pieces (session 63), which together took a lazy
 * tar.gz mount's peak from 211 to 186 MB under random readers.
 */
const MAX_IDLE_HELD_BYTES = 2 * 1024 * 1024;
/**
 * Evicted pieces and closed cursors' input buffers kept for reuse, per size (BufferPool): the
 * buffers in use swing by ~11 MiB under one random reader (a 16 MiB piece cache, 1 MiB pieces
 * and inputs, 4 MiB sequential inputs), and what a smaller pool let go was garbage until V8's
 * next full collection, up to ~30 MB of the server's RSS (session 64).
 */
const MAX_POOLED_BYTES = 8 * 1024 * 1024;
/**
 * Snapshots of inflate state kept at piece boundaries (~40 KB of zlib memory each): a random
 * read then inflates from the piece boundary before it, not from the checkpoint up to 4 MiB
 * back (session 64: in a random-reading mount half of all inflating was the way there).
 */
const MAX_SNAPSHOTS = 64;

/**
 * A piece of output in the cache. Its bytes are never handed out: reads copy from it while it
 * is pinned, and only a piece both evicted and unpinned goes back to the pool to be made again.
 */
interface Piece {
  bytes: Uint8Array<ArrayBuffer>;
  pins: number;
  evicted: boolean;
}

export class GzipRandomAccess {
  readonly stats: GzipRandomAccessStats = {
    pieceHits: 0,
    pieceMisses: 0,
    cursorsOpened: 0,
    inflatedBytes: 0,
    piecesAhead: 0,
    intervalsPrefetched: 0,
    snapshotsUsed: 0,
  };
  readonly #pieceBytes: number;
  readonly #cacheBytes: number;
  readonly #maxCursors: number;
  readonly #inflater: InflaterKind;
  readonly #offThread: boolean;
  readonly #verify?: PieceDigests;
  readonly #pieces = new Map<string, Piece>();
  readonly #pool: BufferPool;
  /** By output position, least recently used first. */
  readonly #snapshots = new Map<number, CursorSnapshot>();
  #cachedBytes = 0;
  #idle: InflateCursor[] = [];
  readonly #locks = new Map<number, Promise<void>>();
  #closed = false;
  readonly #runs: ReadRuns;
  /** Pieces being made ahead ("index:k"), and intervals fetched whole or ahead once already. */
  readonly #ahead = new Set<string>();
  readonly #prefetchedIntervals = new Set<number>();
  /** Where the data ends, once known (a short piece; the recorded size with `verify`). */
  #dataEnd: number;

  constructor(readonly blob: Source, readonly zinfo: Zinfo, options: GzipRandomAccessOptions = {}) {
    this.#verify = options.verify;
    this.#pieceBytes = options.verify?.pieceBytes ?? options.pieceBytes ?? 1024 * 1024;
    this.#cacheBytes = options.cacheBytes ?? 32 * 1024 * 1024;
    this.#maxCursors = options.maxCursors ?? 8;
    this.#inflater = options.inflater ?? "zlib";
    this.#offThread = options.offThread ?? false;
    this.#runs = new ReadRuns(this.#pieceBytes);
    this.#pool = new BufferPool(Math.max(MAX_POOLED_BYTES, 4 * this.#pieceBytes));
    this.#dataEnd = options.verify?.totalBytes ?? Infinity;
  }

  /**
   * Opens and validates the zinfo against `blob` (FormatError when it does not fit), or takes
   * one opened against it already (read once at a mount: hashed and checked there).
   */
  static async open(
    blob: Source,
    zinfoSource: Source | Zinfo,
    options?: GzipRandomAccessOptions,
    signal?: AbortSignal,
  ): Promise<GzipRandomAccess> {
    const digests = options?.pieceDigests;
    const zinfo = zinfoSource instanceof Zinfo
      ? zinfoSource
      : await Zinfo.open(zinfoSource, blob.size, signal, {
        name: options?.zinfoName,
        streamBytes: options?.streamBytes ?? digests?.totalBytes ?? options?.verify?.totalBytes,
      });
    const verify = digests
      ? PieceDigests.from(digests.bytes, digests.pieceBytes, zinfo.checkpoints, digests.totalBytes)
      : options?.verify;
    return new GzipRandomAccess(blob, zinfo, { ...options, verify });
  }

  /**
   * Exactly `length` uncompressed bytes at `offset`, or a rejection (corrupt data, a read past
   * the end of the gzip data, a failed blob read) that affects this read only.
   */
  async read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new RangeError(`bad read ${offset}+${length}`);
    }
    const out = new Uint8Array(length);
    await this.readInto(offset, out, signal);
    return out;
  }

  /** As read(), into `dest` (all of it, or a rejection; `dest` may be partly written then). */
  async readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
    const length = dest.length;
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new RangeError(`bad read ${offset}+${length}`);
    }
    const total = this.#verify?.totalBytes;
    if (total !== undefined && offset + length > total) {
      throw new FormatError(
        `read at uncompressed offset ${offset}+${length} is past the end of the gzip data ` +
          `(${total} bytes)`,
        "the tar index does not belong to this layer",
      );
    }
    const cps = this.zinfo.checkpoints;
    const run = this.#runs.note(offset, length);
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const index = this.zinfo.checkpointFor(at);
      const start = cps[index].uncompressedOffset;
      if (at - start >= MAX_CHECKPOINT_GAP_BYTES) {
        // Only past the last checkpoint of a stream whose size was not known at open (the
        // gaps between checkpoints were checked there): bound the inflate a read may cost.
        throw new FormatError(
          `read at uncompressed offset ${at} is ${at - start} bytes past zinfo checkpoint ` +
            `${index}: at most ${MAX_CHECKPOINT_GAP_BYTES} are inflated for a read`,
          "rebuild the index with `erofs-oci index`, which checkpoints every 4 MiB",
        );
      }
      const k = Math.floor((at - start) / this.#pieceBytes);
      // Pieces this read's run has moved through to get here (0: a random reader).
      const moved = piecesMoved(run, start + k * this.#pieceBytes, this.#pieceBytes);
      const piece = await this.#piece(index, k, signal, false, moved);
      try {
        if (moved > 0 && this.#cacheBytes >= 4 * this.#pieceBytes) {
          this.#readAhead(index, k, moved);
        }
        const bytes = piece.bytes;
        const from = at - start - k * this.#pieceBytes;
        if (from >= bytes.length) {
          throw new FormatError(
            `read at uncompressed offset ${at} is past the end of the gzip data ` +
              `(${start + k * this.#pieceBytes + bytes.length} bytes)`,
            "the tar index does not belong to this layer",
          );
        }
        const n = Math.min(bytes.length - from, length - done);
        dest.set(bytes.subarray(from, from + n), done);
        done += n;
      } finally {
        this.#unpin(piece);
      }
    }
  }

  /** Pieces made and buffers reused for them and for cursors' input (see BufferPool). */
  get bufferStats(): { made: number; reused: number; pooledBytes: number } {
    return { made: this.#pool.made, reused: this.#pool.reused, pooledBytes: this.#pool.freeBytes };
  }

  /** Bytes held by the piece cache now (at most the budget, plus the piece just made). */
  get cachedBytes(): number {
    return this.#cachedBytes;
  }

  /** Inflate cursors kept paused now. */
  get idleCursors(): number {
    return this.#idle.length;
  }

  /** Pieces of interval `index` (Infinity for the last one when the total size is unknown). */
  #pieceCount(index: number): number {
    const cps = this.zinfo.checkpoints;
    const end = index + 1 < cps.length
      ? cps[index + 1].uncompressedOffset
      : this.#verify?.totalBytes ?? Infinity;
    return Math.ceil((end - cps[index].uncompressedOffset) / this.#pieceBytes);
  }

  /** For a sequential reader at piece k of `index`: the next piece, maybe the next interval. */
  #readAhead(index: number, k: number, moved: number): void {
    if (this.#closed) return;
    const count = this.#pieceCount(index);
    const [nextIndex, nextK] = k + 1 < count ? [index, k + 1] : [index + 1, 0];
    const nextStart = this.zinfo.checkpoints[nextIndex]?.uncompressedOffset +
      nextK * this.#pieceBytes;
    if (
      nextIndex < this.zinfo.checkpoints.length && nextStart < this.#dataEnd &&
      nextK * this.#pieceBytes < MAX_CHECKPOINT_GAP_BYTES
    ) {
      const key = `${nextIndex}:${nextK}`;
      if (!this.#pieces.has(key) && !this.#ahead.has(key)) {
        this.#ahead.add(key);
        this.stats.piecesAhead++;
        const make = () =>
          this.#piece(nextIndex, nextK, undefined, true, moved + 1).then(
            (piece) => this.#unpin(piece),
            () => {},
          ).finally(() => this.#ahead.delete(key));
        // In a later task: an inflate with its input at hand runs without a pause, and the
        // answer to the read that got here must not wait for it.
        after(0, make);
      }
    }
    const following = index + 1;
    const cps = this.zinfo.checkpoints;
    const spanBytes = Math.max(this.#pieceBytes, this.zinfo.spanBytes);
    if (
      moved * this.#pieceBytes >= SPANS_BEFORE_INTERVAL_PREFETCH * spanBytes &&
      2 * (k + 1) >= count && following < cps.length && !this.#prefetchedIntervals.has(following) &&
      cps[following].uncompressedOffset < this.#dataEnd
    ) {
      this.#prefetchedIntervals.add(following);
      this.#prefetchInterval(following).catch(() => {});
    }
  }

  /** Fetches interval `index`'s compressed bytes into a cursor parked at its checkpoint. */
  async #prefetchInterval(index: number): Promise<void> {
    const previous = this.#locks.get(index) ?? Promise.resolve();
    const run = previous.then(async () => {
      const busy = this.#idle.some((cursor) => cursor.checkpoint === index) ||
        this.#pieces.has(`${index}:0`);
      if (this.#closed || busy) return;
      const cursor = await InflateCursor.open(
        this.blob,
        this.zinfo,
        index,
        undefined,
        this.#inflater,
        this.#pool,
      );
      cursor.offThread = this.#offThread;
      this.stats.cursorsOpened++;
      this.stats.intervalsPrefetched++;
      try {
        await cursor.prefetch();
      } catch (error) {
        cursor.close();
        throw error;
      }
      this.#parkCursor(cursor);
    });
    const guard = run.then(() => {}, () => {});
    this.#locks.set(index, guard);
    guard.then(() => {
      if (this.#locks.get(index) === guard) this.#locks.delete(index);
    });
    await run;
  }

  close(): void {
    this.#closed = true;
    // The zinfo's windows are read from its source until here (an open file: closed with us).
    this.zinfo.close();
    for (const cursor of this.#idle) cursor.close();
    this.#idle = [];
    this.#pieces.clear();
    this.#cachedBytes = 0;
    this.#pool.close();
    for (const snapshot of this.#snapshots.values()) snapshot.inflater.end();
    this.#snapshots.clear();
  }

  /**
   * Piece k of interval `index`, pinned (the caller unpins it); `ahead`: made for a reader that
   * has not asked yet; `moved`: pieces its reader has moved through in order (0: a random one).
   */
  async #piece(
    index: number,
    k: number,
    signal?: AbortSignal,
    ahead = false,
    moved = 0,
  ): Promise<Piece> {
    const hit = this.#cached(index, k);
    if (hit) {
      this.stats.pieceHits++;
      return hit;
    }
    this.stats.pieceMisses++;
    // Serialize per interval: a waiting read usually finds its piece made by the one before.
    const previous = this.#locks.get(index) ?? Promise.resolve();
    // Pinned where it is found or made, in the same task: between then and the caller's turn
    // other reads may evict it and make new pieces.
    const run = previous.then(() =>
      this.#cached(index, k) ?? this.#produce(index, k, signal, ahead, moved)
    );
    const guard = run.then(() => {}, () => {});
    this.#locks.set(index, guard);
    guard.then(() => {
      if (this.#locks.get(index) === guard) this.#locks.delete(index);
    });
    return await run;
  }

  async #produce(
    index: number,
    k: number,
    signal: AbortSignal | undefined,
    ahead: boolean,
    moved: number,
  ): Promise<Piece> {
    if (this.#closed) throw new Error("gzip reader closed");
    const cps = this.zinfo.checkpoints;
    const start = cps[index].uncompressedOffset;
    const end = index + 1 < cps.length
      ? cps[index + 1].uncompressedOffset
      : this.#verify?.totalBytes ?? Infinity;
    const wanted = start + k * this.#pieceBytes;
    let cursor = this.#takeCursor(index, wanted);
    const snapshot = this.#snapshotBefore(index, wanted, cursor?.position ?? start);
    if (snapshot) {
      if (cursor) this.#parkCursor(cursor);
      cursor = InflateCursor.fromSnapshot(this.blob, this.zinfo, snapshot, this.#pool);
      cursor.offThread = this.#offThread;
      this.stats.snapshotsUsed++;
    }
    if (!cursor) {
      cursor = await InflateCursor.open(
        this.blob,
        this.zinfo,
        index,
        signal,
        this.#inflater,
        this.#pool,
      );
      cursor.offThread = this.#offThread;
      this.stats.cursorsOpened++;
    }
    // The first piece of an interval made ahead fetches only itself: the reader may stop
    // before it. Past that the reader has come into the interval in order.
    cursor.toIntervalEnd = moved > 0 && (!ahead || k > 0);
    // An interval is fetched ahead at most once: a later reader stopping before it would not
    // use it (a reader that does fetches what it needs).
    if (cursor.toIntervalEnd) this.#prefetchedIntervals.add(index);
    cursor.fetchUntil = Math.min(end, wanted + this.#pieceBytes);
    try {
      for (;;) {
        const pieceStart = cursor.position;
        const pieceIndex = Math.round((pieceStart - start) / this.#pieceBytes);
        const length = Math.min(this.#pieceBytes, end - pieceStart);
        // A whole piece's buffer even for a short piece: one size for the pool.
        const buffer = this.#pool.take(this.#pieceBytes);
        const before = cursor.produced;
        const got = await cursor.fill(buffer.subarray(0, length), signal);
        this.stats.inflatedBytes += cursor.produced - before;
        if (got < length && end !== Infinity) {
          throw new FormatError(
            `gzip data ends at uncompressed offset ${pieceStart + got}, before ${end} ` +
              `(where zinfo checkpoint ${index + 1} or the recorded size says)`,
            "the zinfo does not belong to this layer",
          );
        }
        if (got < length) this.#dataEnd = Math.min(this.#dataEnd, pieceStart + got);
        const bytes = buffer.subarray(0, got);
        if (this.#verify) this.#check(index, pieceIndex, pieceStart, bytes);
        const piece = this.#store(index, pieceIndex, bytes);
        if (cursor.position < end && !cursor.ended) this.#keepSnapshot(cursor);
        if (pieceIndex >= k || got < length) {
          piece.pins++;
          if (cursor.position < end && !cursor.ended) this.#parkCursor(cursor);
          else cursor.close();
          cursor = undefined;
          return piece;
        }
      }
    } finally {
      cursor?.close();
    }
  }

  #check(index: number, k: number, start: number, piece: Uint8Array): void {
    const expected = this.#verify!.expected(index, k);
    const actual = sha256(piece);
    if (!expected || !actual.every((b, i) => b === expected[i])) {
      throw new FormatError(
        `layer data at uncompressed offset ${start} (${piece.length} bytes) does not match ` +
          `its index digest`,
        "the blob, the zinfo or the index is not what the index was made from",
      );
    }
  }

  /** The latest snapshot in interval `index` after `after` and at or before `wanted`. */
  #snapshotBefore(index: number, wanted: number, after: number): CursorSnapshot | undefined {
    const start = this.zinfo.checkpoints[index].uncompressedOffset;
    const first = start + Math.floor((wanted - start) / this.#pieceBytes) * this.#pieceBytes;
    for (let at = first; at > after; at -= this.#pieceBytes) {
      const snapshot = this.#snapshots.get(at);
      if (snapshot?.checkpoint !== index) continue;
      this.#snapshots.delete(at);
      this.#snapshots.set(at, snapshot);
      return snapshot;
    }
    return undefined;
  }

  #keepSnapshot(cursor: InflateCursor): void {
    if (this.#closed || this.#snapshots.has(cursor.position)) return;
    const snapshot = cursor.snapshot();
    if (!snapshot) return;
    this.#snapshots.set(snapshot.position, snapshot);
    for (const [at, oldest] of this.#snapshots) {
      if (this.#snapshots.size <= MAX_SNAPSHOTS) break;
      this.#snapshots.delete(at);
      oldest.inflater.end();
    }
  }

  #takeCursor(index: number, wanted: number): InflateCursor | undefined {
    let best = -1;
    this.#idle.forEach((cursor, i) => {
      if (cursor.checkpoint !== index || cursor.position > wanted) return;
      if (best < 0 || cursor.position > this.#idle[best].position) best = i;
    });
    if (best < 0) return undefined;
    return this.#idle.splice(best, 1)[0];
  }

  #parkCursor(cursor: InflateCursor): void {
    if (this.#closed) return cursor.close();
    this.#idle.push(cursor);
    // A cursor reading ahead holds up to the rest of its interval's compressed bytes.
    const heldBudget = Math.max(MAX_IDLE_HELD_BYTES, this.#cacheBytes / 4);
    let held = this.#idle.reduce((sum, c) => sum + c.heldBytes, 0);
    while (
      this.#idle.length > this.#maxCursors || (held > heldBudget && this.#idle.length > 1)
    ) {
      const oldest = this.#idle.shift()!;
      held -= oldest.heldBytes;
      oldest.close();
    }
  }

  /** The cached piece, pinned (the caller unpins it), or undefined. */
  #cached(index: number, k: number): Piece | undefined {
    const key = `${index}:${k}`;
    const piece = this.#pieces.get(key);
    if (piece) {
      this.#pieces.delete(key);
      this.#pieces.set(key, piece);
      piece.pins++;
    }
    return piece;
  }

  #unpin(piece: Piece): void {
    piece.pins--;
    if (piece.pins === 0 && piece.evicted) this.#pool.give(piece.bytes);
  }

  #evict(piece: Piece): void {
    piece.evicted = true;
    if (piece.pins === 0) this.#pool.give(piece.bytes);
  }

  /** Caches `bytes` as piece k of `index` (not after close: then only returned, unpinned). */
  #store(index: number, k: number, bytes: Uint8Array<ArrayBuffer>): Piece {
    const piece: Piece = { bytes, pins: 0, evicted: this.#closed };
    if (this.#closed) return piece;
    const key = `${index}:${k}`;
    const old = this.#pieces.get(key);
    // What the cache holds is whole buffers (a short piece is a view of one).
    if (old) {
      this.#cachedBytes -= old.bytes.buffer.byteLength;
      this.#evict(old);
    }
    this.#pieces.delete(key);
    this.#pieces.set(key, piece);
    this.#cachedBytes += bytes.buffer.byteLength;
    for (const [oldKey, oldPiece] of this.#pieces) {
      if (this.#cachedBytes <= this.#cacheBytes || oldKey === key) break;
      this.#pieces.delete(oldKey);
      this.#cachedBytes -= oldPiece.bytes.buffer.byteLength;
      this.#evict(oldPiece);
    }
    return piece;
  }
}
