/**
 * Scattered small reads of a verified layer checked by the table's subchunk digests (64 KiB)
 * instead of whole table chunks (1 MiB): each read is widened to whole subchunks only, the runs
 * of several reads go in one multi-range request when the source can, and every subchunk is
 * hashed against its digest before any byte is handed on. A run that does not match is fetched
 * once more; then the call fails (EIO above), never wrong bytes.
 */
import type { Source } from "../source/source.ts";
import type { ChunkTable } from "./chunk_table.ts";
import { alignedRuns, type ByteSpan } from "../source/aligned_runs.ts";

type ByteRange = ByteSpan;

/** A source that may answer several ranges in one request (RegistryBlob.readRanges). */
export type RangesSource = Source & {
  readRanges?(
    ranges: readonly ByteRange[],
    signal?: AbortSignal,
  ): Promise<(Uint8Array | undefined)[]>;
};

export interface SubchunkChecks {
  /** Whether `bytes` are all of subchunk `index` and hash to its digest. */
  matches(index: number, bytes: Uint8Array): boolean | Promise<boolean>;
  /** Fetches a run again after a mismatch (another mirror, or the source once more). */
  refetch(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array>;
  /**
   * Subchunk `index` did not match (`final`: after the refetch too): counts and reports it;
   * returns the error a final mismatch is thrown as.
   */
  mismatch(index: number, final: boolean): Error;
}

/**
 * The bytes of each of `ranges` (inside the layer), every one of them checked. `table` must
 * have subchunks.
 */
export async function readSubchunkChecked(
  source: RangesSource,
  table: ChunkTable,
  ranges: readonly ByteRange[],
  checks: SubchunkChecks,
  signal?: AbortSignal,
): Promise<Uint8Array[]> {
  const unit = table.subchunkBytes!;
  const runs = subchunkRuns(ranges, unit, table.sizeBytes);
  const together = runs.length && source.readRanges
    ? await source.readRanges(runs, signal).catch(() => [])
    : [];
  const checked = await Promise.all(runs.map(async (run, i) => {
    const came = together[i]?.length === run.length
      ? together[i]!
      : await source.read(run.offset, run.length, signal);
    const bad = await firstMismatch(run, came, unit, checks);
    if (bad < 0) return came;
    checks.mismatch(bad, false);
    const again = await checks.refetch(run.offset, run.length, signal);
    const stillBad = await firstMismatch(run, again, unit, checks);
    if (stillBad < 0) return again;
    throw checks.mismatch(stillBad, true);
  }));
  return ranges.map(({ offset, length }) => {
    const i = lastIndexAtOrBefore(runs, offset);
    const at = offset - runs[i].offset;
    return checked[i].subarray(at, at + length);
  });
}

/** The first subchunk of run `run` that `bytes` do not match (all of it when too short), or -1. */
async function firstMismatch(
  run: ByteRange,
  bytes: Uint8Array,
  unit: number,
  checks: SubchunkChecks,
): Promise<number> {
  const first = run.offset / unit;
  if (bytes.length !== run.length) return first;
  for (let at = 0; at < bytes.length; at += unit) {
    const piece = bytes.subarray(at, Math.min(bytes.length, at + unit));
    if (!await checks.matches(first + at / unit, piece)) return first + at / unit;
  }
  return -1;
}

/** alignedRuns of `ranges` in subchunks, each range inside the layer. */
export function subchunkRuns(
  ranges: readonly ByteRange[],
  unit: number,
  size: number,
): ByteRange[] {
  for (const { offset, length } of ranges) {
    if (!Number.isSafeInteger(offset) || offset < 0 || length <= 0 || offset + length > size) {
      throw new RangeError(`read of ${length} bytes at ${offset} outside 0..${size}`);
    }
  }
  return alignedRuns(ranges, unit, size);
}

/** Index of the last run starting at or before `offset` (runs ascending, the first at or before). */
function lastIndexAtOrBefore(runs: readonly ByteRange[], offset: number): number {
  let lo = 0, hi = runs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (runs[mid].offset <= offset) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
