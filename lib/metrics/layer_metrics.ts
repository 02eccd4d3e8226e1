/**
 * What a mount server adds to each layer's cache counters in its `stats` reply: the layer's
 * digest and its registry GET latency histogram (fetch_metrics.ts).
 */
import type { LayerSpec } from "../state/runtime.ts";
import { blobGetLatency, chunkMismatches, type LatencyHistogram } from "../source/fetch_metrics.ts";

export interface LayerFetchMetrics {
  digest?: string;
  /** Present for registry layers. */
  getLatency?: LatencyHistogram;
  /** Chunks that failed their chunk-digest table (registry layers). */
  verifyFailures?: number;
}

export function layerFetchMetrics(layer: LayerSpec | undefined): LayerFetchMetrics {
  if (!layer) return {};
  if (layer.kind === "local") return layer.digest ? { digest: layer.digest } : {};
  return {
    digest: layer.digest,
    getLatency: blobGetLatency(layer.digest),
    verifyFailures: chunkMismatches(layer.digest),
  };
}
