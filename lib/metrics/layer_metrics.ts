/**
 * What a mount server adds to each layer's cache counters in its `stats` reply: the layer's
 * digest, its registry GET latency histogram and what it fetched (fetch_metrics.ts).
 */
import type { LayerSpec } from "../state/mount_spec.ts";
import {
  type BlobFetched,
  blobFetched,
  blobGetLatency,
  chunkMismatches,
  type LatencyHistogram,
} from "../source/fetch_metrics.ts";

export interface LayerFetchMetrics {
  digest?: string;
  /** Present for registry layers. */
  getLatency?: LatencyHistogram;
  /** Chunks that failed their chunk-digest table (registry layers). */
  verifyFailures?: number;
  /** The registry reads this process made of the layer's blob, and their bytes. */
  wire?: BlobFetched;
}

export function layerFetchMetrics(layer: LayerSpec | undefined): LayerFetchMetrics {
  if (!layer) return {};
  if (layer.kind === "local") return layer.digest ? { digest: layer.digest } : {};
  return {
    digest: layer.digest,
    getLatency: blobGetLatency(layer.digest),
    verifyFailures: chunkMismatches(layer.digest),
    wire: blobFetched(layer.digest) ?? { requests: 0, bytes: 0 },
  };
}
