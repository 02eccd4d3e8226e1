/** The counters a mount server reports over its control socket (the `stats` reply). */
import type { LatencyHistogram } from "../source/fetch_metrics.ts";

/** Counters of one layer's cache, as `list` shows them. */
export interface LayerStats {
  bytesRequested: number;
  bytesFetched: number;
  fetches: number;
  hits: number;
  misses: number;
  /** The host's disk cache for this layer, when it is on. */
  disk?: {
    fetchedBytes: number;
    diskHitBytes: number;
    fetches?: number;
    /** --fetch-all found the complete layer not matching its digest: its reads fail. */
    digestMismatch?: boolean;
  };
  /** Blob digest (registry layers, OCI layout blobs). */
  digest?: string;
  /** Registry GET latency of this layer's blob (lib/source/fetch_metrics.ts). */
  getLatency?: LatencyHistogram;
  /** READs a reader thread answered by itself (disk cache, pinned pages). */
  directReads?: number;
  /** Reads of this layer that failed (EIO to the reader). */
  readErrors?: number;
  /** Chunks of this layer that failed their chunk-digest table. */
  verifyFailures?: number;
  /** The registry reads the server made of this layer's blob (fetch_metrics.ts BlobFetched). */
  wire?: { requests: number; bytes: number };
}

export interface ServerStats {
  pid: number;
  startedAt: string;
  layers: LayerStats[];
  /** The server's memory now and at its peak (VmRSS, VmHWM), when /proc says. */
  memory?: ServerMemory;
}

export interface ServerMemory {
  residentBytes: number;
  peakResidentBytes: number;
}
