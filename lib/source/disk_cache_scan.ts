/**
 * The blobs in the disk cache directory as files: what each holds on disk and when it was last
 * used (for eviction, prune and `erofs-oci cache`), and the removal of a blob no process has
 * open, under its map's in-use lock (disk_cache.ts has the locking rules).
 */
import { closeQuietly, F_WRLCK, IN_USE_OFFSET, openCacheFile, tryLock } from "./disk_cache_io.ts";
import { fstatFd } from "../../ffi/files.ts";
import { Errno, SysError } from "../../ffi/libc.ts";
import { BLOB_FILE_SUFFIXES, BLOB_TEMP_FILE, removeBlobFiles } from "./disk_cache_files.ts";

/** One blob on disk as scanBlobs finds it. */
export interface ScannedBlob {
  base: string;
  bytes: number;
  usedMs: number;
  hasMetadata: boolean;
  /** Its temporary sidecar and boot files (BLOB_TEMP_FILE), removed with it. */
  tempFiles: string[];
}

/** Blobs on disk: base path (without .map/.data), bytes allocated, last use, sidecar. */
export function scanBlobs(blobsDir: string): ScannedBlob[] {
  const blobs = new Map<string, ScannedBlob>();
  for (const entry of Deno.readDirSync(blobsDir)) {
    // `.meta`: the blob's sidecar (DiskCachedSource.writeSidecar), `.boot`: the boot of its
    // unsynced chunks (disk_cache_boot.ts), `.sum`: its digest check (disk_cache_sum.ts);
    // all counted with it, and so are the temporary copies of the first two a process killed
    // between write and rename left (removed with the blob: a live writer may own one).
    const file = /^(.*)\.(map|data|meta|boot|sum)$/.exec(entry.name);
    const temp = file ? null : BLOB_TEMP_FILE.exec(entry.name);
    const match = file ?? temp;
    // A map that is no regular file is damage, listed so that prune removes it (the blob's
    // only file, it was never listed, so never pruned).
    if (!match || (!entry.isFile && match[2] !== "map")) continue;
    const base = `${blobsDir}/${match[1]}`;
    let info: Deno.FileInfo;
    try {
      info = Deno.lstatSync(`${blobsDir}/${entry.name}`);
    } catch {
      continue; // evicted meanwhile by another process
    }
    const blob = blobs.get(base) ??
      { base, bytes: 0, usedMs: 0, hasMetadata: false, tempFiles: [] };
    blob.bytes += (info.blocks ?? 0) * 512;
    if (temp) blob.tempFiles.push(`${blobsDir}/${entry.name}`);
    else if (match[2] === "map") blob.usedMs = info.mtime?.getTime() ?? 0;
    else if (match[2] === "meta") blob.hasMetadata = true;
    blobs.set(base, blob);
  }
  return [...blobs.values()];
}

/**
 * Removes a blob's files unless some process has it open, under the write lock of its map's
 * in-use byte (removeBlobFiles says in which order). Files without a map (left by an older
 * version's removal cut short) are removed under the lock of a map made for the purpose: an
 * opener creating the map meanwhile must not lose the data file it opened.
 */
export function removeIfUnused(
  base: string,
  tempFiles: readonly string[] = [],
  onError?: (error: Error) => void,
): boolean {
  if (removeIfMapDamaged(base, tempFiles)) return true;
  let fd = -1;
  try {
    fd = openCacheFile(`${base}.map`);
    if (!tryLock(fd, F_WRLCK, IN_USE_OFFSET, 1)) return false;
    const held = fstatFd(fd);
    const now = Deno.lstatSync(`${base}.map`);
    if (BigInt(now.ino ?? -1) !== held.ino) return false; // replaced meanwhile
    removeBlobFiles(base, tempFiles);
    return true;
  } catch (error) {
    // Gone meanwhile is another remover's doing; anything else (a read-only or unwritable
    // cache) is the caller's to say: a prune said it removed nothing, and exited 0.
    const gone = error instanceof Deno.errors.NotFound ||
      (error instanceof SysError && error.errno === Errno.ENOENT);
    if (!gone) onError?.(error as Error);
    return false;
  } finally {
    closeQuietly(fd);
  }
}

/**
 * A blob whose map is not a regular file (a directory, FIFO or symlink: damage) can be open in
 * no process (an opener fails on it and goes memory-only), and was never prunable: its files go.
 */
export function removeIfMapDamaged(base: string, tempFiles: readonly string[] = []): boolean {
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(`${base}.map`);
  } catch {
    return false;
  }
  if (info.isFile) return false;
  for (const path of [...[...BLOB_FILE_SUFFIXES, ".map"].map((s) => base + s), ...tempFiles]) {
    try {
      Deno.removeSync(path, { recursive: true });
    } catch { /* absent */ }
  }
  return true;
}
