/**
 * The disk cache's side of direct reads (direct_reads.ts): descriptors of a blob's map and data
 * file opened again for the FUSE reader thread, so that thread's OFD read locks keep this
 * process's fillers and evictors off the chunks it reads, exactly as another process's would.
 */
import type { DirectReadFiles } from "./direct_reads.ts";
import { closeQuietly, reopenReadOnly } from "./disk_cache_io.ts";
import { PRESENT } from "./disk_cache_sync.ts";
import { WRITTEN } from "./disk_cache_boot.ts";

/** Fresh read-only descriptors of the blob's files, or undefined when they cannot be had. */
export function openDirectReadFiles(
  blob: {
    mapFd: number;
    dataFd: number;
    chunkBytes: number;
    size: number;
    checked?: Uint8Array;
  },
): DirectReadFiles | undefined {
  let mapFd = -1;
  try {
    mapFd = reopenReadOnly(blob.mapFd);
    const dataFd = reopenReadOnly(blob.dataFd);
    let open = true;
    return {
      mapFd,
      dataFd,
      chunkBytes: blob.chunkBytes,
      sizeBytes: blob.size,
      presentBytes: [PRESENT, WRITTEN],
      ...(blob.checked ? { checked: blob.checked } : {}),
      close: () => {
        if (!open) return;
        open = false;
        closeQuietly(dataFd);
        closeQuietly(mapFd);
      },
    };
  } catch {
    closeQuietly(mapFd);
    return undefined;
  }
}

/**
 * The chunks each served range [offset, length] (pairs in `ranges`) touches, in order, and
 * the bytes of the valid ranges: what the cache counts as disk hits and most recently used.
 */
export function servedChunks(
  ranges: readonly number[],
  size: number,
  chunkBytes: number,
  onChunk: (index: number) => void,
): number {
  let bytes = 0;
  for (let i = 0; i + 1 < ranges.length; i += 2) {
    const offset = ranges[i], length = ranges[i + 1];
    if (!(length > 0) || offset < 0 || offset + length > size) continue;
    bytes += length;
    const end = Math.floor((offset + length - 1) / chunkBytes) + 1;
    for (let c = Math.floor(offset / chunkBytes); c < end; c++) onChunk(c);
  }
  return bytes;
}
