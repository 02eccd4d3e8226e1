/**
 * Where the disk cache lives and whether that directory may be trusted: a map planted by
 * another user, or a directory on storage shared between hosts, could make readers take zeros
 * or another host's bytes for a chunk (docs/disk-cache.md, Layout).
 */
import { fileSystemTypeOf, sharedFileSystemName } from "./disk_cache_fs.ts";
import { dirSetting, notRootsAlone, resolvedPath } from "../../ffi/trusted_path.ts";

export const DEFAULT_DISK_CACHE_DIR = "/var/cache/erofs-oci";

/** The host's disk cache directory: $EROFS_OCI_CACHE_DIR, else DEFAULT_DISK_CACHE_DIR. */
export function diskCacheDir(): string {
  return dirSetting("EROFS_OCI_CACHE_DIR", DEFAULT_DISK_CACHE_DIR);
}

/**
 * Creates `dir` (mode 0700) and its `blobs/` and returns where it resolves to, or throws
 * (Error, the reason) when it cannot be used: not a directory, shared between hosts like NFS
 * (disk_cache_fs.ts; `fileSystemType` replaces statfs for tests), owned by someone else, open to
 * others, below a directory another user can change (for root).
 */
export function usableCacheDir(dir: string, fileSystemType?: (dir: string) => number): string {
  Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const resolved = trustedCacheDir(dir, fileSystemType);
  Deno.mkdirSync(`${resolved}/blobs`, { recursive: true, mode: 0o700 });
  return resolved;
}

/** usableCacheDir's checks of an existing `dir`, creating nothing: where it resolves to. */
export function trustedCacheDir(dir: string, fileSystemType?: (dir: string) => number): string {
  const info = Deno.lstatSync(dir);
  if (!info.isDirectory) throw new Error("not a directory");
  // Before the owner checks: on NFS a squashed root fails those too, and the file system
  // is what has to change.
  const shared = sharedFileSystemName(fileSystemTypeOf(dir, fileSystemType));
  if (shared) {
    throw new Error(
      `on ${shared}: chunks are marked before they reach shared storage, and its locks may ` +
        "not hold between hosts; set EROFS_OCI_CACHE_DIR to a local directory",
    );
  }
  if (info.uid !== Deno.uid()) throw new Error(`owned by uid ${info.uid}, not by us`);
  // Another user able to write there could plant a map that marks zeros present.
  if ((info.mode ?? 0) & 0o022) throw new Error("writable by others (want mode 0700)");
  // Root's: nor a directory above it, whose owner could rename it away and put theirs
  // there. Checked where the symlinks on the way lead, and used there.
  const resolved = resolvedPath(dir);
  const above = notRootsAlone(resolved);
  if (above) {
    throw new Error(
      `${above}: make the directories above it writable by root only, or set ` +
        "EROFS_OCI_CACHE_DIR elsewhere",
    );
  }
  return resolved;
}
