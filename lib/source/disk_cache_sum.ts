/**
 * `<base>.sum`: the record that the complete data of a blob without a chunk-digest table hashed
 * to its digest, so that a later open of the same complete blob does not hash it again
 * (disk_cache_whole_check.ts). It holds `<digest> <data file inode> <its change time>`, and
 * counts only while every chunk is present.
 *
 * It must not outlive a change of the bytes it covers. Bytes change only by a fill (eviction
 * and the other drops make chunks absent, and an incomplete blob's record counts for nothing),
 * and every fill removes the file under its chunks' write lock before it writes them
 * (BlobFiller, forgetSum). A check writes `checking <token>` before it hashes, and turns that
 * into the record only when its own token is still there afterwards: a fill in between removed
 * it. Both steps hold a read lock on every chunk's map byte, through a descriptor of their own
 * (whose locks exclude this process's fillers and evictors as another process's do), so no
 * fill can be between the look at the map and the write of the file.
 */
import {
  closeQuietly,
  F_RDLCK,
  openCacheFile,
  preadExact,
  pwriteAll,
  reopenReadOnly,
  truncateTo,
  tryLock,
} from "./disk_cache_io.ts";
import { fstatFd } from "../../ffi/files.ts";
import { isPresent } from "./disk_cache_present.ts";

/** One blob's open files, as the check needs them. */
export interface SumFiles {
  /** The blob's files without their extension. */
  base: string;
  mapFd: number;
  dataFd: number;
  chunkCount: number;
}

/** Longer than any content this module writes: anything longer is not one of ours. */
const MAX_SUM_BYTES = 256;

/**
 * The first step of a check: "recorded" when the complete blob's record names `digest` (no
 * need to hash), "incomplete" when a chunk is absent, "busy" when a filler or evictor holds a
 * chunk now (try again later), else the token the second step (recordSum) looks for.
 */
export function beginSumCheck(
  files: SumFiles,
  digest: string,
): "recorded" | "incomplete" | "busy" | { token: string } {
  return underReadLockOfAll(files, (lockFd) => {
    if (!isComplete(lockFd, files.chunkCount)) return "incomplete";
    if (readSum(files.base) === recordText(files, digest)) return "recorded";
    const token = crypto.randomUUID();
    writeSum(files.base, `checking ${token}\n`);
    return { token };
  });
}

/**
 * The second step, once the blob hashed to `digest`: records it when `token` is still in the
 * file ("changed": a fill since removed it, or another check's token replaced it).
 */
export function recordSum(
  files: SumFiles,
  digest: string,
  token: string,
): "recorded" | "changed" | "busy" {
  return underReadLockOfAll(files, (lockFd) => {
    if (!isComplete(lockFd, files.chunkCount)) return "changed";
    if (readSum(files.base) !== `checking ${token}\n`) return "changed";
    writeSum(files.base, recordText(files, digest));
    return "recorded";
  });
}

function underReadLockOfAll<T>(files: SumFiles, step: (lockFd: number) => T): T | "busy" {
  const lockFd = reopenReadOnly(files.mapFd);
  try {
    if (!tryLock(lockFd, F_RDLCK, 0, files.chunkCount)) return "busy";
    return step(lockFd);
  } finally {
    closeQuietly(lockFd); // drops its lock
  }
}

function isComplete(mapFd: number, chunkCount: number): boolean {
  const map = new Uint8Array(chunkCount);
  preadExact(mapFd, map, 0);
  return map.every(isPresent);
}

/**
 * The data file's inode ties the record to these files, not to a set made after a removal;
 * its change time to these bytes: an erofs-oci from before this record, sharing the cache,
 * refilled evicted chunks without removing it (from a registry serving other bytes, they were
 * then served as checked).
 */
function recordText(files: SumFiles, digest: string): string {
  const data = fstatFd(files.dataFd);
  return `${digest} ${data.ino} ${data.changeTime}\n`;
}

function readSum(base: string): string | undefined {
  let fd = -1;
  try {
    fd = openCacheFile(`${base}.sum`, false);
    const size = fstatFd(fd).sizeBytes;
    if (size > MAX_SUM_BYTES) return undefined;
    const bytes = new Uint8Array(size);
    preadExact(fd, bytes, 0);
    return new TextDecoder().decode(bytes);
  } catch {
    return undefined; // none, or not a regular file: nothing recorded
  } finally {
    closeQuietly(fd);
  }
}

/**
 * Replaces the file's content in place (no rename: a fill removing the name must remove what
 * a check wrote). A write cut short leaves text that matches nothing: not recorded.
 */
function writeSum(base: string, text: string): void {
  const fd = openCacheFile(`${base}.sum`);
  try {
    truncateTo(fd, 0);
    pwriteAll(fd, new TextEncoder().encode(text), 0);
  } finally {
    closeQuietly(fd);
  }
}
