/** A server's per-layer stats as `list --json` and the metrics show them. */
import type { LayerStats, ServerMemory } from "./layer_stats.ts";
import type { LatencyHistogram } from "../source/fetch_metrics.ts";
import type { PrefetchProgress } from "../trace/prefetch.ts";

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
  /** READs the export's reader thread answered by itself from the disk cache or pinned pages. */
  directReads?: number;
  /** Metadata prefetch so far: reads and bytes. */
  prefetchFetches?: number;
  prefetchBytes?: number;
  getLatency?: LatencyHistogram;
  /** Reads that failed (the reader got EIO). */
  readErrors?: number;
  /** Chunks refused by the layer's chunk-digest table (absent: not a registry layer). */
  verifyFailures?: number;
  /** `--fetch-all` fetched the whole layer and it did not hash to its digest: reads fail. */
  digestMismatch?: true;
}

/** One mount as `list --json` and the metrics show it. */
export interface ListedMount {
  target: string;
  image: string;
  manifestDigest?: string;
  backend: string;
  devices: string[];
  /** Mount options at DIR (ro/rw, nosuid/suid, nodev/dev); absent for older mounts. */
  options?: string[];
  /** A writable mount's `--upper` and `--work` (`list`; as mountinfo shows them). */
  upper?: string;
  work?: string;
  /**
   * `list`: false when the mount is gone (unmounted by another tool; `umount DIR` clears the
   * record and stops the server). Absent where nobody looked (a server's own /metrics).
   */
  mounted?: boolean;
  serverPid: number;
  /** serving; dead = server gone, readers wait for `reattach`; unresponsive = no answer. */
  state: "serving" | "dead" | "unresponsive";
  reattachedAt?: string;
  /**
   * FUSE: whether its keeper still holds the connection, so `reattach` can take over after a
   * server crash (false: it cannot; umount and mount again to get that back).
   */
  crashRecovery?: boolean;
  /** Why a FUSE mount cannot be reattached: its keeper is gone, or its record is damaged. */
  crashRecoveryProblem?: "no keeper" | "record damaged";
  /** Bytes fetched from the registry (the disk cache's fetches when it is on). */
  bytesFetched?: number;
  /** Bytes the disk cache answered without fetching (undefined: no disk cache). */
  diskHitBytes?: number;
  bytesRequested?: number;
  /** Reads of all layers that failed (EIO to the reader). */
  readErrors?: number;
  cacheHitRate?: number;
  httpFetches?: number;
  /** The server's resident memory now and at its peak (serving mounts only). */
  serverMemory?: ServerMemory;
  /** Per-layer counters (serving mounts only). */
  layers?: (ListedLayer & { tracePrefetch?: PrefetchProgress })[];
  /** Prefetch of the image's trace, all layers together (absent: no trace prefetched). */
  tracePrefetch?: { bytesTotal: number; bytesDone: number; state: PrefetchProgress["state"] };
}

export function listedLayers(
  layers: (LayerStats & { prefetchFetches?: number; prefetchBytes?: number })[],
): ListedLayer[] {
  return layers.map((layer, index) => ({
    index,
    digest: layer.digest,
    bytesRequested: layer.bytesRequested,
    // A registry layer's own reads (the metadata list's too, which pass the caches, and what
    // `mount` fetched for its server): the caches' counts miss those and what a check widens a
    // read to. Else, under a disk cache, its fetches (the memory cache's are disk reads).
    bytesFetched: layer.wire?.bytes ?? layer.disk?.fetchedBytes ?? layer.bytesFetched,
    fetches: layer.wire?.requests ?? layer.disk?.fetches ?? layer.fetches,
    memoryHits: layer.hits,
    memoryMisses: layer.misses,
    diskHitBytes: layer.disk?.diskHitBytes,
    directReads: layer.directReads,
    prefetchFetches: layer.prefetchFetches,
    prefetchBytes: layer.prefetchBytes,
    getLatency: layer.getLatency,
    readErrors: layer.readErrors,
    verifyFailures: layer.verifyFailures,
    ...(layer.disk?.digestMismatch ? { digestMismatch: true as const } : {}),
  }));
}
