import { abortable } from "./abortable.ts";
import type { Source } from "./source.ts";
import type { DiskCacheStats } from "./disk_cache_stats.ts";
import { DiskPassthrough, isDiskBacked } from "./disk_passthrough.ts";
import { type DirectReadFiles, isDirectReadable } from "./direct_reads.ts";

export interface CacheOptions {
  /** Cache granularity, a power of two. Default 2 MiB. */
  chunkBytes?: number;
  /** Upper bound of the bytes the cache holds (whole chunks). Default 64 MiB. */
  cacheBytes?: number;
  /**
   * Largest sequential readahead window fetched as one underlying read. Default 8 MiB; clamped
   * to a quarter of `cacheBytes` so a window never evicts the one before it unread. 0: no
   * readahead (the reader above knows better what it will need, e.g. a gzip inflate cursor).
   */
  maxReadaheadBytes?: number;
}

export interface CacheStats {
  /** Bytes asked of the cache through read()/readInto(). */
  bytesRequested: number;
  /** Bytes read from the underlying source. */
  bytesFetched: number;
  /** Underlying read() calls. */
  fetches: number;
  /** Of those, fetches started by readahead rather than a waiting reader. */
  readaheadFetches: number;
  /** Chunk lookups answered from the cache. */
  hits: number;
  /** Chunk lookups that had to wait (a new fetch or one already in flight). */
  misses: number;
  /** Chunk lookups that joined a fetch already in flight (single-flight). */
  joined: number;
  /** Bytes held right now; never above `cacheBytes`. */
  cachedBytes: number;
  cachedChunks: number;
  /** The disk cache under this one, when there is one (its fetches are the registry's). */
  disk?: DiskCacheStats;
}

/** The stats of a cache that has done nothing yet. */
export function noCacheStats(): CacheStats {
  return {
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
}

/**
 * 2 MiB: EROFS metadata is spread over the whole image, so a cold `find` touches most chunks
 * wherever they are and its synchronous reads pay one round trip per chunk. Replaying the
 * benchmark's block trace (scripts/bench/replay.ts, docs/benchmarks.md) with a 64 MiB cache:
 * 1 MiB chunks take 79 GETs for find + 47 for tar, 2 MiB 49 + 27; 4 MiB thrash (16 chunks).
 */
export const DEFAULT_CACHE_CHUNK_BYTES = 2 << 20;
export const DEFAULT_CACHE_BYTES = 64 << 20;
export const DEFAULT_MAX_READAHEAD_BYTES = 8 << 20;

type Piece = Uint8Array | Promise<Uint8Array>;

/** One sequential reader being followed for readahead. */
interface Stream {
  /** Where the next read of this stream is expected. */
  nextOffset: number;
  /** Chunks in the next readahead window (1, 2, 4 … up to maxReadaheadChunks). */
  windowChunks: number;
  /** Chunk index just past the furthest chunk fetched for the stream. */
  aheadEnd: number;
  /** Reading chunk >= marker (the start of the newest window) fetches the next one. */
  marker: number;
  /** Bytes read in this stream so far: it is followed for readahead from one chunk's worth on. */
  requested: number;
}

/** Sequential streams followed at once. */
const MAX_STREAMS = 8;

function newStream(nextOffset: number, aheadEnd: number, requested: number): Stream {
  return { nextOffset, windowChunks: 1, aheadEnd, marker: Infinity, requested };
}

/**
 * A Source in front of another: aligned chunks in a bounded LRU, one underlying fetch per chunk
 * however many readers want it (single-flight), and sequential readahead whose window doubles
 * (1, 2, 4 … chunks up to `maxReadaheadBytes`) while reads stay sequential and drops back to
 * one chunk on a jump. A window is ONE underlying read (one ranged GET for a registry blob).
 *
 * Bytes returned by read() may be shared with the cache: do not modify them.
 * A failed underlying read rejects every reader waiting on it and caches nothing.
 */
export class CachedSource implements Source {
  readonly size: number;
  readonly chunkBytes: number;
  /** The configured bound: chunks here plus whatever is reserved (pinned metadata) in front. */
  readonly cacheBytes: number;
  #maxReadaheadChunks: number;
  readonly #configuredReadaheadBytes: number;
  /** Bytes of `cacheBytes` held elsewhere (see reserveBytes()). */
  #reservedBytes = 0;

  readonly #inner: Source;
  /** Set when the inner source is disk-cached: then reads go straight to its file. */
  readonly #passthrough?: DiskPassthrough;
  readonly #chunkCount: number;
  /** chunk index → bytes; Map order is the LRU order (oldest first). */
  readonly #chunks = new Map<number, Uint8Array>();
  readonly #inflight = new Map<number, Promise<Uint8Array>>();
  readonly #closing = new AbortController();
  #cachedBytes = 0;

  #readaheadCovered?: (offset: number, length: number) => boolean;

  /**
   * Sequential streams being followed, most recently used last (a file start is one, followed
   * for readahead at once).
   */
  readonly #streams: Stream[] = [newStream(0, 0, Infinity)];

  readonly #stats = noCacheStats();

  constructor(inner: Source, options: CacheOptions = {}) {
    const chunkBytes = options.chunkBytes ?? DEFAULT_CACHE_CHUNK_BYTES;
    const cacheBytes = options.cacheBytes ?? DEFAULT_CACHE_BYTES;
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 512 || (chunkBytes & (chunkBytes - 1))) {
      throw new RangeError(`chunk size must be a power of two >= 512, got ${chunkBytes}`);
    }
    if (!Number.isSafeInteger(cacheBytes) || cacheBytes < chunkBytes) {
      throw new RangeError(`cache size ${cacheBytes} is smaller than one chunk (${chunkBytes})`);
    }
    this.#inner = inner;
    this.size = inner.size;
    this.chunkBytes = chunkBytes;
    this.cacheBytes = cacheBytes;
    this.#configuredReadaheadBytes = options.maxReadaheadBytes ?? DEFAULT_MAX_READAHEAD_BYTES;
    this.#maxReadaheadChunks = this.#readaheadChunksFor(cacheBytes);
    this.#chunkCount = Math.ceil(this.size / chunkBytes);
    if (isDiskBacked(inner)) {
      this.#passthrough = new DiskPassthrough(inner, chunkBytes, this.#configuredReadaheadBytes);
    }
  }

  get maxReadaheadChunks(): number {
    return this.#maxReadaheadChunks;
  }

  /** What chunks may occupy now: `cacheBytes` minus the reserve, one chunk at least. */
  get chunkBudgetBytes(): number {
    return Math.max(this.chunkBytes, this.cacheBytes - this.#reservedBytes);
  }

  /**
   * Sets how much of `cacheBytes` is held in front of this cache (pinned metadata), so both
   * together stay within the one bound the user gave (`--cache-size`). Evicts down to the rest
   * at once; the cache keeps one chunk even when the reserve claims everything.
   */
  reserveBytes(bytes: number): void {
    this.#reservedBytes = Math.max(0, bytes);
    this.#maxReadaheadChunks = this.#readaheadChunksFor(this.chunkBudgetBytes);
    this.#evictDownTo(this.chunkBudgetBytes);
  }

  /**
   * Reads for which `covered` says true start no readahead: bytes another reader fetches ahead
   * already (a trace prefetch: its own reads and the application's reads of traced ranges).
   * Readahead there would only fetch past the traced ranges, bytes the trace says nobody reads.
   */
  skipReadaheadWhere(covered: (offset: number, length: number) => boolean): void {
    this.#readaheadCovered = covered;
    this.#passthrough?.skipReadaheadWhere(covered);
  }

  /** A quarter of the room, so a window never evicts the one before it unread. */
  #readaheadChunksFor(roomBytes: number): number {
    const readahead = Math.min(this.#configuredReadaheadBytes, Math.floor(roomBytes / 4));
    return Math.max(1, Math.floor(readahead / this.chunkBytes));
  }

  #evictDownTo(bytes: number): void {
    while (this.#cachedBytes > bytes && this.#chunks.size) {
      const [oldest, chunk] = this.#chunks.entries().next().value!;
      this.#chunks.delete(oldest);
      this.#cachedBytes -= chunk.byteLength;
    }
  }

  stats(): CacheStats {
    const disk = (this.#inner as { diskStats?: () => DiskCacheStats }).diskStats?.();
    return {
      ...this.#stats,
      cachedBytes: this.#cachedBytes,
      cachedChunks: this.#chunks.size,
      ...(disk ? { disk } : {}),
    };
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    this.#check(offset, length);
    if (length === 0) return new Uint8Array(0);
    if (this.#passthrough) {
      this.#stats.bytesRequested += length;
      const out = new Uint8Array(length);
      await this.#passthrough.readInto(offset, out, signal);
      return out;
    }
    const first = Math.floor(offset / this.chunkBytes);
    const last = Math.floor((offset + length - 1) / this.chunkBytes);
    const pieces = this.#acquire(offset, length, first, last);
    if (first === last) {
      const piece = pieces[0];
      const chunk = piece instanceof Uint8Array ? piece : await abortable(piece, signal);
      const start = offset - first * this.chunkBytes;
      return chunk.subarray(start, start + length);
    }
    const out = new Uint8Array(length);
    await this.#assemble(pieces, first, offset, out, signal);
    return out;
  }

  /**
   * Reads `dest.length` bytes at `offset` straight into `dest` (e.g. the data part of an NBD
   * reply buffer), saving the intermediate buffer of read().
   */
  async readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
    this.#check(offset, dest.length);
    if (dest.length === 0) return;
    if (this.#passthrough) {
      this.#stats.bytesRequested += dest.length;
      return await this.#passthrough.readInto(offset, dest, signal);
    }
    const first = Math.floor(offset / this.chunkBytes);
    const last = Math.floor((offset + dest.length - 1) / this.chunkBytes);
    await this.#assemble(
      this.#acquire(offset, dest.length, first, last),
      first,
      offset,
      dest,
      signal,
    );
  }

  /**
   * The source below's direct reads: a disk cache's (this cache only reads ahead for it), or a
   * local file's (all of it is there, and it does not change: bytes cached here are the same).
   */
  openDirectReads(): DirectReadFiles | undefined {
    if (!isDirectReadable(this.#inner)) return undefined;
    return this.#inner.openDirectReads();
  }

  /** Served reads count as requested and are followed for readahead like reads through here. */
  noteDirectReads(ranges: readonly number[]): void {
    if (!isDirectReadable(this.#inner)) return;
    for (let i = 0; i + 1 < ranges.length; i += 2) {
      this.#stats.bytesRequested += ranges[i + 1];
      this.#passthrough?.note(ranges[i], ranges[i + 1]);
    }
    this.#inner.noteDirectReads(ranges);
  }

  async close(): Promise<void> {
    this.#closing.abort(new Error("cache closed"));
    this.#chunks.clear();
    this.#cachedBytes = 0;
    await this.#inner.close?.();
  }

  #check(offset: number, length: number): void {
    if (this.#closing.signal.aborted) throw new Error("read from a closed CachedSource");
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
      offset + length > this.size
    ) {
      throw new RangeError(`read of ${length} bytes at ${offset} outside 0..${this.size}`);
    }
  }

  /** Copies each chunk's part into `out` as soon as that chunk is there. */
  async #assemble(
    pieces: Piece[],
    first: number,
    offset: number,
    out: Uint8Array,
    signal?: AbortSignal,
  ): Promise<void> {
    const end = offset + out.length;
    // Only `target` is held by the pieces' callbacks: a read that gave up (its signal) drops it,
    // so a shared fetch landing later neither writes nor keeps the caller's buffer, which the
    // caller's memory budget (serve's reply buffers) stopped counting when the read rejected.
    let target: Uint8Array | undefined = out;
    const place = (index: number, chunk: Uint8Array) => {
      if (!target) return;
      const chunkStart = index * this.chunkBytes;
      const from = Math.max(offset, chunkStart);
      const to = Math.min(end, chunkStart + chunk.length);
      target.set(chunk.subarray(from - chunkStart, to - chunkStart), from - offset);
    };
    const waits: Promise<void>[] = [];
    pieces.forEach((piece, i) => {
      if (piece instanceof Uint8Array) place(first + i, piece);
      else waits.push(piece.then((chunk) => place(first + i, chunk)));
    });
    try {
      if (waits.length) await abortable(Promise.all(waits), signal);
    } finally {
      target = undefined;
    }
  }

  /**
   * Looks up chunks first..last, starts fetches for the missing ones (extended to the readahead
   * window when the access is sequential) and the next background window when due.
   */
  #acquire(offset: number, length: number, first: number, last: number): Piece[] {
    this.#stats.bytesRequested += length;
    const followed = this.#stream(offset, length, last);
    const stream = followed.stream;
    const sequential = followed.sequential && this.#configuredReadaheadBytes > 0 &&
      !this.#readaheadCovered?.(offset, length);

    const pieces: Piece[] = new Array(last - first + 1);
    for (let i = first; i <= last;) {
      const cached = this.#chunks.get(i);
      if (cached) {
        this.#chunks.delete(i); // move to the young end of the LRU
        this.#chunks.set(i, cached);
        this.#stats.hits++;
        pieces[i++ - first] = cached;
        continue;
      }
      const pending = this.#inflight.get(i);
      if (pending) {
        this.#stats.misses++;
        this.#stats.joined++;
        pieces[i++ - first] = pending;
        continue;
      }
      // A run of missing chunks: one underlying read, extended to the window if sequential.
      let runEnd = i + 1;
      while (runEnd <= last && !this.#present(runEnd)) runEnd++;
      const neededEnd = runEnd;
      if (sequential && runEnd === last + 1) {
        const windowEnd = Math.min(this.#chunkCount, i + stream.windowChunks);
        while (runEnd < windowEnd && !this.#present(runEnd)) runEnd++;
        this.#advanceWindow(stream, i, runEnd);
      }
      this.#fetch(i, runEnd, false);
      for (; i < neededEnd; i++) {
        this.#stats.misses++;
        pieces[i - first] = this.#inflight.get(i)!;
      }
    }

    if (sequential && last >= stream.marker) this.#readahead(stream, last + 1);
    return pieces;
  }

  /**
   * The stream a read continues (it starts near where that stream stopped), or a new one
   * replacing the least recently used. Several streams let concurrent sequential readers
   * (two files, nbdcopy's per-connection regions) each keep their readahead.
   */
  #stream(offset: number, length: number, last: number): { stream: Stream; sequential: boolean } {
    const streams = this.#streams;
    for (let i = streams.length - 1; i >= 0; i--) {
      const stream = streams[i];
      if (
        offset >= stream.nextOffset - 2 * this.chunkBytes &&
        offset <= stream.nextOffset + this.chunkBytes
      ) {
        streams.splice(i, 1);
        streams.push(stream);
        stream.nextOffset = Math.max(stream.nextOffset, offset + length);
        stream.requested += length;
        return { stream, sequential: stream.requested > this.chunkBytes };
      }
    }
    if (streams.length >= MAX_STREAMS) streams.shift();
    const stream = newStream(offset + length, last + 1, length);
    streams.push(stream);
    return { stream, sequential: false };
  }

  /** Starts the next sequential window in the background, beyond what is already fetched. */
  #readahead(stream: Stream, from: number): void {
    let start = Math.max(stream.aheadEnd, from);
    while (start < this.#chunkCount && this.#present(start)) start++;
    if (start >= this.#chunkCount) {
      stream.marker = Infinity;
      return;
    }
    const windowEnd = Math.min(this.#chunkCount, start + stream.windowChunks);
    let end = start + 1;
    while (end < windowEnd && !this.#present(end)) end++;
    this.#advanceWindow(stream, start, end);
    this.#fetch(start, end, true);
  }

  /** Records a window [start, end) of the stream and grows the next one. */
  #advanceWindow(stream: Stream, start: number, end: number): void {
    stream.aheadEnd = Math.max(stream.aheadEnd, end);
    stream.marker = start;
    stream.windowChunks = Math.min(stream.windowChunks * 2, this.#maxReadaheadChunks);
  }

  #present(index: number): boolean {
    return this.#chunks.has(index) || this.#inflight.has(index);
  }

  /** One underlying read for chunks [start, end), split into chunks and cached on success. */
  #fetch(start: number, end: number, readahead: boolean): void {
    const byteStart = start * this.chunkBytes;
    const byteEnd = Math.min(this.size, end * this.chunkBytes);
    const length = byteEnd - byteStart;
    this.#stats.fetches++;
    if (readahead) this.#stats.readaheadFetches++;
    this.#stats.bytesFetched += length;
    const split = this.#inner.read(byteStart, length, this.#closing.signal).then((bytes) => {
      if (bytes.length !== length) {
        throw new Error(`source returned ${bytes.length} bytes for a read of ${length}`);
      }
      const chunks: Uint8Array[] = [];
      for (let i = start; i < end; i++) {
        const from = (i - start) * this.chunkBytes;
        const to = Math.min(length, from + this.chunkBytes);
        // A chunk must own its buffer: a view would pin the whole window in memory after its
        // siblings are evicted and the cache bound would be a lie.
        const owns = from === 0 && to === length && bytes.byteOffset === 0 &&
          bytes.byteLength === bytes.buffer.byteLength;
        chunks.push(owns ? bytes : bytes.slice(from, to));
      }
      return chunks;
    });
    const settled = split.then(
      (chunks) => {
        for (let i = start; i < end; i++) {
          this.#inflight.delete(i);
          if (!this.#closing.signal.aborted) this.#insert(i, chunks[i - start]);
        }
        return chunks;
      },
      (error) => {
        for (let i = start; i < end; i++) this.#inflight.delete(i);
        throw error;
      },
    );
    for (let i = start; i < end; i++) {
      const chunk = settled.then((chunks) => chunks[i - start]);
      // Readahead nobody waits for must not surface as an unhandled rejection.
      chunk.catch(() => {});
      this.#inflight.set(i, chunk);
    }
  }

  #insert(index: number, chunk: Uint8Array): void {
    const old = this.#chunks.get(index);
    if (old) {
      this.#chunks.delete(index);
      this.#cachedBytes -= old.byteLength;
    }
    this.#evictDownTo(this.chunkBudgetBytes - chunk.byteLength);
    this.#chunks.set(index, chunk);
    this.#cachedBytes += chunk.byteLength;
  }
}
