/**
 * Background completion of a disk-cached blob (`--fetch-all`): one run of up to `runBytes` at
 * a time, and only after readers have needed no fetch for `idleMs`, so a long-running mount
 * ends up fully local without slowing the reads it serves.
 */
import { WrongBytesError } from "./wrong_bytes.ts";
import { NoRoomError } from "./disk_cache_fetch.ts";
import { sleep } from "../timers.ts";

export interface Completable {
  chunkBytes: number;
  /** Closed, or the disk failed: give up. */
  stopped(): boolean;
  /** The presence map now (1 = present). */
  presence(): Uint8Array;
  /** How long no reader has needed a fetch (0 while fills run). */
  quietMs(): number;
  fill(chunks: number[]): Promise<unknown>;
  warn(message: string): void;
}

/** After a failed run: the first wait before trying again, doubled up to the last. */
const RETRY_FIRST_MS = 1000, RETRY_MAX_MS = 5 * 60_000;

/**
 * How a completion ended: "complete", every chunk present; "stopped", the blob was closed or
 * its disk failed; "evicted", chunks it had fetched were evicted before it was done, or the
 * cache had no room for a run at all (NoRoomError): it cannot hold the blob beside what else is
 * in use, and going on would fetch it again and again;
 * "refused", bytes it fetched failed their check twice (WrongBytesError: a registry serving
 * other bytes does not mend by being asked every second; said once, through `warn`).
 */
export type CompletionEnd = "complete" | "stopped" | "evicted" | "refused";

export async function completeInBackground(
  blob: Completable,
  idleMs = 250,
  runBytes = 8 << 20,
): Promise<CompletionEnd> {
  const runChunks = Math.max(1, Math.floor(runBytes / blob.chunkBytes));
  let fetchedHere: Uint8Array | undefined;
  let cursor = 0;
  let retryMs = RETRY_FIRST_MS;
  while (!blob.stopped()) {
    const map = blob.presence();
    fetchedHere ??= new Uint8Array(map.length);
    let start = map.indexOf(0, cursor);
    if (start < 0) {
      start = map.indexOf(0);
      if (start < 0) return "complete";
      // Back at the start: a chunk fetched on the way that is missing again was evicted.
      if (map.some((byte, index) => byte === 0 && fetchedHere![index] === 1)) return "evicted";
    }
    const quietMs = blob.quietMs();
    if (quietMs < idleMs) {
      await sleep(Math.max(20, idleMs - quietMs));
      continue;
    }
    let stop = start + 1;
    while (stop < map.length && stop - start < runChunks && map[stop] === 0) stop++;
    const run: number[] = [];
    for (let c = start; c < stop; c++) run.push(c);
    try {
      await blob.fill(run);
      fetchedHere.fill(1, start, stop);
      retryMs = RETRY_FIRST_MS;
    } catch (error) {
      if (blob.stopped()) break;
      if (error instanceof NoRoomError) return "evicted";
      if (error instanceof WrongBytesError) {
        blob.warn(`background fetch: ${error.message}; stopped, reads of those bytes fail`);
        return "refused";
      }
      blob.warn(`background fetch: ${(error as Error).message}; retrying`);
      await sleep(retryMs);
      retryMs = Math.min(RETRY_MAX_MS, retryMs * 2);
      continue; // the same run again: a failed run is not skipped
    }
    cursor = stop;
  }
  return "stopped";
}
