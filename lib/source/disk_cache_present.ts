/**
 * Which bytes of a blob's presence map readers may read: PRESENT (synced, disk_cache_sync.ts),
 * or WRITTEN in this boot (disk_cache_boot.ts; the opener cleared older ones).
 */
import { byteRuns } from "./disk_cache_io.ts";
import { WRITTEN } from "./disk_cache_boot.ts";
import { PRESENT } from "./disk_cache_sync.ts";

/** A chunk readers may read: PRESENT, or WRITTEN in this boot (the opener cleared older ones). */
export function isPresent(byte: number): boolean {
  return byte === PRESENT || byte === WRITTEN;
}

/** [chunk, count] runs of chunks in `map` (which starts at chunk `first`) that are PRESENT or not. */
export function chunkRuns(map: Uint8Array, first: number, present: boolean): [number, number][] {
  return byteRuns(map, first, (byte) => isPresent(byte) === present)
    .map(([start, stop]) => [start, stop - start]);
}
