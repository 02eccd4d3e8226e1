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

/**
 * A PrefetchTarget that reads each piece's pages from `source` and pins them in `sink`, or,
 * when the pin budget has no room left for the piece, reads it through `fallback` (the cache).
 */
export function pinningPrefetchTarget(
  source: { read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> },
  sink: PinSink,
  fallback: PrefetchTarget,
): PrefetchTarget {
  return {
    async read(offset: number, length: number, signal?: AbortSignal): Promise<void> {
      const start = Math.floor(offset / PAGE_BYTES) * PAGE_BYTES;
      const end = Math.min(sink.size, Math.ceil((offset + length) / PAGE_BYTES) * PAGE_BYTES);
      // Pages count whole (a partial last page too, as pin() counts it).
      const pageBytes = Math.ceil((end - start) / PAGE_BYTES) * PAGE_BYTES;
      if (sink.pinnedBytes + pageBytes > sink.pinBudgetBytes) {
        await fallback.read(offset, length, signal);
        return;
      }
      const bytes = await source.read(start, end - start, signal);
      sink.countPrefetch(bytes.length);
      // A copy: a view would keep the source's buffer alive (or a pooled one could change).
      sink.pin(start, bytes.slice(), { data: true });
    },
  };
}

/**
 * What `source` fetches and checks whole (a verified layer's chunk), if it says: the trace
 * prefetch reads the traced pieces within one such unit together (TracePrefetcher groupBytes).
 */
export function fetchUnitBytes(source: object): number | undefined {
  const unit = (source as { chunkBytes?: unknown }).chunkBytes;
  return typeof unit === "number" && unit > 0 ? unit : undefined;
}
