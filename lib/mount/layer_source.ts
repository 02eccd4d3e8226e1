/** Opens the byte source a LayerSpec describes (the same spec mount and reattach build). */
import { mark } from "../timing.ts";
import { noteBlobFetched } from "../source/fetch_metrics.ts";
import { warn } from "../log.ts";
import { FormatError } from "../errors.ts";
import { RegistryClient } from "../oci/client.ts";
import { refetchFromRegistry, RegistryBlob } from "../oci/registry_blob.ts";
import { LocalFile } from "../source/local_file.ts";
import { openLayoutBlob } from "../oci/layout_file.ts";
import type { Source } from "../source/source.ts";
import { type BlobKey, DiskCache } from "../source/disk_cache.ts";
import {
  diskCacheOrigin,
  type DiskCacheSettings,
  type LayerSpec,
  readsCheckedByPieces,
} from "../state/mount_spec.ts";
import { verifiedBlob } from "../verify/layer_tables.ts";
import { registryOrigin } from "../source/disk_cache_names.ts";
import {
  loadMetadataRanges,
  type MetadataPiece,
  type MetadataSidecar,
} from "../verify/load_metadata_ranges.ts";
import {
  LISTED_HEAD_BYTES,
  MAX_METADATA_BYTES,
  type MetadataRanges,
  rangesCoverStart,
} from "../verify/metadata_ranges.ts";
import { SHA256_BYTES } from "../verify/sha256_list.ts";

/**
 * The list's bytes `mount` fetched while this server started (handed_metadata.ts), in the
 * sidecar's format, with the digest of their pack part (sidecarPackDigest) on its way.
 */
export interface HandedSidecar {
  bytes: Uint8Array;
  packDigest: Promise<string>;
}

/** Fetches (or reads back from the disk cache) a layer's listed metadata, each range checked. */
export type MetadataLoader = (
  signal?: AbortSignal,
  handed?: HandedSidecar,
  /** Told the checked pieces of the image head first (loadMetadataRanges' onHead). */
  onHead?: (pieces: MetadataPiece[]) => void,
) => Promise<{ pieces: MetadataPiece[]; note: string }>;

const metadataLoaders = new WeakMap<Source, MetadataLoader>();
/** Sources whose list holds the image head (LISTED_HEAD_BYTES, lists made since 2026-12-02). */
const headsListed = new WeakSet<Source>();

/**
 * Whether the metadata list of `source` (openLayerSource) holds the image head: once the list
 * is pinned, a new NBD device's partition scan reads pinned pages only.
 */
export function listHoldsHead(source: Source): boolean {
  return headsListed.has(source);
}

/**
 * The loader of the metadata range list in the chunk table of the layer `source` was opened
 * for (openLayerSource), if its table has one: the mount prefetch pins those pages first.
 */
export function metadataLoaderOf(source: Source): MetadataLoader | undefined {
  return metadataLoaders.get(source);
}

function sidecarOf(source: Source): (MetadataSidecar & { hit(bytes: number): void }) | undefined {
  const s = source as Partial<{
    readSidecar(maxBytes: number): Promise<Uint8Array | undefined>;
    writeSidecarSoon(bytes: Uint8Array, delayMs: number): void;
    countSidecarHit(bytes: number): void;
  }>;
  if (
    typeof s.readSidecar !== "function" || typeof s.writeSidecarSoon !== "function" ||
    typeof s.countSidecarHit !== "function"
  ) {
    return undefined;
  }
  return {
    read: (maxBytes) => s.readSidecar!(maxBytes),
    // Kept for the next mount, but not on this mount's way to ready.
    write: (bytes) => s.writeSidecarSoon!(bytes, SIDECAR_WRITE_DELAY_MS),
    hit: (bytes) => s.countSidecarHit!(bytes),
  };
}

/** After the mount's ready (its set-up waits 25 ms after the directories, metadata_prefetch.ts). */
const SIDECAR_WRITE_DELAY_MS = 100;

function registerMetadata(source: Source, ranges: MetadataRanges, blob: RegistryBlob): void {
  if (rangesCoverStart(ranges, Math.min(LISTED_HEAD_BYTES, source.size))) headsListed.add(source);
  metadataLoaders.set(source, async (signal, handed, onHead) => {
    const sidecar = sidecarOf(source);
    const loaded = await loadMetadataRanges(ranges, blob, {
      sidecar,
      signal,
      handed: handed?.bytes,
      handedPackDigest: handed?.packDigest,
      onHead: onHead && { bytes: LISTED_HEAD_BYTES, take: onHead },
    });
    // What `list` counts: bytes `mount` fetched for this server as fetched (its GETs are not
    // this process's requests), bytes read back from the disk cache as its hits.
    if (handed) noteBlobFetched(blob.digest, 0, loaded.keptBytes);
    else sidecar?.hit(loaded.keptBytes);
    mark("server: listed metadata checked");
    return {
      pieces: loaded.pieces,
      note: `list of ${ranges.offsets.length} ranges: ${loaded.fromSidecar} from disk, ` +
        (handed ? `${loaded.fromHanded} from mount, ` : "") +
        `${loaded.fetched} fetched` + (loaded.bad ? `, ${loaded.bad} did not match` : ""),
    };
  });
}

/**
 * The host's disk cache, opened once per process. Configured by the environment, which the
 * detached server inherits, with the settings (SETTINGS_ENV) a mount's spec and state also
 * carry for its server and a `reattach`: EROFS_OCI_CACHE_DIR, EROFS_OCI_DISK_CACHE_BYTES (the
 * bound; 0 turns it off, as `--no-disk-cache` does), EROFS_OCI_DISK_CACHE_KEEP_FREE (bytes it
 * leaves free on its file system), EROFS_OCI_FETCH_ALL=1 (`--fetch-all`: each layer completed
 * in the background).
 */
let diskCache: DiskCache | undefined | null;
export function sharedDiskCache(): DiskCache | undefined {
  if (diskCache !== undefined) return diskCache ?? undefined;
  const { maxBytes, keepFreeBytes, fetchAll } = diskCacheSettings();
  diskCache = maxBytes === 0 ? null : DiskCache.open({
    maxBytes,
    keepFreeBytes,
    completeInBackground: fetchAll,
    // Told as every warning is (`erofs-oci: warning: …`, or JSON), not as bare console text.
    onWarning: warn,
  }) ?? null;
  return diskCache ?? undefined;
}

const SETTINGS_ENV = {
  dir: "EROFS_OCI_CACHE_DIR",
  maxBytes: "EROFS_OCI_DISK_CACHE_BYTES",
  keepFreeBytes: "EROFS_OCI_DISK_CACHE_KEEP_FREE",
  fetchAll: "EROFS_OCI_FETCH_ALL",
} as const;

/** The disk cache settings this process's environment holds (for the mount's spec and state). */
export function diskCacheSettings(): DiskCacheSettings {
  const number = (name: string) => {
    const value = Number(Deno.env.get(name) || NaN);
    return Number.isFinite(value) ? value : undefined;
  };
  return {
    dir: Deno.env.get(SETTINGS_ENV.dir) || undefined,
    maxBytes: number(SETTINGS_ENV.maxBytes),
    keepFreeBytes: number(SETTINGS_ENV.keepFreeBytes),
    fetchAll: Deno.env.get(SETTINGS_ENV.fetchAll) === "1" || undefined,
  };
}

/**
 * Makes `settings` this process's disk cache settings (before sharedDiskCache first runs): a
 * mount server takes those of its mount over the environment it was started with.
 */
export function useDiskCacheSettings(settings: DiskCacheSettings): void {
  const set = (name: string, value: string | undefined) =>
    value === undefined ? Deno.env.delete(name) : Deno.env.set(name, value);
  set(SETTINGS_ENV.dir, settings.dir);
  set(SETTINGS_ENV.maxBytes, settings.maxBytes?.toString());
  set(SETTINGS_ENV.keepFreeBytes, settings.keepFreeBytes?.toString());
  set(SETTINGS_ENV.fetchAll, settings.fetchAll ? "1" : undefined);
}

/** The disk cache is turned off (told without opening it, which sharedDiskCache does). */
export function diskCacheTurnedOff(): boolean {
  return diskCacheSettings().maxBytes === 0;
}

/**
 * Starts reading, from the disk cache, the listed metadata an earlier mount kept for each
 * layer of `layers` that has a chunk table (a remount's 2.3 MB for the benchmark image): a
 * mount server asks at its spec, and openLayerSource's source then finds the bytes read.
 */
export function readListedMetadataAhead(layers: readonly LayerSpec[]): void {
  const cache = sharedDiskCache();
  if (!cache) return;
  for (const layer of layers) {
    if (layer.kind !== "registry" || !layer.chunkTable) continue;
    cache.readSidecarAhead(diskCacheKey(layer), SHA256_BYTES + MAX_METADATA_BYTES);
  }
}

/**
 * The disk-cache key of a registry layer: its registry's origin, and behind a chunk table that
 * table's (verifiedBlob: its chunks were all checked against it).
 */
function diskCacheKey(layer: Extract<LayerSpec, { kind: "registry" }>): BlobKey {
  return { digest: layer.digest, origin: diskCacheOrigin(layer)! };
}

/**
 * The spec's size is what `mount` saw (a file's size, an OCI layout descriptor's size); the
 * source is refused unless its real size agrees, because every bound check after this trusts
 * it. A registry blob's real size is checked on each reply (Content-Range total).
 */
export async function openLayerSource(
  layer: LayerSpec,
  credentials?: { username: string; password: string },
  options: { hashOnEventLoop?: boolean } = {},
): Promise<Source> {
  // An OCI layout blob or a tar file: opened without following symlinks, size checked and its
  // digest verified — unless each piece read through its tar index is (tar_index_source.ts
  // then checks the first piece at open): a large tar.gz is not read whole to mount it.
  if (layer.kind === "local" && layer.digest) {
    return await openLayoutBlob(layer, { hashWhole: !readsCheckedByPieces(layer.tarIndex) });
  }
  if (layer.kind === "local") {
    // Not followed through a symlink anywhere on the way: `mount` checked the file at this
    // path, and another user who owns a directory on it could have put a link to a file of
    // root's there since (it was served to them, a helper's repro).
    let file: LocalFile;
    try {
      file = await LocalFile.open(layer.path, { noSymlinks: true, fileId: layer.fileId });
    } catch (error) {
      const message = (error as Error).message;
      throw new FormatError(
        message.includes(layer.path) ? message : `${layer.path}: ${message}`,
        "it was replaced, or a directory on its path is a symlink now, since mount checked " +
          "it: mount it again",
        { cause: error },
      );
    }
    if (file.size !== layer.sizeBytes) {
      await file.close();
      throw new FormatError(
        `${layer.path} is ${file.size} bytes but ${layer.sizeBytes} were declared for it`,
        "the file changed since the mount started, or its descriptor is wrong",
      );
    }
    return file;
  }
  // The mount (or reattach) command resolved the image from this registry moments ago: a
  // connection refused now is a blip to ride out, not a typo (a restart right after the mount
  // failed the first reads at once).
  const client = new RegistryClient(layer.registry, {
    plainHttp: layer.plainHttp,
    credentials,
    reachedBefore: true,
  });
  const blob = new RegistryBlob(client, layer.repository, {
    index: layer.layerIndex,
    digest: layer.digest,
    sizeBytes: layer.sizeBytes,
    mediaType: layer.mediaType,
  });
  let source: Source = blob;
  let metadata: MetadataRanges | undefined;
  if (layer.chunkTable) {
    // Under the caches: nothing unverified is ever cached or served.
    const origin = registryOrigin(layer.registry, layer.plainHttp);
    const registry = { client, repository: layer.repository };
    const verified = await verifiedBlob(blob, layer.chunkTable, layer, origin, {
      ...options,
      registry,
      refetch: refetchFromRegistry(blob),
    }).catch(
      async (error) => {
        await blob.close();
        throw error;
      },
    );
    source = verified.source;
    metadata = verified.source.table.metadata;
  }
  const cache = sharedDiskCache();
  const opened = cache ? cache.wrap(source, diskCacheKey(layer)) : source;
  if (metadata) registerMetadata(opened, metadata, blob);
  return opened;
}
