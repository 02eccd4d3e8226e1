/** A server's per-layer stats as `list --json` and the metrics show them. */
import type { LayerStats } from "../daemon/control.ts";
import type { LatencyHistogram } from "../source/fetch_metrics.ts";

/** Per-layer counters of a serving mount (`list --json`, `erofs-oci metrics`). */
export interface ListedLayer {
  index: number;
  digest?: string;
  /** Bytes the kernel (or overlay) asked for. */
  bytesRequested: number;
  /** Bytes fetched from the source (the registry; under a disk cache, what it fetched). */
  bytesFetched: number;
  /** Reads of the source (ranged GETs for a registry layer). */
  fetches: number;
  /** Chunk lookups answered from memory, and those that waited for a fetch. */
  memoryHits: number;
  memoryMisses: number;
  /** Bytes answered by the host's disk cache (absent without one). */
  diskHitBytes?: number;
  /** Metadata prefetch so far: reads and bytes. */
  prefetchFetches?: number;
  prefetchBytes?: number;
  getLatency?: LatencyHistogram;
  /** Chunks refused by the layer's chunk-digest table (absent: not a registry layer). */
  verifyFailures?: number;
  /** `--fetch-all` fetched the whole layer and it did not hash to its digest: reads fail. */
  digestMismatch?: true;
}

export function listedLayers(
  layers: (LayerStats & { prefetchFetches?: number; prefetchBytes?: number })[],
): ListedLayer[] {
  return layers.map((layer, index) => ({
    index,
    digest: layer.digest,
    bytesRequested: layer.bytesRequested,
    // Under a disk cache the memory cache's "fetches" are mostly disk reads.
    bytesFetched: layer.disk ? layer.disk.fetchedBytes : layer.bytesFetched,
    fetches: layer.disk?.fetches ?? layer.fetches,
    memoryHits: layer.hits,
    memoryMisses: layer.misses,
    diskHitBytes: layer.disk?.diskHitBytes,
    prefetchFetches: layer.prefetchFetches,
    prefetchBytes: layer.prefetchBytes,
    getLatency: layer.getLatency,
    verifyFailures: layer.verifyFailures,
    ...(layer.disk?.digestMismatch ? { digestMismatch: true as const } : {}),
  }));
}
