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
 * pairs, to `post` (which owns the array from then on). `nowMs`: the clock (tests).
 */
export function servedBatchBody(
  post: (served: number[]) => void,
  nowMs: () => number = () => performance.now(),
): ServedBatch {
  /**
   * Served reads are reported after this many or this many bytes (readahead follows them), or
   * once no request came for FLUSH_IDLE_MS: a message per READ cost as much CPU as the READ.
   * And once the oldest of them is SERVED_BATCH_MAX_AGE_MS old: the main thread tells a
   * metadata walk by these reports (walk_clock_body.ts, besides the reader's own clock published
   * through read_activity_cell.ts), and a walk whose reads take 3.5 ms each (kernel NBD in the
   * TCG guest) filled 64 only every ~220 ms, longer than the 200 ms after which a walk counts as
   * over: the background windows went on in the gaps and a paused fill went on fetching,
   * verifying and writing for ~0.8 s of the cold find.
   */
  const SERVED_BATCH = 64, SERVED_BATCH_BYTES = 1 << 20, FLUSH_IDLE_MS = 5;
  const SERVED_BATCH_MAX_AGE_MS = 20;
  let served: number[] = [];
  let servedBytes = 0;
  /** When the oldest read not yet posted was added. */
  let oldestMs = 0;
  const flush = () => {
    if (served.length === 0) return;
    const batch = served;
    served = [];
    servedBytes = 0;
    post(batch);
  };
  return {
    add(offset: number, length: number): void {
      const now = nowMs();
      if (served.length === 0) oldestMs = now;
      served.push(offset, length);
      servedBytes += length;
      if (
        served.length >= 2 * SERVED_BATCH || servedBytes >= SERVED_BATCH_BYTES ||
        now - oldestMs >= SERVED_BATCH_MAX_AGE_MS
      ) {
        flush();
      }
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
