/**
 * Where a trace prefetch puts what it reads when a layer has only a memory cache: the traced
 * pages are read from the layer's source as they are (no whole cache chunks) and pinned in
 * front of the cache, so nothing the application is about to read can be evicted first.
 *
 * Why not through the chunk cache: a traced range of a few KiB costs a whole 2 MiB chunk there.
 * A python start's trace (134 ranges, 2.8 MB, 89 coalesced reads) touched ~28 chunks (56 MB) of
 * the benchmark image; a 32 MiB memory cache held about half of them, so the application
 * fetched the evicted half again while it ran (docs/benchmarks.md, VM at +20 ms). Pinned, the
 * same trace costs its own bytes (page-aligned) and stays until the mount ends, within the pin
 * budget (half the cache, shared with the metadata pins; the pins count against the cache's
 * bound, so the mount stays within --cache-size). Pieces that do not fit go through the cache.
 * A disk-cached layer keeps reading through its cache: there the bytes persist and are shared.
 */
import { PIN_PAGE_BYTES as PAGE_BYTES } from "../source/prefetched.ts";
import { alignedRuns, type ByteSpan } from "../source/aligned_runs.ts";
import type { PrefetchTarget } from "./prefetch.ts";

/** What pinningPrefetchTarget pins into (PrefetchedSource has all of these). */
export interface PinSink {
  readonly size: number;
  readonly pinBudgetBytes: number;
  readonly pinnedBytes: number;
  /**
   * `offset` page-aligned; `bytes` whole pages except at the end of the source; `data`: file
   * data, not metadata (PrefetchedSource.pin).
   */
  pin(offset: number, bytes: Uint8Array, options: { data: boolean }): void;
  /** Counts a read made around the cache (stats: prefetchFetches, prefetchBytes). */
  countPrefetch(bytes: number): void;
}

/** What pinningPrefetchTarget reads the traced pages from (a RegistryBlob has both). */
export interface PinnedPiecesSource {
  read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array>;
  /**
   * Several ranges (ascending, apart) in few requests; undefined where a range did not come
   * that way (read alone then). RegistryBlob.readRanges: multi-range GETs; VerifiedSource's:
   * checked in subchunks (a few pages cost 64 KiB each, not a 1 MiB chunk).
   */
  readRanges?(
    ranges: readonly ByteSpan[],
    signal?: AbortSignal,
  ): Promise<(Uint8Array | undefined)[]>;
}

/**
 * A PrefetchTarget that reads each piece's pages from `source` and pins them in `sink`, or,
 * when the pin budget has no room left for the piece, reads it through `fallback` (the cache).
 * Several pieces (readMany) come in one multi-range request when the source can (readRanges).
 */
export function pinningPrefetchTarget(
  source: PinnedPiecesSource,
  sink: PinSink,
  fallback: PrefetchTarget,
): PrefetchTarget {
  const pin = (offset: number, bytes: Uint8Array) =>
    // A copy: a view would keep the source's buffer alive (or a pooled one could change).
    sink.pin(offset, bytes.slice(), { data: true });
  const target: PrefetchTarget = {
    async read(offset: number, length: number, signal?: AbortSignal): Promise<void> {
      const [pages] = alignedRuns([{ offset, length }], PAGE_BYTES, sink.size);
      if (sink.pinnedBytes + pinnedSize(pages) > sink.pinBudgetBytes) {
        await fallback.read(offset, length, signal);
        return;
      }
      const bytes = await source.read(pages.offset, pages.length, signal);
      sink.countPrefetch(bytes.length);
      pin(pages.offset, bytes);
    },
  };
  // Without multi-range requests pieces are read one by one, PREFETCH_PARALLEL at a time.
  if (!source.readRanges) return target;
  const readRanges = source.readRanges.bind(source);
  const many: PrefetchTarget = {
    // One piece too: a verified source checks it in subchunks there.
    read: (offset, length, signal) => many.readMany!([{ offset, length }], signal),
    async readMany(ranges: readonly ByteSpan[], signal?: AbortSignal): Promise<void> {
      // What fits the pin budget is fetched together; the rest goes through the cache.
      const fits: ByteSpan[] = [];
      const spill: ByteSpan[] = [];
      let reserved = sink.pinnedBytes;
      for (const pages of alignedRuns(ranges, PAGE_BYTES, sink.size)) {
        const fit = reserved + pinnedSize(pages) <= sink.pinBudgetBytes;
        if (fit) reserved += pinnedSize(pages);
        (fit ? fits : spill).push(pages);
      }
      const fetchAndPin = async () => {
        const together = fits.length ? await readRanges(fits, signal) : [];
        const togetherBytes = together.reduce((sum, bytes) => sum + (bytes?.length ?? 0), 0);
        if (togetherBytes) sink.countPrefetch(togetherBytes);
        await Promise.all(fits.map(async (pages, i) => {
          const came = together[i];
          if (came) return pin(pages.offset, came);
          const bytes = await source.read(pages.offset, pages.length, signal);
          sink.countPrefetch(bytes.length);
          pin(pages.offset, bytes);
        }));
      };
      await Promise.all([
        fetchAndPin(),
        ...spill.map((pages) => fallback.read(pages.offset, pages.length, signal)),
      ]);
    },
  };
  return many;
}

/** Pages count whole (a partial last page too, as pin() counts it). */
function pinnedSize(pages: ByteSpan): number {
  return Math.ceil(pages.length / PAGE_BYTES) * PAGE_BYTES;
}

/**
 * What `source` fetches and checks whole for a small read (a verified layer's subchunk, else its
 * chunk), if it says: the trace prefetch reads the traced pieces within one such unit together
 * (TracePrefetcher groupBytes).
 */
export function fetchUnitBytes(source: object): number | undefined {
  const unit = (source as { smallReadUnitBytes?: unknown }).smallReadUnitBytes;
  return typeof unit === "number" && unit > 0 ? unit : undefined;
}
