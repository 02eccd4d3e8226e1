/**
 * The host's persistent blob cache: per blob a sparse data file and a presence map (one byte
 * per chunk) in EROFS_OCI_CACHE_DIR, shared by every mount and `serve` on the host, bounded
 * by evicting least recently used blobs, then least recently used chunks of the blobs in use.
 *
 * Safety between processes rests on OFD byte-range locks of the map file (disk_cache_io.ts):
 * a filler holds a write lock on the map bytes of the chunks it fetches, a reader a read lock
 * on those it preads, an evictor a write lock on what it drops, and every open blob a read
 * lock on one byte far past the map (IN_USE_OFFSET) that blob eviction must take for writing.
 * A chunk's map byte becomes 2 (WRITTEN) once its bytes are verified and written, trusted only
 * in the boot `<base>.boot` names, and 1 (PRESENT) once a later fdatasync covered them
 * (disk_cache_fill.ts, disk_cache_boot.ts), so neither a crash, a kill -9 nor a power loss can
 * leave a chunk marked present with other bytes.
 *
 * This file is the cache as a whole: opening it, wrapping sources, the bound and eviction,
 * prune. One blob's source is disk_cached.ts; the blobs as files (scan, removal)
 * disk_cache_scan.ts; probes before any source exists disk_cache_probe.ts; the file system it
 * lives on (refused kinds, space left free) disk_cache_fs.ts.
 */
import type { Source } from "./source.ts";
import { readSidecarFile } from "./disk_cache_sidecar.ts";
import { type DigestCheckEnd, DiskCachedSource, type VerifyChunk } from "./disk_cached.ts";
import { type CachedBlob, describeBlob } from "./disk_cache_contents.ts";
import { blobFilePrefix, blobNameStem } from "./disk_cache_names.ts";
import { noteChunkMismatch } from "./fetch_metrics.ts";
import { defaultKeepFreeBytes, fileSystemTypeOf, sharedFileSystemName } from "./disk_cache_fs.ts";
import { CACHEABLE_DIGEST, dropIfUnlike, readIfPresent } from "./disk_cache_probe.ts";
import { CacheRoom, type Reservation } from "./disk_cache_room.ts";
import { removeIfMapDamaged, removeIfUnused, scanBlobs } from "./disk_cache_scan.ts";
import { refusedSpecialPath } from "../errors.ts";
import { notRootsAlone, resolvedPath } from "../../ffi/trusted_path.ts";
import { formatBytes } from "../text.ts";

export const DEFAULT_DISK_CACHE_DIR = "/var/cache/erofs-oci";

/** The host's disk cache directory: $EROFS_OCI_CACHE_DIR, else DEFAULT_DISK_CACHE_DIR. */
export function diskCacheDir(): string {
  return Deno.env.get("EROFS_OCI_CACHE_DIR") ?? DEFAULT_DISK_CACHE_DIR;
}
/** A few GiB: a handful of images' worth of layers, small beside any disk that runs them. */
export const DEFAULT_DISK_CACHE_BYTES = 4 * 1024 ** 3;
/**
 * 256 KiB: the unit of presence, verification and eviction. The metadata prefetch at mount
 * reads scattered pages, each fetched as a whole chunk: on the 136 MB benchmark image 1 MiB
 * chunks fetched most of the image at mount (76 GETs, server peak 168 MB), 256 KiB 154 GETs
 * and a peak of 141 MB; sequential reads are fetched as runs of chunks either way.
 */
export const DEFAULT_DISK_CHUNK_BYTES = 1 << 18;
/** Eviction frees down to this share of the bound, so it does not run on every fill. */
const EVICT_TO = 0.9;
/**
 * The most bytes this process writes between two scans of the whole cache: other processes
 * fill it too (their fills count toward the bound). The file system's free space is looked at
 * more often, before writes (disk_cache_room.ts).
 */
const CHECK_EVERY_MAX_BYTES = 64 << 20;

export interface DiskCacheOptions {
  /** Default: $EROFS_OCI_CACHE_DIR or /var/cache/erofs-oci. */
  dir?: string;
  /** Bound of the bytes on disk (allocated blocks). Default 4 GiB. */
  maxBytes?: number;
  /**
   * Bytes the cache leaves free (for unprivileged users) on its file system, evicting as it
   * would for its bound. Default a tenth of the file system, at most 4 GiB; 0: none.
   */
  keepFreeBytes?: number;
  chunkBytes?: number;
  /**
   * `--fetch-all`: every blob opened here is completed in the background while its readers
   * are quiet (DiskCachedSource.completeInBackground), and says so on the log once done.
   */
  completeInBackground?: boolean;
  /** Told when a blob is complete (--fetch-all) or its digest checked; default console.log. */
  onNotice?: (message: string) => void;
  /**
   * Default true: a blob without a chunk table is hashed against its digest once its data is
   * complete (DiskCachedSource, disk_cache_whole_check.ts). Off only for tests whose blobs
   * carry made-up digests.
   */
  checkCompleteBlobs?: boolean;
  /** Told once per problem (full disk, unusable directory); default console.warn. */
  onWarning?: (message: string) => void;
  /**
   * @internal the statfs magic (f_type) of the file system holding `dir`; default statfs(2).
   * Lets tests take the refusal of a network file system without mounting one.
   */
  fileSystemType?: (dir: string) => number;
  /**
   * @internal how long a fill waits for chunks another process holds before its reader is
   * served around them (disk_cache_held.ts, OTHERS_FILL_WAIT_MS); tests shorten it.
   */
  othersFillWaitMs?: number;
}

export interface BlobKey {
  /** The blob's digest (`sha256:…`); anything else is not cached on disk. */
  digest: string;
  /**
   * Where unverified bytes came from (e.g. the registry host): until every chunk is checked
   * against a table bound to the digest, a registry could claim a popular base layer's digest
   * and serve other bytes, so unverified bytes are only shared between sources of one origin.
   */
  origin: string;
  /** Given: chunks are checked before they are marked present, and shared by every origin. */
  verify?: VerifyChunk;
}

export class DiskCache {
  readonly dir: string;
  readonly blobsDir: string;
  readonly maxBytes: number;
  readonly keepFreeBytes: number;
  readonly chunkBytes: number;
  /** @internal DiskCacheOptions.othersFillWaitMs. */
  readonly othersFillWaitMs?: number;
  readonly #checkEveryBytes: number;
  #writtenSinceCheck = 0;
  readonly #warn: (message: string) => void;
  readonly #complete: boolean;
  readonly #checkCompleteBlobs: boolean;
  readonly #notice: (message: string) => void;
  readonly #warned = new Set<string>();
  readonly #open = new Set<DiskCachedSource>();
  /** Sidecar reads started ahead of wrap(), by blob base path (readSidecarAhead). */
  readonly #sidecarsAhead = new Map<string, Promise<Uint8Array | undefined>>();
  /** What the cache holds and may still take (its bound, keep-free): disk_cache_room.ts. */
  readonly #room: CacheRoom;
  #evicting = false;

  private constructor(dir: string, options: DiskCacheOptions) {
    this.dir = dir;
    this.blobsDir = `${dir}/blobs`;
    this.maxBytes = options.maxBytes ?? DEFAULT_DISK_CACHE_BYTES;
    this.chunkBytes = options.chunkBytes ?? DEFAULT_DISK_CHUNK_BYTES;
    this.keepFreeBytes = options.keepFreeBytes ?? defaultKeepFreeBytes(dir);
    this.othersFillWaitMs = options.othersFillWaitMs;
    this.#checkEveryBytes = Math.max(
      this.chunkBytes,
      Math.min(this.maxBytes / 64, CHECK_EVERY_MAX_BYTES),
    );
    this.#room = new CacheRoom(
      this.dir,
      { maxBytes: this.maxBytes, keepFreeBytes: this.keepFreeBytes },
      (bytes) => this.#noteWritten(bytes),
    );
    this.#warn = options.onWarning ?? ((message) => console.warn(message));
    this.#complete = options.completeInBackground ?? false;
    this.#checkCompleteBlobs = options.checkCompleteBlobs ?? true;
    this.#notice = options.onNotice ?? ((message) => console.log(message));
  }

  /**
   * Opens (creating, mode 0700) the cache directory. Returns undefined after one warning when
   * it cannot be used (read-only, shared between hosts like NFS (disk_cache_fs.ts), owned by
   * someone else, open to others, below a directory another user can change, for root): the
   * caller then keeps the memory cache only.
   */
  static open(options: DiskCacheOptions = {}): DiskCache | undefined {
    const dir = options.dir ?? diskCacheDir();
    const warn = options.onWarning ?? ((message: string) => console.warn(message));
    try {
      Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
      const info = Deno.lstatSync(dir);
      if (!info.isDirectory) throw new Error("not a directory");
      // Before the owner checks: on NFS a squashed root fails those too, and the file system
      // is what has to change.
      const shared = sharedFileSystemName(fileSystemTypeOf(dir, options.fileSystemType));
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
      Deno.mkdirSync(`${resolved}/blobs`, { recursive: true, mode: 0o700 });
      const cache = new DiskCache(resolved, options);
      cache.#room.counted(scanBlobs(cache.blobsDir).reduce((sum, blob) => sum + blob.bytes, 0));
      return cache;
    } catch (error) {
      const why = refusedSpecialPath(error)?.message ?? (error as Error).message;
      warn(`disk cache ${dir} unusable (${why}); keeping the memory cache only`);
      return undefined;
    }
  }

  /**
   * The cache at `dir` to look at (`erofs-oci cache`, `metrics`), creating nothing: undefined
   * when nothing was ever cached there. Throws (Error, the reason) where open() would refuse it.
   */
  static openExisting(dir: string): DiskCache | undefined {
    try {
      Deno.lstatSync(`${dir}/blobs`);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return undefined;
      throw new Error(`cannot read the disk cache ${dir}: ${(error as Error).message}`);
    }
    let refused = "";
    const cache = DiskCache.open({ dir, onWarning: (message) => refused = message });
    if (!cache) throw new Error(refused.replace(/; keeping the memory cache only$/, ""));
    return cache;
  }

  /** Where the files of blob `key` are, without their extension (.map, .data, .meta…). */
  #baseOf(key: BlobKey): string {
    const stem = blobNameStem(key.digest, key.origin, !!key.verify);
    return `${this.blobsDir}/${stem}.c${this.chunkBytes}`;
  }

  /**
   * Starts reading the sidecar of blob `key` (at most `maxBytes`) now, for the source wrap()
   * makes for that key later: a mount's server asks at its spec, so the read runs while the
   * layer's table is checked and its reader thread starts, not after.
   */
  readSidecarAhead(key: BlobKey, maxBytes: number): void {
    if (!CACHEABLE_DIGEST.test(key.digest)) return;
    const base = this.#baseOf(key);
    if (!this.#sidecarsAhead.has(base)) {
      this.#sidecarsAhead.set(base, readSidecarFile(base, maxBytes));
    }
  }

  /**
   * `inner` behind the disk cache, or `inner` itself when the key cannot name a file.
   * `readOnce`: its reader reads it whole now (`mount --index-missing`), so no background
   * completion even under `--fetch-all`.
   */
  wrap(inner: Source, key: BlobKey, options: { readOnce?: boolean } = {}): Source {
    if (!CACHEABLE_DIGEST.test(key.digest) || inner.size <= 0) return inner;
    let base = "";
    try {
      base = this.#baseOf(key);
      const ahead = this.#sidecarsAhead.get(base);
      this.#sidecarsAhead.delete(base);
      let completing = false;
      const source = DiskCachedSource.open(this, inner, base, key.verify, ahead, {
        digest: key.digest,
        // A reader that reads it whole hashes it as it passes (refuseBytes on a mismatch).
        auto: this.#checkCompleteBlobs && !options.readOnce,
        report: (digest, end, tookMs) =>
          this.#reportDigestCheck(digest, inner.size, end, tookMs, completing),
      });
      this.#open.add(source);
      if (this.#complete && !options.readOnce) {
        completing = this.#completeInBackground(source, key.digest);
      }
      return source;
    } catch (error) {
      this.warnOnce(`disk cache ${base}: ${(error as Error).message}; memory cache only`);
      return inner;
    }
  }

  /**
   * Says how a whole-blob hash ended: a mismatch as a warning (the source has dropped the
   * blob's chunks and fails its reads), a match as a notice unless `--fetch-all` completes the
   * blob (its own notice then says so).
   */
  #reportDigestCheck(
    digest: string,
    sizeBytes: number,
    end: DigestCheckEnd,
    tookMs: number,
    completing: boolean,
  ): void {
    if (end === "mismatch") {
      this.#warn(
        `${digest}: complete in the disk cache, but the bytes do not match the digest: its ` +
          "cached chunks are dropped and reads of this layer fail (EIO)",
      );
      noteChunkMismatch(digest);
    } else if (end === "ok" && !completing) {
      this.#notice(`${digest}: all ${sizeBytes} bytes cached, digest verified (${tookMs} ms)`);
    }
  }

  /**
   * `--fetch-all` of one blob, unless it cannot stay whole in the cache: a blob larger than
   * the bound is not started, one whose fetched chunks get evicted (the blobs in use together
   * pass the bound) is stopped; either is said once, and its reads still fetch what they need.
   * True when started.
   */
  #completeInBackground(source: DiskCachedSource, digest: string): boolean {
    const fits = Math.floor(this.maxBytes * EVICT_TO);
    if (source.size > fits) {
      this.#warn(
        `--fetch-all: ${digest} (${formatBytes(source.size)}) is larger than the disk cache ` +
          `(${formatBytes(this.maxBytes)}): only what is read of it is fetched; raise ` +
          "--disk-cache-size to fetch it all",
      );
      return false;
    }
    const startedMs = Date.now();
    source.completeInBackground().then(async (end) => {
      if (end === "evicted") {
        this.#warn(
          `--fetch-all: ${digest}: the disk cache (${formatBytes(this.maxBytes)}) cannot hold ` +
            "it beside the other layers in use: stopped, only what is read of it is fetched " +
            "from now on; raise --disk-cache-size",
        );
        return;
      }
      if (end !== "complete") return;
      // The check a blob without a table starts by itself once complete (joined, not run
      // twice); a mismatch is said by #reportDigestCheck.
      const checked = await source.checkDigest(digest);
      if (checked === "incomplete") {
        if (!source.closed) {
          this.#warn(
            `--fetch-all: ${digest}: a part was evicted (the disk cache is short of room) or ` +
              "could not be mended before the whole could be checked against the digest; " +
              "not verified",
          );
        }
        return;
      }
      if (checked === "mismatch") return;
      this.#notice(
        `${digest}: all ${source.size} bytes local (${Date.now() - startedMs} ms), digest verified`,
      );
    }).catch((error) => this.warnOnce(`--fetch-all ${digest}: ${error.message}`));
    return true;
  }

  /** readIfPresent (disk_cache_probe.ts): a blob's bytes probed before any source. */
  readIfPresent(key: BlobKey, sizeBytes: number, offset: number, length: number) {
    return readIfPresent(this, key, sizeBytes, offset, length);
  }

  /** dropIfUnlike (disk_cache_probe.ts): kept bytes other than the registry's are dropped. */
  dropIfUnlike(key: BlobKey, sizeBytes: number, offset: number, good: Uint8Array): void {
    dropIfUnlike(this, key, sizeBytes, offset, good);
  }

  /** @internal sources report their close here. */
  released(source: DiskCachedSource): void {
    this.#open.delete(source);
  }

  /** Says `message` every time (the caller throttles it); warnOnce says a problem once. */
  warn(message: string): void {
    this.#warn(message);
  }

  warnOnce(message: string): void {
    const key = message.replace(/\d+/g, "#");
    if (this.#warned.has(key)) return;
    this.#warned.add(key);
    this.#warn(message);
  }

  /**
   * @internal room for `wantBytes` about to be written (a fill's run, a sidecar), before they
   * are fetched: undefined when even eviction (for which this makes room first) leaves less
   * than `unitBytes` under the bound or above keep-free; else a reservation of `wantBytes`, or
   * of fewer whole units when only those fit. `allocate(bytes)` takes the blocks in the file
   * (fallocate) and says whether it could (false: the file system cannot allocate ahead, the
   * reservation is then counted here only); its errors are thrown to the caller.
   */
  reserve(
    wantBytes: number,
    unitBytes: number,
    allocate: (bytes: number) => boolean,
  ): Reservation | undefined {
    let fitting = this.#room.fitting(wantBytes);
    if (fitting < wantBytes) {
      // Not scanned (the directory is gone; said once): no room is known, nothing is stored.
      if (!this.evict(wantBytes)) return undefined;
      fitting = this.#room.fitting(wantBytes, true);
    }
    const bytes = fitting >= wantBytes ? wantBytes : Math.floor(fitting / unitBytes) * unitBytes;
    if (wantBytes > 0 && bytes <= 0) {
      this.warnOnce(
        `disk cache ${this.dir}: no room left under its bound and --disk-cache-keep-free ` +
          "(the blobs open in other processes hold it): reads are served without being stored",
      );
      return undefined;
    }
    return this.#room.reserve(bytes, allocate(bytes));
  }

  /** Written `bytes`: every #checkEveryBytes the whole cache is scanned again (evict). */
  #noteWritten(bytes: number): void {
    this.#writtenSinceCheck += bytes;
    if (this.#writtenSinceCheck >= this.#checkEveryBytes) this.evict();
  }

  get usageBytes(): number {
    return this.#room.usageBytes;
  }

  /**
   * When the cache holds more than it may (its bound, or less to leave keepFreeBytes free) —
   * with `needBytes` more, about to be reserved — frees down to 90% of that (at most, less by
   * `needBytes`): first whole blobs nobody has open (least recently used first, by the map's
   * mtime), then chunks of the open ones, least recently read first. What it holds is counted
   * from the files, so other processes' fills (and their reservations) count too. False when
   * the cache's directory could not be read (said once).
   */
  evict(needBytes = 0): boolean {
    if (this.#evicting) return true;
    this.#evicting = true;
    this.#writtenSinceCheck = 0;
    try {
      // Space a killed process's fills left allocated in blobs open here goes before any
      // chunk anybody can read (disk_cache_reclaim.ts).
      for (const source of this.#open) source.reclaimUnfilled();
      let blobs;
      try {
        blobs = scanBlobs(this.blobsDir);
      } catch (error) {
        // Its directory removed or made unreadable under us: the open blobs go on; said once.
        this.warnOnce(`disk cache ${this.dir}: ${(error as Error).message}; not evicting`);
        return false;
      }
      this.#room.counted(blobs.reduce((sum, blob) => sum + blob.bytes, 0));
      let usage = this.#room.usageBytes;
      const limit = this.#limitBytes(usage);
      if (usage + needBytes <= limit) return true;
      const target = Math.max(0, Math.min(Math.floor(limit * EVICT_TO), limit - needBytes));
      blobs.sort((a, b) => a.usedMs - b.usedMs);
      for (const blob of blobs) {
        if (usage <= target) break;
        if (removeIfUnused(blob.base)) usage -= blob.bytes;
      }
      const sources = [...this.#open].sort((a, b) => a.lastUsedMs - b.lastUsedMs);
      for (const source of sources) {
        if (usage <= target) break;
        usage -= source.evictChunks(usage - target);
      }
      this.#room.counted(usage - this.#room.unallocatedBytes);
      return true;
    } finally {
      this.#evicting = false;
    }
  }

  /** What the cache may hold now that it holds `usageBytes`: its bound, or less for keepFreeBytes. */
  #limitBytes(usageBytes: number): number {
    const room = usageBytes + this.#room.freeBytes(0, true);
    if (room >= this.maxBytes) return this.maxBytes;
    this.warnOnce(
      `disk cache ${this.dir}: leaving ${formatBytes(this.keepFreeBytes)} free on its file ` +
        `system (--disk-cache-keep-free), it holds at most ${formatBytes(Math.max(0, room))} ` +
        `now instead of ${formatBytes(this.maxBytes)}`,
    );
    return Math.max(0, room);
  }

  /**
   * True when some file set of blob `digest` (any origin, any chunk size) holds a sidecar
   * (`.meta`, DiskCachedSource.writeSidecar): a mount of it finds its listed metadata here.
   */
  hasSidecar(digest: string): boolean {
    const prefix = blobFilePrefix(digest);
    try {
      for (const entry of Deno.readDirSync(this.blobsDir)) {
        if (entry.name.startsWith(prefix) && entry.name.endsWith(".meta")) return true;
      }
    } catch { /* unreadable: as if there were none */ }
    return false;
  }

  /** Every blob on disk, most recently used first (`erofs-oci cache`). */
  blobs(): CachedBlob[] {
    return scanBlobs(this.blobsDir).sort((a, b) => b.usedMs - a.usedMs).flatMap((blob) =>
      describeBlob(blob.base, blob.bytes, blob.usedMs, blob.hasMetadata) ?? []
    );
  }

  /**
   * Removes the blobs no process has open, least recently used first, until the cache holds at
   * most `keepBytes` (0: every unused blob), of those last used before `usedBeforeMs` (epoch ms)
   * only; blobs in use keep all they hold. The same removal as eviction's, under each blob's
   * in-use lock: a mount opening one meanwhile gets new files.
   */
  prune(keepBytes = 0, usedBeforeMs = Infinity): { removedBlobs: number; freedBytes: number } {
    let removedBlobs = 0, freedBytes = 0;
    // Damage goes whatever the bounds: a blob with a map that is no regular file is open in
    // no process, and may hold no bytes to count (its map all it has left).
    const blobs = scanBlobs(this.blobsDir).filter((blob) => {
      if (!removeIfMapDamaged(blob.base)) return true;
      removedBlobs++;
      freedBytes += blob.bytes;
      return false;
    }).sort((a, b) => a.usedMs - b.usedMs);
    let usage = blobs.reduce((sum, blob) => sum + blob.bytes, 0);
    for (const blob of blobs) {
      if (usage <= keepBytes || blob.usedMs >= usedBeforeMs) break;
      if (!removeIfUnused(blob.base)) continue;
      usage -= blob.bytes;
      freedBytes += blob.bytes;
      removedBlobs++;
    }
    this.#room.counted(usage);
    return { removedBlobs, freedBytes };
  }
}
