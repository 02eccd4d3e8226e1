/**
 * Registry GET latency per blob, kept for the life of the process (a mount server serves a
 * handful of layers, so a map by digest stays small). Recorded where ranged reads complete
 * (blob_range_read.ts) and reported by the server's `stats` reply, so `list --json` and
 * `erofs-oci metrics` show how the registry (or mirror) is answering each layer.
 */

/** Upper bounds in seconds (Prometheus' own default buckets, plus 30 s for slow links). */
export const GET_LATENCY_BUCKETS_S = [
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
] as const;

/** Cumulative histogram as Prometheus exposes it: counts[i] = observations ≤ bounds[i]. */
export interface LatencyHistogram {
  boundsSeconds: number[];
  /** Cumulative counts per bound; the `+Inf` bucket is `count`. */
  counts: number[];
  count: number;
  sumSeconds: number;
}

/** Bound on distinct blobs tracked: beyond it new ones share one overflow entry. */
const MAX_TRACKED_BLOBS = 4096;
const OVERFLOW_KEY = "other";

const histograms = new Map<string, { counts: number[]; count: number; sumSeconds: number }>();

/** Records one completed ranged read of `digest` that took `seconds`. */
export function observeBlobGet(digest: string, seconds: number): void {
  const key = histograms.has(digest) || histograms.size < MAX_TRACKED_BLOBS ? digest : OVERFLOW_KEY;
  let h = histograms.get(key);
  if (!h) {
    h = { counts: GET_LATENCY_BUCKETS_S.map(() => 0), count: 0, sumSeconds: 0 };
    histograms.set(key, h);
  }
  for (let i = 0; i < GET_LATENCY_BUCKETS_S.length; i++) {
    if (seconds <= GET_LATENCY_BUCKETS_S[i]) h.counts[i]++;
  }
  h.count++;
  h.sumSeconds += seconds;
}

/** The histogram of `digest` so far (all zero when it was never fetched). */
export function blobGetLatency(digest: string): LatencyHistogram {
  const h = histograms.get(digest);
  return {
    boundsSeconds: [...GET_LATENCY_BUCKETS_S],
    counts: h ? [...h.counts] : GET_LATENCY_BUCKETS_S.map(() => 0),
    count: h?.count ?? 0,
    sumSeconds: h?.sumSeconds ?? 0,
  };
}

/** All blobs together (a `serve` process serves exactly one). */
export function allBlobGetLatency(): LatencyHistogram {
  const total = blobGetLatency("");
  for (const h of histograms.values()) {
    h.counts.forEach((c, i) => total.counts[i] += c);
    total.count += h.count;
    total.sumSeconds += h.sumSeconds;
  }
  return total;
}

/** Reads of a blob this process made of its registry, and the bytes they brought. */
export interface BlobFetched {
  requests: number;
  bytes: number;
}

const fetched = new Map<string, BlobFetched>();

/**
 * Counts reads of blob `digest` (RegistryBlob): what `list` shows as a memory-only layer's
 * fetched bytes, whatever cache or check above asked for them (a verified layer fetches whole
 * table chunks for a few pinned pages).
 */
export function noteBlobFetched(digest: string, requests: number, bytes: number): void {
  const key = fetched.has(digest) || fetched.size < MAX_TRACKED_BLOBS ? digest : OVERFLOW_KEY;
  const entry = fetched.get(key) ?? { requests: 0, bytes: 0 };
  entry.requests += requests;
  entry.bytes += bytes;
  fetched.set(key, entry);
}

/** What this process fetched of `digest` so far (undefined: nothing). */
export function blobFetched(digest: string): BlobFetched | undefined {
  const entry = fetched.get(digest);
  return entry && { ...entry };
}

const mismatches = new Map<string, number>();

/** A chunk of `digest` did not match its chunk-digest table (bytes refused, refetched). */
export function noteChunkMismatch(digest: string): void {
  const key = mismatches.has(digest) || mismatches.size < MAX_TRACKED_BLOBS ? digest : OVERFLOW_KEY;
  mismatches.set(key, (mismatches.get(key) ?? 0) + 1);
}

/** Chunk verification failures of `digest` so far in this process. */
export function chunkMismatches(digest: string): number {
  return mismatches.get(digest) ?? 0;
}

/** All blobs together (a `serve` process serves exactly one). */
export function allChunkMismatches(): number {
  let total = 0;
  for (const n of mismatches.values()) total += n;
  return total;
}
