/**
 * A BlobFiller's view of one blob (FillBlob) over real cache files, for tests that drive the
 * filler directly: the map is read through its descriptor, nothing is corrupt, and the disk
 * fails only when the test says so (`degraded`).
 */
import type { DiskCache } from "../../lib/source/disk_cache.ts";
import type { FillBlob } from "../../lib/source/disk_cache_fill.ts";
import { preadExact } from "../../lib/source/disk_cache_io.ts";
import type { Source } from "../../lib/source/source.ts";

export interface FillBlobFiles {
  cache: DiskCache;
  inner: Source;
  base: string;
  fds: { map: number; data: number };
  chunkBytes: number;
  closing: AbortSignal;
  /** The test's view of the disk's health: read by isDegraded(), told by degrade(). */
  degraded: { count: number };
  /** Every read of the map fails while this says so (a disk error). */
  mapBroken?: () => boolean;
  syncData?: (fd: number) => Promise<void>;
}

export function fillBlobOnFiles(files: FillBlobFiles): FillBlob {
  const size = files.inner.size;
  const readMap = (start: number, stop: number) => {
    if (files.mapBroken?.()) throw new Error("EIO (test map)");
    const map = new Uint8Array(stop - start);
    preadExact(files.fds.map, map, start);
    return map;
  };
  return {
    cache: files.cache,
    inner: files.inner,
    base: files.base,
    mapFd: files.fds.map,
    dataFd: files.fds.data,
    size,
    chunkBytes: files.chunkBytes,
    chunkCount: Math.ceil(size / files.chunkBytes),
    closing: files.closing,
    lru: new Map(),
    readMap,
    isDegraded: () => files.degraded.count > 0,
    degrade: () => files.degraded.count++,
    corruption: () => undefined,
    syncData: files.syncData,
  };
}
