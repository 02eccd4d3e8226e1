/**
 * Space held by chunks nobody will write: a fill allocates its run in the data file before it
 * fetches it (DiskCache.reserve) and punches out what it did not mark in its `finally`; a
 * process killed mid-fill (kill -9, OOM) never gets there, and the allocated zeros stayed,
 * counted by every scan toward the bound and keep-free, so LRU evicted real chunks while they
 * stayed (19 MiB of a 40 MiB file system in a review's repro). WRITTEN chunks cleared after a
 * reboot or a failed sync left their blocks the same way. An opener, and this process's
 * eviction scan, punch out absent chunks no fill holds: a fill of any process write-locks its
 * chunks' map bytes before it allocates and until it marks or punches them (disk_cache_fetch.ts),
 * so an absent chunk whose lock is free here holds nothing anybody will read.
 */
import { fstatFd } from "../../ffi/files.ts";
import { chunkRuns, isPresent } from "./disk_cache_present.ts";
import { byteRuns, F_WRLCK, preadExact, punchHole, tryLock, unlock } from "./disk_cache_io.ts";

/**
 * Allocated bytes beyond the present chunks' that are not looked into: a file system's own
 * blocks counted in st_blocks (ext4's extent tree) and the last chunk's rounding to a block.
 * Every reservation left behind is at least a block, and nearly always whole chunks.
 */
const UNCOUNTED_SLACK_BYTES = 64 << 10;

export interface ReclaimFiles {
  mapFd: number;
  dataFd: number;
  chunkBytes: number;
  chunkCount: number;
  size: number;
}

/**
 * Punches out the data of absent chunks whose map bytes nobody holds locked, when the data file
 * holds more than its present chunks: returns the bytes freed. `isFilling`: chunks a fill of
 * this process has under way, whose locks (on the same descriptor) the lock taken here would
 * neither see nor keep; they are left alone. Errors of the disk are thrown (what stays is
 * counted by the next scan).
 */
export function reclaimUnfilled(
  files: ReclaimFiles,
  isFilling: (index: number) => boolean = () => false,
): number {
  const allocatedBefore = fstatFd(files.dataFd).allocatedBytes;
  const map = readWholeMap(files);
  let presentBytes = 0;
  map.forEach((byte, index) => {
    if (isPresent(byte)) presentBytes += chunkLength(files, index);
  });
  if (allocatedBefore <= presentBytes + UNCOUNTED_SLACK_BYTES) return 0;
  const unfilled = map.map((byte, index) => !isPresent(byte) && !isFilling(index) ? 1 : 0);
  for (const [start, stop] of byteRuns(unfilled, 0, (byte) => byte === 1)) {
    if (punchIfUnheld(files, start, stop)) continue;
    // Some chunk of the run is held (a live fill, a sync, a digest check): the others go.
    for (let c = start; c < stop; c++) punchIfUnheld(files, c, c + 1);
  }
  return Math.max(0, allocatedBefore - fstatFd(files.dataFd).allocatedBytes);
}

/**
 * Under the write lock of chunks [start, stop), punches out those still absent; false (nothing
 * done) when another descriptor holds a lock on one of them.
 */
function punchIfUnheld(files: ReclaimFiles, start: number, stop: number): boolean {
  if (!tryLock(files.mapFd, F_WRLCK, start, stop - start)) return false;
  try {
    const map = new Uint8Array(stop - start);
    preadExact(files.mapFd, map, start);
    for (const [at, count] of chunkRuns(map, start, false)) {
      // To the chunks' end, past the blob's: a fill allocates whole blocks, and a punch ending
      // inside the last one would zero it and keep it.
      punchHole(files.dataFd, at * files.chunkBytes, count * files.chunkBytes);
    }
    return true;
  } finally {
    unlock(files.mapFd, start, stop - start);
  }
}

function readWholeMap(files: ReclaimFiles): Uint8Array {
  const map = new Uint8Array(files.chunkCount);
  preadExact(files.mapFd, map, 0);
  return map;
}

function chunkLength(files: ReclaimFiles, index: number): number {
  return Math.min(files.size, (index + 1) * files.chunkBytes) - index * files.chunkBytes;
}
