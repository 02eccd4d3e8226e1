/**
 * The reports of reads a reader thread answered itself (the FUSE reader,
 * lib/fuse/reader_worker.ts, and the NBD reader, lib/nbd/reader_worker.ts), batched for the
 * main thread (the disk cache's LRU, readahead and statistics). `servedBatchBody` is
 * self-contained (no imports, no outer variables): workers get it as a helper, shipped as
 * source text (ffi/libc_worker.ts).
 */

/** A reader thread's batch of served reads. */
export interface ServedBatch {
  /** Notes a read the thread answered; posts the batch once it is full. */
  add(offset: number, length: number): void;
  /**
   * poll() through `pollFds` (a poll of the thread's descriptors with that timeout in ms):
   * while reads wait to be reported, first a short poll, and when nothing comes the batch is
   * posted before the poll of `timeoutMs`. Returns what poll() returned.
   */
  poll(pollFds: (timeoutMs: number) => number, timeoutMs: number): number;
  /** Posts the reads not yet posted, if any. */
  flush(): void;
}

/**
 * Worker helper (self-contained): a ServedBatch that hands each full batch, [offset, length]
 * pairs, to `post` (which owns the array from then on).
 */
export function servedBatchBody(post: (served: number[]) => void): ServedBatch {
  /**
   * Served reads are reported after this many or this many bytes (readahead follows them), or
   * once no request came for FLUSH_IDLE_MS: a message per READ cost as much CPU as the READ.
   */
  const SERVED_BATCH = 64, SERVED_BATCH_BYTES = 1 << 20, FLUSH_IDLE_MS = 5;
  let served: number[] = [];
  let servedBytes = 0;
  const flush = () => {
    if (served.length === 0) return;
    const batch = served;
    served = [];
    servedBytes = 0;
    post(batch);
  };
  return {
    add(offset: number, length: number): void {
      served.push(offset, length);
      servedBytes += length;
      if (served.length >= 2 * SERVED_BATCH || servedBytes >= SERVED_BATCH_BYTES) flush();
    },
    poll(pollFds: (timeoutMs: number) => number, timeoutMs: number): number {
      if (served.length === 0) return pollFds(timeoutMs);
      // Quiet for a moment: report the served reads before sleeping.
      const ready = pollFds(FLUSH_IDLE_MS);
      if (ready !== 0) return ready;
      flush();
      return pollFds(timeoutMs);
    },
    flush,
  };
}
