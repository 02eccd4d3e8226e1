/**
 * A registry blob whose every byte is checked against its chunk-digest table before anyone
 * sees it. Sits directly over the blob, under the memory and disk caches: reads are widened
 * to whole table chunks (readRanges: to whole subchunks, when the table lists them), each is
 * hashed, and one that does not match is fetched once more (through `refetch`, the hook for
 * another mirror) before the read fails. A failed read is an error (EIO to the kernel), never
 * wrong bytes, so nothing unverified is ever cached.
 */
import type { Source } from "../source/source.ts";
import type { ChunkTable } from "./chunk_table.ts";
import { noteChunkMismatch } from "../source/fetch_metrics.ts";
import { fillTrace } from "../source/fill_trace.ts";
import { nodeCryptoLoaded } from "../node_builtins.ts";
import { readSubchunkChecked } from "./subchunk_reads.ts";
import { WrongBytesError } from "../source/wrong_bytes.ts";
import type { StoredBytesChecker } from "../source/stored_check.ts";
import type { RetryHolder } from "../oci/blob_range.ts";
import type { RegistryBlob } from "../oci/registry_blob.ts";

/** A chunk did not match its table entry, twice: the read fails. */
export class ChunkMismatchError extends WrongBytesError {
  constructor(
    readonly layerDigest: string,
    readonly chunkIndex: number,
    readonly offset: number,
    readonly origin: string,
  ) {
    super(
      `layer ${layerDigest}: bytes at offset ${offset} (chunk ${chunkIndex}) from ${origin} do not match the chunk-digest table`,
    );
  }
}

export interface VerifiedSourceOptions {
  /** Where the bytes come from, for the log line of a mismatch (e.g. the registry host). */
  origin: string;
  /** Fetches a chunk again after a mismatch (default: the inner source once more). */
  refetch?: (offset: number, length: number, signal?: AbortSignal) => Promise<Uint8Array>;
  /** Called for every mismatch (first and second); default: one line to stderr. */
  onMismatch?: (message: string) => void;
  /**
   * Hash each chunk on the JS thread (node:crypto) instead of Deno's blocking pool (Web
   * Crypto), once node:crypto is loaded (this never loads it: its first load holds the event
   * loop ~22 ms, so the caller chooses an idle moment). For a FUSE mount: its reader thread
   * answers pinned and cached reads by itself, so a hash there holds back only fills and
   * misses, and the machine's other core stays with the application (host, cold python on 2
   * cores: server CPU under python 330-360 -> 260-280 ms, misses' wait 130-151 -> 95-116 ms).
   * Not for NBD or `serve`: every read waits for the event loop there (in the TCG guest a 1 MiB
   * hash held it ~24 ms).
   */
  hashOnEventLoop?: boolean;
}

function isAbort(error: unknown): boolean {
  return error instanceof Error && (error.name === "AbortError" || error.name === "TimeoutError");
}

/** Verified chunks kept for neighbouring reads (4 MiB per layer at 1 MiB chunks). */
const RECENT_CHUNKS = 4;

export class VerifiedSource implements Source, StoredBytesChecker {
  readonly size: number;
  /** Chunks hashed and found good. */
  verifiedChunks = 0;
  /** Chunks that failed a check (a refetch that then matched counts once here). */
  mismatches = 0;
  readonly #inner: Source;
  readonly #table: ChunkTable;
  readonly #options: VerifiedSourceOptions;
  readonly #recent = new Map<number, Uint8Array>();
  readonly #pending = new Map<number, Promise<Uint8Array>>();

  constructor(inner: Source, table: ChunkTable, options: VerifiedSourceOptions) {
    if (inner.size !== table.sizeBytes) {
      throw new RangeError(
        `chunk table is of a ${table.sizeBytes}-byte layer, the blob has ${inner.size}`,
      );
    }
    this.#inner = inner;
    this.#table = table;
    this.#options = options;
    this.size = inner.size;
  }

  get chunkBytes(): number {
    return this.#table.chunkBytes;
  }

  /** The unit readRanges() checks in: a subchunk when the table has them, else a chunk. */
  get smallReadUnitBytes(): number {
    return this.#table.subchunkBytes ?? this.#table.chunkBytes;
  }

  /**
   * The bytes of each of `ranges`, checked. With the table's subchunk digests (scattered small
   * reads, a trace prefetch's pieces): widened to whole subchunks only, several runs in one
   * multi-range request when the blob can (subchunk_reads.ts); else each through read(), whole
   * chunks. Rejects when a mismatch was not mended by one refetch, like read().
   */
  async readRanges(
    ranges: readonly { offset: number; length: number }[],
    signal?: AbortSignal,
  ): Promise<Uint8Array[]> {
    const table = this.#table;
    if (!table.subchunks) {
      return await Promise.all(ranges.map((r) => this.read(r.offset, r.length, signal)));
    }
    return await readSubchunkChecked(this.#inner, table, ranges, {
      matches: (index, bytes) =>
        this.#options.hashOnEventLoop && nodeCryptoLoaded()
          ? table.subchunkMatches(index, bytes)
          : table.subchunkMatchesAsync(index, bytes),
      refetch: this.#refetch,
      mismatch: (index, final) => {
        const offset = index * table.subchunkBytes!;
        return this.#noteMismatch(
          new ChunkMismatchError(
            table.layerDigest,
            Math.floor(offset / table.chunkBytes),
            offset,
            this.#options.origin,
          ),
          final,
        );
      },
    }, signal);
  }

  /** A disk cache above checks bytes it reads back in these units (stored_check.ts). */
  get checkUnitBytes(): number {
    return this.smallReadUnitBytes;
  }

  /** Checks bytes a cache kept: all of subchunk (or chunk, without subchunks) `index`. */
  async checkStored(index: number, bytes: Uint8Array): Promise<boolean> {
    const table = this.#table;
    if (!table.subchunks) return await this.#matches(index, bytes);
    return this.#options.hashOnEventLoop && nodeCryptoLoaded()
      ? table.subchunkMatches(index, bytes)
      : await table.subchunkMatchesAsync(index, bytes);
  }

  /** The table every read is checked against. */
  get table(): ChunkTable {
    return this.#table;
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`read of ${length} bytes at ${offset} outside 0..${this.size}`);
    }
    if (length === 0) return new Uint8Array(0);
    const chunk = this.#table.chunkBytes;
    const first = Math.floor(offset / chunk);
    const end = Math.floor((offset + length - 1) / chunk) + 1;
    const chunks: Promise<Uint8Array>[] = [];
    for (let index = first; index < end;) {
      const recent = this.#recent.get(index);
      const pending = this.#pending.get(index);
      if (recent || pending) {
        const at = index;
        // Another reader's fetch aborted by its own signal is no failure of this read.
        chunks.push(
          recent ? Promise.resolve(recent) : pending!.catch((error) => {
            if (signal?.aborted || !isAbort(error)) throw error;
            return this.#fetchRun(at, at + 1, signal)[0];
          }),
        );
        index++;
        continue;
      }
      let stop = index + 1;
      while (stop < end && !this.#recent.has(stop) && !this.#pending.has(stop)) stop++;
      chunks.push(...this.#fetchRun(index, stop, signal));
      index = stop;
    }
    // Awaited in order: when one fails, the later ones are never awaited, and a rejection
    // nobody handles ends the process (a hostile registry's wrong bytes killed the server).
    for (const pending of chunks) pending.catch(() => {});
    const out = new Uint8Array(length);
    for (const [i, pending] of chunks.entries()) {
      const bytes = await pending;
      const chunkStart = (first + i) * chunk;
      const from = Math.max(offset, chunkStart);
      const to = Math.min(offset + length, chunkStart + bytes.length);
      out.set(bytes.subarray(from - chunkStart, to - chunkStart), from - offset);
    }
    return out;
  }

  /**
   * read() handing the bytes to `sink` as they are verified: the inner source streams the
   * widened run through one reused chunk buffer, so a disk-cache fill keeps no copy of the
   * run (only the partly used edge chunks are remembered for their neighbours).
   */
  async readTo(
    offset: number,
    length: number,
    sink: (bytes: Uint8Array, at: number) => void | Promise<void>,
    signal?: AbortSignal,
  ): Promise<void> {
    if (!Number.isSafeInteger(offset) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`read of ${length} bytes at ${offset} outside 0..${this.size}`);
    }
    if (length === 0) return;
    const chunk = this.#table.chunkBytes;
    const first = Math.floor(offset / chunk);
    const end = Math.floor((offset + length - 1) / chunk) + 1;
    let shared = !this.#inner.readTo;
    for (let i = first; i < end && !shared; i++) {
      shared = this.#recent.has(i) || this.#pending.has(i);
    }
    // Chunks another reader holds or fetches: the shared path, not a second fetch.
    if (shared) return await sink(await this.read(offset, length, signal), 0);
    const start = first * chunk;
    // The chunk being assembled. The body is read straight into it (into() below, a
    // PlacedBodySink): each read hands it back under a new ArrayBuffer (a BYOB transfer),
    // which replaces it here; fewer copies of every byte (fill micro-benchmark: CPU per MB
    // fetched, verified and stored 1.84 -> 1.74 ms median, 6 runs each).
    let buffer = takeChunkBuffer(chunk);
    let index = first;
    let filled = 0;
    const deliver = async () => {
      const chunkStart = index * chunk;
      let piece: Uint8Array = buffer.subarray(0, filled);
      fillTrace("v-chunk-arrived", index);
      const good = await this.#matches(index, piece);
      fillTrace("v-chunk-hashed", index);
      if (good) this.verifiedChunks++;
      else piece = await this.#refetchChunk(index, filled, signal);
      const from = Math.max(offset, chunkStart);
      const to = Math.min(offset + length, chunkStart + piece.length);
      if (from > chunkStart || to < chunkStart + piece.length) this.#remember(index, piece.slice());
      await sink(piece.subarray(from - chunkStart, to - chunkStart), from - offset);
      index++;
      filled = 0;
    };
    const runEnd = Math.min(this.size, end * chunk);
    let clean = false;
    let firstBytes = true;
    fillTrace("v-get", start, runEnd - start);
    const chunkEnd = () => Math.min(chunk, this.size - index * chunk);
    const take = async (bytes: Uint8Array) => {
      if (firstBytes) fillTrace("v-first-bytes", start, bytes.length);
      firstBytes = false;
      if (
        buffer.byteLength === 0 && bytes.buffer.byteLength === chunk &&
        bytes.byteOffset === filled && bytes.length <= chunkEnd() - filled
      ) {
        // Read into into()'s view (our buffer, detached by the transfer): already in place.
        buffer = new Uint8Array(bytes.buffer);
        filled += bytes.length;
        if (filled === chunkEnd()) await deliver();
        return;
      }
      if (buffer.byteLength === 0) throw new PlacedBufferLost();
      for (let used = 0; used < bytes.length;) {
        const want = chunkEnd();
        const n = Math.min(want - filled, bytes.length - used);
        buffer.set(bytes.subarray(used, used + n), filled);
        filled += n;
        used += n;
        if (filled === want) await deliver();
      }
    };
    const into = () => {
      // Detached and not handed back: a read into it failed (the body broke off) and took it.
      if (buffer.byteLength === 0) throw new PlacedBufferLost();
      return buffer.subarray(filled, chunkEnd());
    };
    try {
      // A restart below goes on under the first read's deadline and attempts (RetryHolder).
      const retry: RetryHolder = {};
      for (let placed = true;;) {
        // From the chunk being assembled: the chunks before it were handed on.
        const from = index * chunk;
        try {
          const sink = Object.assign(
            (bytes: Uint8Array) => take(bytes),
            placed ? { into, retry } : { retry },
          );
          await this.#inner.readTo!(from, runEnd - from, sink, signal);
          break;
        } catch (error) {
          if (!(error instanceof PlacedBufferLost) || !placed) throw error;
          // Its bytes went with the lost buffer: this chunk again, into a new one, and through
          // the scratch from now on, so that a body that keeps breaking off is resumed where it
          // broke off (readBlobRangeTo), not from the chunk's start each time.
          buffer = new Uint8Array(chunk);
          filled = 0;
          placed = false;
        }
      }
      clean = true;
    } finally {
      // A stream that failed may still hold a view of the buffer: it is not reused.
      if (clean) giveChunkBuffer(buffer);
    }
    if (index !== end) {
      throw new Error(
        `source returned ${(index - first) * chunk + filled} of ${runEnd - start} bytes`,
      );
    }
  }

  /** One inner read for chunks [first, stop), each verified (and refetched once) on its own. */
  #fetchRun(first: number, stop: number, signal?: AbortSignal): Promise<Uint8Array>[] {
    const chunk = this.#table.chunkBytes;
    const start = first * chunk;
    const length = Math.min(this.size, stop * chunk) - start;
    const whole = this.#inner.read(start, length, signal).then((bytes) => {
      if (bytes.length !== length) {
        throw new Error(`source returned ${bytes.length} bytes for a read of ${length}`);
      }
      return bytes;
    });
    const out: Promise<Uint8Array>[] = [];
    for (let index = first; index < stop; index++) {
      const from = (index - first) * chunk;
      const verified = whole.then(async (bytes) => {
        const piece = bytes.subarray(from, Math.min(length, from + chunk));
        if (await this.#matches(index, piece)) {
          this.verifiedChunks++;
          return piece;
        }
        return await this.#refetchChunk(index, piece.length, signal);
      }).then((piece) => {
        this.#remember(index, piece);
        return piece;
      }).finally(() => this.#pending.delete(index));
      // Other readers of this chunk wait for it; their own failure handling sees the rejection.
      verified.catch(() => {});
      this.#pending.set(index, verified);
      out.push(verified);
    }
    return out;
  }

  /**
   * Keeps a few verified chunks: the caches above read in smaller units than a table chunk
   * (disk cache 256 KiB), and a neighbour asked for next must not cost a second fetch.
   */
  #remember(index: number, piece: Uint8Array): void {
    this.#recent.delete(index);
    // A copy when the piece is a view of a larger run: the run must not stay alive for it.
    this.#recent.set(index, piece.byteLength < piece.buffer.byteLength ? piece.slice() : piece);
    while (this.#recent.size > RECENT_CHUNKS) {
      this.#recent.delete(this.#recent.keys().next().value!);
    }
  }

  /**
   * Where bytes that did not match are fetched again (the hook for another mirror). By default
   * the source's own reread (RegistryBlob: no wait for a request slot, which the refetching fill
   * may hold itself), else a read.
   */
  get #refetch(): (offset: number, length: number, signal?: AbortSignal) => Promise<Uint8Array> {
    if (this.#options.refetch) return this.#options.refetch;
    const inner = this.#inner as Partial<Pick<RegistryBlob, "reread">>;
    return inner.reread
      ? (offset, length, signal) => inner.reread!(offset, length, "any host", signal)
      : this.#inner.read.bind(this.#inner);
  }

  /**
   * Counts and reports a mismatch: the first (the bytes are fetched again), or the `final` one
   * after that refetch (the read fails with the error returned).
   */
  #noteMismatch(error: ChunkMismatchError, final: boolean): ChunkMismatchError {
    const report = this.#options.onMismatch ??
      ((message: string) => console.error(`erofs-oci: ${message}`));
    if (final) {
      report(`${error.message} again; the read fails (EIO)`);
    } else {
      this.mismatches++;
      noteChunkMismatch(this.#table.layerDigest);
      report(`${error.message}; fetching it again`);
    }
    return error;
  }

  async #refetchChunk(index: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    this.#noteMismatch(this.#mismatch(index), false);
    const again = await this.#refetch(index * this.#table.chunkBytes, length, signal);
    if (again.length === length && await this.#matches(index, again)) {
      this.verifiedChunks++;
      return again;
    }
    throw this.#noteMismatch(this.#mismatch(index), true);
  }

  #matches(index: number, bytes: Uint8Array): boolean | Promise<boolean> {
    return this.#options.hashOnEventLoop && nodeCryptoLoaded()
      ? this.#table.matches(index, bytes)
      : this.#table.matchesAsync(index, bytes);
  }

  #mismatch(index: number): ChunkMismatchError {
    return new ChunkMismatchError(
      this.#table.layerDigest,
      index,
      index * this.#table.chunkBytes,
      this.#options.origin,
    );
  }

  close(): void | Promise<void> {
    return this.#inner.close?.();
  }
}

/**
 * A read into readTo's chunk buffer failed and took the buffer with it (a BYOB read that
 * rejects keeps it): readTo starts that chunk again (once per call: then through the scratch).
 */
class PlacedBufferLost extends Error {
  constructor() {
    super("a body read into the chunk buffer broke off and took the buffer");
  }
}

/** Stream buffers of one table chunk, reused across readTo calls (each run needs one). */
const chunkBuffers: Uint8Array[] = [];
const MAX_POOLED_CHUNK_BUFFERS = 4;

function takeChunkBuffer(bytes: number): Uint8Array {
  const index = chunkBuffers.findIndex((buffer) => buffer.length === bytes);
  return index >= 0 ? chunkBuffers.splice(index, 1)[0] : new Uint8Array(bytes);
}

function giveChunkBuffer(buffer: Uint8Array): void {
  if (chunkBuffers.length < MAX_POOLED_CHUNK_BUFFERS) chunkBuffers.push(buffer);
}
