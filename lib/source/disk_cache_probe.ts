/**
 * Probes of the disk cache made before any source of a blob exists (the superblock check at
 * mount, a reattach): a blob's bytes read from its files when every chunk they touch is
 * present, under the locks an opener and a reader take (disk_cache.ts), creating nothing; and
 * chunks dropped there that hold other bytes than the registry's. DiskCache.readIfPresent and
 * DiskCache.dropIfUnlike are these.
 */
import type { BlobKey } from "./disk_cache.ts";
import {
  closeQuietly,
  dropChunks,
  F_RDLCK,
  F_WRLCK,
  IN_USE_OFFSET,
  openCacheFile,
  preadExact,
  tryLock,
} from "./disk_cache_io.ts";
import { fstatFd } from "../../ffi/files.ts";
import { blobNameStem, originTag } from "./disk_cache_names.ts";
import { isPresent } from "./disk_cache_present.ts";
import { PRESENT } from "./disk_cache_sync.ts";
import { writtenIsTrusted } from "./disk_cache_boot.ts";

/** What a probe needs of the cache. */
export interface ProbeDir {
  readonly blobsDir: string;
  readonly chunkBytes: number;
  warnOnce(message: string): void;
}

/** The digests the disk cache keeps blobs of. */
export const CACHEABLE_DIGEST = /^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$/;

/**
 * `length` bytes at `offset` of a blob when every chunk they touch is present, else
 * undefined; creates nothing. For probes made before a source exists (the superblock check
 * at mount): bytes there came through a reply whose size matched `sizeBytes`. Besides the
 * key's own files it looks in those of the same origin qualified by a chunk table
 * (`origin#t-…`): their chunks were checked, so they serve a probe at least as well.
 */
export function readIfPresent(
  dir: ProbeDir,
  key: BlobKey,
  sizeBytes: number,
  offset: number,
  length: number,
): Uint8Array | undefined {
  if (length <= 0 || offset + length > sizeBytes) return undefined;
  for (const base of probeCandidates(dir, key)) {
    const bytes = readPresent(dir, base, sizeBytes, offset, length);
    if (bytes) return bytes;
  }
  return undefined;
}

/**
 * Drops the chunks under [offset, offset + good.length) from the files readIfPresent reads
 * for `key` wherever they hold other bytes than `good` (a cached head that failed its check
 * while the registry's passed: damage on this disk), so that no mount reads them again.
 */
export function dropIfUnlike(
  dir: ProbeDir,
  key: BlobKey,
  sizeBytes: number,
  offset: number,
  good: Uint8Array,
): void {
  if (good.length === 0 || offset + good.length > sizeBytes) return;
  for (const base of probeCandidates(dir, key)) {
    const held = readPresent(dir, base, sizeBytes, offset, good.length);
    if (!held || held.every((byte, i) => byte === good[i])) continue;
    const dropped = dropPresent(dir, base, sizeBytes, offset, good.length);
    dir.warnOnce(
      `disk cache ${base}: the kept bytes at offset ${offset} are not the registry's ` +
        (dropped
          ? "(damaged on disk?); dropped, they are fetched again"
          : "(damaged on disk?) and in use: run `erofs-oci cache prune` once no mount uses them"),
    );
  }
}

/** The base paths of the key's own files and of its origin's table-checked ones. */
function probeCandidates(dir: ProbeDir, key: BlobKey): string[] {
  if (!CACHEABLE_DIGEST.test(key.digest)) return [];
  let prefix: string;
  try {
    prefix = blobNameStem(key.digest, key.origin, !!key.verify);
  } catch {
    return [];
  }
  const suffix = `.c${dir.chunkBytes}.map`;
  const tabled = `${prefix}${originTag("#t-")}`;
  const names = [`${prefix}${suffix}`];
  try {
    for (const entry of Deno.readDirSync(dir.blobsDir)) {
      if (entry.name.startsWith(tabled) && entry.name.endsWith(suffix)) names.push(entry.name);
    }
  } catch { /* no directory: nothing cached */ }
  return names.map((name) => `${dir.blobsDir}/${name.slice(0, -".map".length)}`);
}

/** Marks the chunks under the range absent and punches them out, as eviction does. */
function dropPresent(
  dir: ProbeDir,
  base: string,
  sizeBytes: number,
  offset: number,
  length: number,
): boolean {
  const first = Math.floor(offset / dir.chunkBytes);
  const end = Math.floor((offset + length - 1) / dir.chunkBytes) + 1;
  let map = -1, data = -1;
  try {
    map = openCacheFile(`${base}.map`, false);
    data = openCacheFile(`${base}.data`, false);
    if (fstatFd(data).sizeBytes !== sizeBytes) return false;
    // A reader of some process holds them now: left (its own check, if any, decides).
    if (!tryLock(map, F_WRLCK, first, end - first)) return false;
    dropChunks({ mapFd: map, dataFd: data, chunkBytes: dir.chunkBytes, sizeBytes }, first, end);
    return true;
  } catch (error) {
    dir.warnOnce(`disk cache ${base}: ${(error as Error).message}`);
    return false;
  } finally {
    closeQuietly(data);
    closeQuietly(map);
  }
}

function readPresent(
  dir: ProbeDir,
  base: string,
  sizeBytes: number,
  offset: number,
  length: number,
): Uint8Array | undefined {
  const first = Math.floor(offset / dir.chunkBytes);
  const end = Math.floor((offset + length - 1) / dir.chunkBytes) + 1;
  let map = -1, data = -1;
  try {
    map = openCacheFile(`${base}.map`, false);
    // As an opener does (openBlobFiles): held in use, and still the map at that name, the
    // data file opened next is its own, not a new one made after a removal in between.
    if (!tryLock(map, F_RDLCK, IN_USE_OFFSET, 1)) return undefined;
    if (BigInt(Deno.lstatSync(`${base}.map`).ino ?? -1) !== fstatFd(map).ino) {
      return undefined;
    }
    data = openCacheFile(`${base}.data`, false);
    if (fstatFd(data).sizeBytes !== sizeBytes) return undefined;
    if (!tryLock(map, F_RDLCK, first, end - first)) return undefined;
    const present = new Uint8Array(end - first);
    preadExact(map, present, first);
    // WRITTEN (2) only when `.boot` names this boot: claimBoot cleared older ones first.
    const trusted = present.every((byte) => byte === PRESENT) ||
      (present.every(isPresent) && writtenIsTrusted(base));
    if (!trusted) return undefined;
    const out = new Uint8Array(length);
    preadExact(data, out, offset);
    return out;
  } catch {
    return undefined;
  } finally {
    closeQuietly(data); // closing drops the OFD lock with the last descriptor
    closeQuietly(map);
  }
}
