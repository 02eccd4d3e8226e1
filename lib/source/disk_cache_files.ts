/** Opening one blob's pair of cache files safely against evictors and other openers. */
import {
  closeQuietly,
  F_RDLCK,
  F_WRLCK,
  IN_USE_OFFSET,
  openCacheFile,
  pwriteAll,
  sleepSync,
  truncateTo,
  tryLock,
} from "./disk_cache_io.ts";
import { fstatFd } from "../../ffi/files.ts";

/**
 * Opens or creates `${base}.map` (one byte per chunk) and `${base}.data` (sparse, the blob's
 * size) and takes the in-use lock. A map an evictor removed between our open and lock is
 * opened again. Files of either size 0 or the right size are a creation in progress (maybe by
 * another process) and are sized, which is idempotent; files of another size (a manifest that
 * lied about the blob's size) are replaced when nobody uses them, else refused.
 */
export function openBlobFiles(
  base: string,
  sizeBytes: number,
  chunkCount: number,
): { map: number; data: number } {
  for (let attempt = 0;; attempt++) {
    if (attempt > 50) throw new Error("the cache files keep being replaced");
    const map = openCacheFile(`${base}.map`);
    let data = -1;
    let keep = false;
    try {
      if (!tryLock(map, F_RDLCK, IN_USE_OFFSET, 1)) {
        // Being removed (a moment): then the files are made afresh.
        sleepSync(1);
        continue;
      }
      const held = fstatFd(map);
      if (BigInt(Deno.lstatSync(`${base}.map`).ino ?? -1) !== held.ino) continue;
      data = openCacheFile(`${base}.data`);
      const dataSize = fstatFd(data).sizeBytes;
      const mapOk = held.sizeBytes === 0 || held.sizeBytes === chunkCount;
      const dataOk = dataSize === 0 || dataSize === sizeBytes;
      if (!mapOk || !dataOk) {
        if (attempt === 0 && tryLock(map, F_WRLCK, IN_USE_OFFSET, 1)) {
          removeBlobFiles(base);
          continue;
        }
        throw new Error(`cached files are not of a ${sizeBytes}-byte blob`);
      }
      // A map sized before its data file was created: the data went first in a removal cut
      // short (removeBlobFiles); its marks name bytes that are gone.
      if (dataSize === 0 && held.sizeBytes === chunkCount) {
        pwriteAll(map, new Uint8Array(chunkCount), 0);
      }
      // Data first: a map of the right size over a short data file would make reads fail.
      if (dataSize !== sizeBytes) truncateTo(data, sizeBytes);
      if (held.sizeBytes !== chunkCount) truncateTo(map, chunkCount);
      keep = true;
      return { map, data };
    } finally {
      if (!keep) {
        closeQuietly(data);
        closeQuietly(map);
      }
    }
  }
}

/**
 * Removes a blob's files; the caller holds the write lock of the in-use byte of the map at
 * `${base}.map`. The map goes last: until then an opener finds that map (and waits for the
 * lock), after it one creates both files afresh; a map removed first would let an opener
 * create a new map and open the old data file just before it is unlinked, and later openers
 * pair that map with a new, empty data file. A crash in between leaves a sized map without
 * its data file, which the next opener clears (openBlobFiles). `tempFiles`: the blob's temporary
 * files scanBlobs found.
 */
export function removeBlobFiles(base: string, tempFiles: readonly string[] = []): void {
  for (const extra of [...BLOB_FILE_SUFFIXES.map((suffix) => base + suffix), ...tempFiles]) {
    try {
      Deno.removeSync(extra);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  Deno.removeSync(`${base}.map`);
}

/** A blob's files besides its map (`<base>.map`), each `<base><suffix>`. */
export const BLOB_FILE_SUFFIXES = [".sum", ".data", ".meta", ".boot"] as const;

/**
 * `<base>.meta.XXXXXXXX.tmp`, `<base>.boot.XXXXXXXX.tmp`: written, then renamed into place; one
 * a process killed in between left is found by scanBlobs and removed with its blob.
 */
export const BLOB_TEMP_FILE = /^(.*)\.(meta|boot)\.[0-9a-f]{8}\.tmp$/;

/**
 * Removes `<base>.sum` (disk_cache_sum.ts), if there is one: a fill calls this under its
 * chunks' write lock before it writes them, so no record of a digest check survives a change
 * of the bytes it covered.
 */
export function forgetSum(base: string): void {
  try {
    Deno.removeSync(`${base}.sum`);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
}
