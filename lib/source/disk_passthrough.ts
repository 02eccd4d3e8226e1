/**
 * What the chunk cache does in front of a disk-cached blob: nothing but readahead. The bytes
 * are read straight from the cache file into the caller's buffer (the page cache keeps hot
 * ones), so the heap holds only reads in flight; sequential readers still get growing
 * windows fetched ahead of them, as background fills that return no bytes.
 */
import type { Source } from "./source.ts";
import type { DiskCacheStats } from "./disk_cache_stats.ts";

export interface DiskBackedSource extends Source {
  readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
  diskStats(): DiskCacheStats;
  /** Starts fetching the missing chunks of [offset, offset + length) in the background. */
  fillAhead(offset: number, length: number): void;
}

export function isDiskBacked(source: Source): source is DiskBackedSource {
  const candidate = source as Partial<DiskBackedSource>;
  return typeof candidate.diskStats === "function" && typeof candidate.fillAhead === "function";
}

interface Stream {
  nextOffset: number;
  /** Bytes up to here are fetched or being fetched for this stream. */
  aheadEnd: number;
  windowBytes: number;
}

/** Sequential streams followed at once (several files read in parallel, nbdcopy's lanes). */
const MAX_STREAMS = 8;

export class DiskPassthrough {
  readonly #inner: DiskBackedSource;
  readonly #chunkBytes: number;
  readonly #maxWindowBytes: number;
  readonly #streams: Stream[] = [];
  #covered?: (offset: number, length: number) => boolean;

  /** `maxWindowBytes` 0: no readahead, reads only. */
  constructor(inner: DiskBackedSource, chunkBytes: number, maxWindowBytes: number) {
    this.#inner = inner;
    this.#chunkBytes = chunkBytes;
    this.#maxWindowBytes = maxWindowBytes > 0 ? Math.max(chunkBytes, maxWindowBytes) : 0;
  }

  /** Reads `covered` says true of are not followed (see CachedSource.skipReadaheadWhere). */
  skipReadaheadWhere(covered: (offset: number, length: number) => boolean): void {
    this.#covered = covered;
  }

  async readInto(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void> {
    this.note(offset, dest.length);
    await this.#inner.readInto(offset, dest, signal);
  }

  /** A read served elsewhere (direct reads): followed for readahead like one through here. */
  note(offset: number, length: number): void {
    if (this.#maxWindowBytes > 0 && !this.#covered?.(offset, length)) this.#follow(offset, length);
  }

  /** Continues the stream this read belongs to and fetches its next window when due. */
  #follow(offset: number, length: number): void {
    const end = offset + length;
    const near = 2 * this.#chunkBytes;
    let index = this.#streams.findIndex((s) =>
      offset >= s.nextOffset - near && offset <= s.nextOffset + this.#chunkBytes
    );
    if (index < 0) {
      if (this.#streams.length >= MAX_STREAMS) this.#streams.shift();
      this.#streams.push({ nextOffset: end, aheadEnd: end, windowBytes: this.#chunkBytes });
      return;
    }
    const stream = this.#streams.splice(index, 1)[0];
    this.#streams.push(stream);
    index = this.#streams.length - 1;
    stream.nextOffset = Math.max(stream.nextOffset, end);
    if (end + stream.windowBytes / 2 < stream.aheadEnd) return;
    const from = Math.max(stream.aheadEnd, end);
    const length_ = Math.min(stream.windowBytes, this.#inner.size - from);
    if (length_ <= 0) return;
    this.#inner.fillAhead(from, length_);
    stream.aheadEnd = from + length_;
    stream.windowBytes = Math.min(stream.windowBytes * 2, this.#maxWindowBytes);
  }
}
