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
 * This file is the cache as a whole: opening it, wrapping sources. Its directory and whether
 * it may be trusted is disk_cache_dir.ts; the bound, eviction and prune disk_cache_bound.ts. One
 * blob's source is disk_cached.ts; the blobs as files (scan, removal) disk_cache_scan.ts; probes
 * before any source exists disk_cache_probe.ts; the file system it lives on (refused kinds,
 * space left free) disk_cache_fs.ts.
 */
import type { Source } from "./source.ts";
import { readSidecarFile } from "./disk_cache_sidecar.ts";
import { type DigestCheckEnd, DiskCachedSource } from "./disk_cached.ts";
import type { VerifyChunk } from "./disk_cache_fetch.ts";
import { type CachedBlob, describeBlob } from "./disk_cache_contents.ts";
import { blobFilePrefix, blobNameStem } from "./disk_cache_names.ts";
import { noteChunkMismatch } from "./fetch_metrics.ts";
import { availableBytesOf, defaultKeepFreeBytes } from "./disk_cache_fs.ts";
import { CACHEABLE_DIGEST, dropIfUnlike, readIfPresent } from "./disk_cache_probe.ts";
import type { Reservation } from "./disk_cache_room.ts";
import { scanBlobs } from "./disk_cache_scan.ts";
import { CacheBound, EVICT_TO, type PruneResult } from "./disk_cache_bound.ts";
import { diskCacheDir, trustedCacheDir, usableCacheDir } from "./disk_cache_dir.ts";
import { refusedSpecialPath } from "../errors.ts";
import { formatBytes } from "../text.ts";
/** A few GiB: a handful of images' worth of layers, small beside any disk that runs them. */
export const DEFAULT_DISK_CACHE_BYTES = 4 * 1024 ** 3;
/**
 * 256 KiB: the unit of presence, verification and eviction. The metadata prefetch at mount
 * reads scattered pages, each fetched as a whole chunk: on the 136 MB benchmark image 1 MiB
 * chunks fetched most of the image at mount (76 GETs, server peak 168 MB), 256 KiB 154 GETs
 * and a peak of 141 MB; sequential reads are fetched as runs of chunks either way.
 */
export const DEFAULT_DISK_CHUNK_BYTES = 1 << 18;
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
  readonly #warn: (message: string) => void;
  readonly #complete: boolean;
  readonly #checkCompleteBlobs: boolean;
  readonly #notice: (message: string) => void;
  readonly #warned = new Set<string>();
  readonly #open = new Set<DiskCachedSource>();
  /** Sidecar reads started ahead of wrap(), by blob base path (readSidecarAhead). */
  readonly #sidecarsAhead = new Map<string, Promise<Uint8Array | undefined>>();
  /** The bound and keep-free kept: reservations, eviction, prune (disk_cache_bound.ts). */
  readonly #bound: CacheBound;

  private constructor(dir: string, options: DiskCacheOptions) {
    this.dir = dir;
    this.blobsDir = `${dir}/blobs`;
    this.maxBytes = options.maxBytes ?? DEFAULT_DISK_CACHE_BYTES;
    this.chunkBytes = options.chunkBytes ?? DEFAULT_DISK_CHUNK_BYTES;
    this.keepFreeBytes = options.keepFreeBytes ?? defaultKeepFreeBytes(dir);
    this.othersFillWaitMs = options.othersFillWaitMs;
    this.#bound = new CacheBound(this, this.#open, (message) => this.warnOnce(message));
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
      const resolved = usableCacheDir(dir, options.fileSystemType);
      const cache = new DiskCache(resolved, options);
      cache.#bound.countFromDisk();
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
      if (!(error instanceof Deno.errors.NotFound)) {
        throw new Error(`cannot read the disk cache ${dir}: ${(error as Error).message}`);
      }
      // Nothing cached, or a directory a mount refuses (said as open() says it: why nothing
      // gets cached is what `erofs-oci cache` is run to find out).
      try {
        Deno.lstatSync(dir);
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) return undefined;
      }
      try {
        trustedCacheDir(dir);
      } catch (error) {
        const why = refusedSpecialPath(error)?.message ?? (error as Error).message;
        throw new Error(`disk cache ${dir} unusable (${why})`);
      }
      return undefined;
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
   * Why a blob of `size` bytes could not stay whole in the cache, and what gives it room: the
   * bound, or (on a small or full file system) the free space the cache leaves there.
   */
  #whyNoRoomFor(size: number): string {
    const stopped = "stopped, only what is read of it is fetched from now on";
    const available = availableBytesOf(this.dir);
    if (available !== undefined && available - this.keepFreeBytes < size) {
      return `the file system of the disk cache ${this.dir} has too little free space for it ` +
        `beside the ${formatBytes(this.keepFreeBytes)} the cache leaves free ` +
        `(--disk-cache-keep-free): ${stopped}; free space there, or lower ` +
        "--disk-cache-keep-free";
    }
    return `the disk cache (${formatBytes(this.maxBytes)}) cannot hold it beside the other ` +
      `layers in use: ${stopped}; raise --disk-cache-size`;
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
        this.#warn(`--fetch-all: ${digest}: ${this.#whyNoRoomFor(source.size)}`);
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

  /** @internal CacheBound.reserve (disk_cache_bound.ts): room for bytes about to be written. */
  reserve(
    wantBytes: number,
    unitBytes: number,
    allocate: (bytes: number) => boolean,
  ): Reservation | undefined {
    return this.#bound.reserve(wantBytes, unitBytes, allocate);
  }

  get usageBytes(): number {
    return this.#bound.usageBytes;
  }

  /** CacheBound.evict (disk_cache_bound.ts): frees down to 90% of what the cache may hold. */
  evict(needBytes = 0): boolean {
    return this.#bound.evict(needBytes);
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

  /** CacheBound.prune (disk_cache_bound.ts): removes unused blobs, least recently used first. */
  prune(keepBytes = 0, usedBeforeMs = Infinity): PruneResult {
    return this.#bound.prune(keepBytes, usedBeforeMs);
  }
}
