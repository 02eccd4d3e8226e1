/**
 * What the disk cache holds, read from its file names and maps without taking a lock anyone
 * could wait for: for `erofs-oci cache` (DiskCache.blobs, DiskCache.prune).
 */
import {
  closeQuietly,
  IN_USE_OFFSET,
  lockedByOthers,
  openCacheFileForReading,
  preadExact,
} from "./disk_cache_io.ts";
import { fstatFd } from "../../ffi/files.ts";
import { PRESENT } from "./disk_cache_sync.ts";
import { WRITTEN, writtenIsTrusted } from "./disk_cache_boot.ts";
import { parseBlobName } from "./disk_cache_names.ts";

/** One blob's file set: a digest, the origin its bytes are shared under and a chunk size. */
export interface CachedBlob {
  digest: string;
  /**
   * "verified" (every chunk checked against a chunk-digest table bound to the digest: shared
   * by all registries) or the origin the unverified bytes came from (e.g. a registry's URL).
   */
  origin: string;
  /** Every chunk was checked against a chunk-digest table before it was marked present. */
  tableChecked: boolean;
  chunkBytes: number;
  /** The blob's size (its data file's length); 0 when the data file is missing. */
  sizeBytes: number;
  chunks: number;
  /** Chunks a reader may read now (synced, or written in this boot). */
  chunksPresent: number;
  /** Blocks allocated to all the blob's files. */
  bytesOnDisk: number;
  /** A mount or `serve` has it open (holds the in-use lock). */
  inUse: boolean;
  /** The map's mtime: its last use (a source touches it at open and reads, once a minute). */
  lastUsedMs: number;
  /** Holds the layer's listed metadata (a sidecar a later mount starts from). */
  hasMetadata: boolean;
}

/**
 * Describes the blob whose files start with `base` (undefined when the name is not one of the
 * cache's). Reads its map (one byte per chunk) and tests the in-use lock without taking it.
 */
export function describeBlob(
  base: string,
  bytesOnDisk: number,
  lastUsedMs: number,
  hasMetadata: boolean,
): CachedBlob | undefined {
  const named = parseBlobName(base);
  if (!named) return undefined;
  let sizeBytes = 0;
  try {
    sizeBytes = Deno.lstatSync(`${base}.data`).size;
  } catch { /* removed, or never created: nothing of it is readable */ }
  const chunks = Math.ceil(sizeBytes / named.chunkBytes);
  let chunksPresent = 0, inUse = false;
  let map = -1;
  try {
    map = openCacheFileForReading(`${base}.map`);
    inUse = lockedByOthers(map, IN_USE_OFFSET, 1);
    const marks = new Uint8Array(Math.min(chunks, fstatFd(map).sizeBytes));
    preadExact(map, marks, 0);
    const writtenCounts = writtenIsTrusted(base);
    for (const mark of marks) {
      if (mark === PRESENT || (mark === WRITTEN && writtenCounts)) chunksPresent++;
    }
  } catch {
    /* no map (a removal cut short): nothing present, nobody can have it open */
  } finally {
    closeQuietly(map);
  }
  return {
    ...named,
    sizeBytes,
    chunks,
    chunksPresent,
    bytesOnDisk,
    inUse,
    lastUsedMs,
    hasMetadata,
  };
}

/** The sums `erofs-oci cache` prints and `metrics` reports as gauges. */
export function blobTotals(
  blobs: CachedBlob[],
): { bytesOnDisk: number; blobs: number; blobsInUse: number } {
  return {
    bytesOnDisk: blobs.reduce((sum, blob) => sum + blob.bytesOnDisk, 0),
    blobs: blobs.length,
    blobsInUse: blobs.filter((blob) => blob.inUse).length,
  };
}
