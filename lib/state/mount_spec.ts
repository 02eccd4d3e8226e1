/**
 * What a mount server is handed to serve one mount (MountSpec), and where each layer's bytes
 * come from (LayerSpec): built by mount, and by reattach from what was recorded.
 */
import type { ChunkTableSpec } from "../verify/layer_tables.ts";
import type { IndexRecord } from "../gzip/index_record.ts";
import { registryOrigin, tableCacheOrigin } from "../source/disk_cache_names.ts";

/** Memory cache of one mount's server unless `--cache-size` says otherwise: 32 MiB keeps the
 * server under 150 MB RSS (Deno itself is ~70 MB; see docs/benchmarks.md). */
export const DEFAULT_MOUNT_CACHE_BYTES = 32 << 20;
/** Bytes a layer's memory cache holds at least, whatever the mount's --cache-size. */
export const MIN_LAYER_CACHE_BYTES = 4 << 20;

/**
 * What statfs and stat said of an EROFS mounted from a layer (lib/recovery/erofs_identity.ts
 * ErofsIdentity, its 64-bit numbers as decimal strings): a FUSE reattach serves the layer only
 * when its image has the same.
 */
export interface StoredErofsIdentity {
  blockSizeBytes: number;
  blocks: string;
  inodes: string;
  fsid?: string;
  rootMtimeMs?: number[];
}

/** Where one layer's bytes come from; also what reattach rebuilds a server from. */
export type LayerSpec =
  | {
    kind: "local";
    path: string;
    sizeBytes: number;
    /**
     * `dev:ino` of the file `mount` checked (an EROFS image): the server serves that file only,
     * not whatever the path leads to when it opens it (another user's directory on the way).
     */
    fileId?: string;
    /**
     * An OCI layout blob or a local tar file: opened without following symlinks and verified
     * before serving — hashed whole, or, served through a tar index with piece digests, each
     * piece as it is read (as a registry layer's) after the first one is checked at open.
     */
    digest?: string;
    /**
     * A local tar file whose digest `mount` took from the one index of the file's size,
     * unhashed: a mismatch says the index is another file's (or the file changed).
     */
    digestFromIndex?: boolean;
    /** A tar or tar+gzip layout blob: served through its index, as a registry's. */
    tarIndex?: TarIndexSpec;
  }
  | {
    kind: "registry";
    registry: string;
    repository: string;
    reference: string;
    platform: string;
    layerIndex: number;
    digest: string;
    mediaType: string;
    sizeBytes: number;
    plainHttp: boolean;
    /**
     * An ordinary tar+gzip layer served as [meta][tar] through its index files (kept in a
     * durable place: reattach opens them again).
     */
    tarIndex?: TarIndexSpec;
    /** The layer's chunk-digest table: every byte fetched is checked against it. */
    chunkTable?: ChunkTableSpec;
    /**
     * The EROFS block size in the superblock `mount` checked (EROFS layers): the NBD device's
     * block size is chosen from it without reading the layer first. Only the device's geometry
     * depends on it (a wrong one fails the mount); the kernel reads the verified superblock.
     */
    erofsBlockBytes?: number;
  };

/**
 * The origin a registry layer's bytes are kept under in the disk cache (its registry's, and
 * behind a chunk table that table's); undefined for a local layer, which is not cached there.
 */
export function diskCacheOrigin(layer: LayerSpec): string | undefined {
  if (layer.kind !== "registry") return undefined;
  const origin = registryOrigin(layer.registry, layer.plainHttp);
  return layer.chunkTable ? tableCacheOrigin(origin, layer.chunkTable.digest) : origin;
}

/**
 * Whether every byte read through `index` is checked against its piece digests (an index made
 * by `erofs-oci index`), so the blob under it needs no whole-blob hash before serving.
 */
export function readsCheckedByPieces(index: TarIndexSpec | undefined): boolean {
  return index?.pieces !== undefined && index.record?.pieces !== undefined;
}

/**
 * Index files of a tar layer. `record` binds them to the layer (made by `erofs-oci index`);
 * without it (files from erofs-utils) nothing ties them to the blob and reads are unverified.
 */
export const TAR_INDEX_ORIGINS = ["here", "registry", "dir", "files"] as const;
export type TarIndexOrigin = typeof TAR_INDEX_ORIGINS[number];

export interface TarIndexSpec {
  meta: string;
  zinfo?: string;
  pieces?: string;
  record?: IndexRecord;
  /**
   * Where the index came from: made on this host from bytes checked against the layer digest
   * ("here"), or from elsewhere (the registry's referrers, --index DIR, --tarindex), whose piece
   * digests and offsets nothing binds to the layer digest.
   */
  origin?: TarIndexOrigin;
  /**
   * How the device lays the layer out (lib/mount/tar_layout.ts): "512" = [meta][tar] as
   * erofs-utils, "4k" = re-laid out for kernels before 6.4. Unset: chosen for this kernel.
   */
  layout?: "512" | "4k";
  /**
   * sha256 of the meta image when the mount first opened it (`sha256:…`): a reattach serves
   * the device only from the same bytes (a `--tarindex` file has no index record to pin it).
   */
  metaDigest?: string;
  /** The same for the zinfo (its sha256 when the mount first opened it). */
  zinfoDigest?: string;
}

/** Everything the server needs to serve one mount (sent over its stdin, never to disk). */
export interface MountSpec {
  id: string;
  target: string;
  image: string;
  manifestDigest?: string;
  backend: "nbd" | "fuse";
  cacheBytes: number;
  layers: LayerSpec[];
  credentials?: { username: string; password: string };
  upper?: string;
  work?: string;
  /**
   * Reattach: per layer, the connected device to RECONFIGURE (instead of CONNECT) and the
   * backend identifier (recovery file path) it was connected with.
   */
  reattach?: { index: number; backendId: string; expect?: StoredErofsIdentity }[];
  /**
   * Reattach while the registry is unreachable: report ready at once, then retry with backoff
   * until each layer's blob answers (and matches), and only then RECONFIGURE its device.
   * Readers keep waiting in the kernel meanwhile.
   */
  awaitSource?: boolean;
  /** `mount --metrics-listen` (unix:PATH or tcp:HOST:PORT): the server answers scrapes there. */
  metricsListen?: string;
  /** `--log-format json` of the mount: every line of the server log is one JSON object. */
  logFormat?: "json";
  /**
   * The mount's disk cache options; a server takes them over its inherited environment, so one
   * `reattach` starts (run with an environment of its own) keeps them too.
   */
  diskCache?: DiskCacheSettings;
}

/** `mount --disk-cache-size` / `--no-disk-cache` (maxBytes 0), `--disk-cache-keep-free`, `--fetch-all`. */
export interface DiskCacheSettings {
  /** EROFS_OCI_CACHE_DIR (unset: the default directory). */
  dir?: string;
  /** Unset: the default bound; 0: no disk cache. */
  maxBytes?: number;
  keepFreeBytes?: number;
  fetchAll?: boolean;
}
