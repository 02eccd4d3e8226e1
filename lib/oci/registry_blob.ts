import type { Source } from "../source/source.ts";
import type { LayerDescriptor } from "./layers.ts";
import { type BodySink, intoOf, retryHolderOf } from "./blob_range.ts";
import type { BlobReadFrom } from "./blob_range_read.ts";
import { type ByteRange, MAX_RANGES_PER_REQUEST } from "./blob_ranges.ts";
import { noteBlobFetched } from "../source/fetch_metrics.ts";
import { blobRequestSlots } from "./request_slots.ts";
import { warn } from "../log.ts";
import { OciError } from "../errors.ts";
import { isNetworkError } from "./retry.ts";

/**
 * How long a failed read's range is answered with its error at once. The kernel asks again
 * right after an EIO (the readahead, then the page alone, through each page cache on the way:
 * three requests for one `cat` of a FUSE-served layer), and each sat through the whole retry
 * chain again: a registry that went silent held one read ~5 minutes instead of one chain.
 */
const FAILED_RANGE_MEMORY_MS = 5_000;
const MAX_FAILED_RANGES = 32;

/** What RegistryBlob needs from a client: ranged reads (a registry, later an OCI layout). */
export interface BlobRangeReader {
  readBlobRange(
    repository: string,
    digest: string,
    offset: number,
    length: number,
    signal?: AbortSignal,
    /** The descriptor's size: a reader that learns the real size refuses a mismatch. */
    expectedSizeBytes?: number,
    from?: BlobReadFrom,
  ): Promise<Uint8Array>;
  /** The same read handing bytes to `sink` as they arrive (see readBlobRangeTo). */
  readBlobRangeTo?(
    repository: string,
    digest: string,
    offset: number,
    length: number,
    sink: BodySink,
    signal?: AbortSignal,
    expectedSizeBytes?: number,
  ): Promise<void>;
  /** Several ranges in one request (see blob_ranges.ts); undefined: not answered that way. */
  readBlobRanges?(
    repository: string,
    digest: string,
    ranges: readonly ByteRange[],
    expectedSizeBytes?: number,
    signal?: AbortSignal,
  ): Promise<(Uint8Array | undefined)[] | undefined>;
  close?(): void | Promise<void>;
}

/**
 * One registry blob as a byte Source: every read is one ranged GET (with the client's retries
 * and resume), sized by the layer descriptor, which every reply's real size is checked against.
 * Wrap it in CachedSource for chunking/readahead.
 *
 * @example
 * const blob = new RegistryBlob(client, "app", image.layers[0]);
 * const superblock = await blob.read(1024, 128);
 */
export class RegistryBlob implements Source {
  readonly size: number;
  readonly repository: string;
  readonly digest: string;
  /** Reads issued (each one ranged GET unless retried). */
  requests = 0;
  /** Bytes returned to callers. */
  bytesFetched = 0;
  /** Also noted per digest for the process (fetch_metrics.ts: what `list` shows as fetched). */
  #counted(requests: number, bytes: number): void {
    this.requests += requests;
    this.bytesFetched += bytes;
    noteBlobFetched(this.digest, requests, bytes);
  }
  readonly #client: BlobRangeReader;
  readonly #failed: { start: number; end: number; error: Error; atMs: number }[] = [];

  constructor(client: BlobRangeReader, repository: string, layer: LayerDescriptor) {
    this.#client = client;
    this.repository = repository;
    this.digest = layer.digest;
    this.size = layer.sizeBytes;
  }

  /** Reads exactly `length` bytes at `offset`; rejects reads past the end of the blob. */
  read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    return this.#read(offset, length, signal, "any host");
  }

  /**
   * read() from the registry itself, past its mirrors and any remembered redirect target: bytes
   * one of those sent did not match the layer's chunk table.
   */
  readFromRegistry(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    return this.#read(offset, length, signal, "registry");
  }

  /**
   * A read again of bytes that a read under way got wrong (they failed the chunk table), made
   * without waiting for one of blobRequestSlots: its caller may be holding one (a fill streaming
   * into a verifier refetches from inside its GET), and 16 of them, each waiting for a 17th slot
   * only another could free, stopped every GET of the process for good. One per mismatch, so
   * the bound on GETs stays: 16 plus the refetches of their bad chunks.
   */
  reread(offset: number, length: number, from: BlobReadFrom, signal?: AbortSignal) {
    return this.#read(offset, length, signal, from, false);
  }

  async #read(
    offset: number,
    length: number,
    signal: AbortSignal | undefined,
    from: BlobReadFrom,
    slotted = true,
  ): Promise<Uint8Array> {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(
        `read of ${length} bytes at ${offset} is outside blob ${this.digest} (${this.size} bytes)`,
      );
    }
    if (length === 0) return new Uint8Array(0);
    this.#refuseRecentlyFailed(offset, length);
    this.#counted(1, 0);
    const request = () =>
      this.#client.readBlobRange(
        this.repository,
        this.digest,
        offset,
        length,
        signal,
        this.size,
        from,
      );
    const bytes = await (slotted ? blobRequestSlots.run(request, signal) : request())
      .catch((error) => this.#noteFailed(offset, length, error, signal));
    this.#counted(0, bytes.byteLength);
    return bytes;
  }

  /** Throws the error of a read of an overlapping range that failed moments ago, if any. */
  #refuseRecentlyFailed(offset: number, length: number): void {
    const now = Date.now();
    while (this.#failed.length && now - this.#failed[0].atMs > FAILED_RANGE_MEMORY_MS) {
      this.#failed.shift();
    }
    const failed = this.#failed.find((f) => f.start < offset + length && offset < f.end);
    if (!failed) return;
    throw new OciError(
      `${failed.error.message} (a read of these bytes failed ${
        ((now - failed.atMs) / 1000).toFixed(1)
      } s ago; asked again after ${FAILED_RANGE_MEMORY_MS / 1000} s)`,
      undefined,
      { cause: failed.error },
    );
  }

  #noteFailed(offset: number, length: number, error: unknown, signal?: AbortSignal): never {
    // What the registry did (no reply, a broken body, an error status): not a caller's abort or
    // a sink that cannot take more (it starts again itself).
    if (
      !signal?.aborted && error instanceof Error &&
      (error instanceof OciError || isNetworkError(error))
    ) {
      if (this.#failed.length >= MAX_FAILED_RANGES) this.#failed.shift();
      this.#failed.push({ start: offset, end: offset + length, error, atMs: Date.now() });
    }
    throw error;
  }

  /**
   * Reads exactly `length` bytes at `offset` with one ranged GET, handing them to `sink` in
   * order as they arrive (each view valid until the sink's promise settles): no buffer of the
   * whole range is made, so a caller storing them elsewhere leaves nothing for the GC.
   */
  async readTo(
    offset: number,
    length: number,
    sink: BodySink,
    signal?: AbortSignal,
  ): Promise<void> {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(
        `read of ${length} bytes at ${offset} is outside blob ${this.digest} (${this.size} bytes)`,
      );
    }
    if (length === 0) return;
    if (!this.#client.readBlobRangeTo) {
      return await sink(await this.read(offset, length, signal), 0);
    }
    this.#refuseRecentlyFailed(offset, length);
    this.#counted(1, 0);
    let arrived = 0;
    const counted: BodySink = (bytes, at) => {
      arrived = Math.max(arrived, at + bytes.length);
      return sink(bytes, at);
    };
    // A sink that places the bytes itself (PlacedBodySink) keeps doing so through the count,
    // and one that carries a retry holder keeps it.
    const into = intoOf(sink);
    const retry = retryHolderOf(sink);
    const readTo = this.#client.readBlobRangeTo;
    await blobRequestSlots.run(
      () =>
        readTo.call(
          this.#client,
          this.repository,
          this.digest,
          offset,
          length,
          Object.assign(counted, into ? { into } : {}, retry ? { retry } : {}),
          signal,
          this.size,
        ),
      signal,
    ).catch((error) => this.#noteFailed(offset, length, error, signal));
    this.#counted(0, arrived);
  }

  /**
   * All of blob `digest` (`sizeBytes`, declared by a chunk table) in this blob's repository: a
   * metadata pack beside the layer, in one GET. Unchecked bytes, like read()'s.
   */
  async readPack(digest: string, sizeBytes: number, signal?: AbortSignal): Promise<Uint8Array> {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
      throw new RangeError(`pack ${digest}: bad size ${sizeBytes}`);
    }
    this.#counted(1, 0);
    const bytes = await blobRequestSlots.run(
      () => this.#client.readBlobRange(this.repository, digest, 0, sizeBytes, signal, sizeBytes),
      signal,
    );
    this.#counted(0, bytes.byteLength);
    return bytes;
  }

  /**
   * The bytes of each of `ranges` (ascending, apart) through multi-range GETs, up to
   * MAX_RANGES_PER_REQUEST each, in parallel; undefined where the registry did not send a range
   * that way (the caller reads those one by one). Unchecked bytes, like read()'s.
   */
  async readRanges(
    ranges: readonly ByteRange[],
    signal?: AbortSignal,
  ): Promise<(Uint8Array | undefined)[]> {
    const out: (Uint8Array | undefined)[] = new Array(ranges.length).fill(undefined);
    const client = this.#client;
    if (!client.readBlobRanges) return out;
    for (const r of ranges) {
      if (r.offset < 0 || r.length <= 0 || r.offset + r.length > this.size) {
        throw new RangeError(`range ${r.offset}+${r.length} is outside blob ${this.digest}`);
      }
    }
    const batches: Promise<void>[] = [];
    for (let from = 0; from < ranges.length; from += MAX_RANGES_PER_REQUEST) {
      const batch = ranges.slice(from, from + MAX_RANGES_PER_REQUEST);
      this.#counted(1, 0);
      const readRanges = client.readBlobRanges;
      batches.push(
        blobRequestSlots.run(
          () => readRanges.call(client, this.repository, this.digest, batch, this.size, signal),
          signal,
        ).then(
          (got) =>
            got?.forEach((bytes, i) => {
              out[from + i] = bytes;
              this.#counted(0, bytes?.length ?? 0);
            }),
          () => {}, // the caller reads what is missing one range at a time
        ),
      );
    }
    await Promise.all(batches);
    return out;
  }

  /** Closes the client (a RegistryBlob owns the client it was given). */
  close(): void | Promise<void> {
    return this.#client.close?.();
  }
}

/**
 * Where bytes that failed a layer's chunk table are fetched again: the registry itself, so a
 * mirror or the object store a redirect led to (remembered for a while) that sent them is not
 * asked again; a registry that cannot be reached leaves the usual hosts (a flip on the way from
 * a mirror is then mended by asking it once more).
 */
export function refetchFromRegistry(
  blob: RegistryBlob,
): (offset: number, length: number, signal?: AbortSignal) => Promise<Uint8Array> {
  return async (offset, length, signal) => {
    try {
      return await blob.reread(offset, length, "registry", signal);
    } catch (error) {
      signal?.throwIfAborted();
      warn(
        `layer ${blob.digest}: the registry itself did not answer (${
          (error as Error).message
        }); asking the configured hosts again`,
      );
      return await blob.reread(offset, length, "any host", signal);
    }
  };
}
