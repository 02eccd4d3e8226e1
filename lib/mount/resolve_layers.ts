/**
 * Turns the IMAGE argument of `mount` into the layers to serve: a local EROFS file, or the
 * selected layers of a registry image (resolved to digests, so a tag that moves later cannot
 * swap the data under a mounted file system).
 */
import { FormatError, UsageError, UserError } from "../errors.ts";
import { checkErofsSuperblock, EROFS_SUPER_END, hasErofsMagic } from "../erofs/superblock.ts";
import { LayoutFile } from "../oci/layout_file.ts";
import { realPathTrusted, UntrustedSymlinkError } from "../../ffi/path_resolve.ts";
import { type LayerDescriptor, type LayerSelection, selectLayers } from "../oci/layers.ts";
import { formatReference } from "../oci/reference.ts";
import type { OpenedRegistry } from "../oci/opened.ts";
import { type FetchedManifest, layerDescriptorsOf, type ResolvedImage } from "../oci/resolve.ts";
import { formatLayoutReference, OciLayout, parseLayoutReference } from "../oci/oci_layout.ts";
import { indexCacheDir } from "../state/runtime_dirs.ts";
import type { LayerSpec } from "../state/mount_spec.ts";
import { OCI_TAR, OCI_TAR_GZIP, tarLayerKind } from "./tar_layers.ts";
import {
  findTarIndexes,
  indexedDigestOfSize,
  layersThroughIndex,
  type TarIndexSources,
} from "./tar_indexes.ts";
import { isLocalImage } from "./local_image.ts";

export type { TarIndexSources };
export { isLocalImage };
import { keepBlob, readKeptBlob } from "../oci/kept_blobs.ts";
import { sharedDiskCache } from "./layer_source.ts";
import { registryOrigin } from "../source/disk_cache_names.ts";

export interface ResolvedLayers {
  /** What `list` shows as the image. */
  image: string;
  manifestDigest?: string;
  layers: LayerSpec[];
}

/**
 * A local file: an EROFS image, or a tar or tar.gz file mounted through its index like an
 * image's tar layer (`--index DIR`, one made here, `--index-missing`).
 */
export async function resolveLocalImage(
  path: string,
  indexes: TarIndexSources = { cacheDir: indexCacheDir() },
): Promise<ResolvedLayers> {
  let real: string;
  try {
    // Not realpath: root would serve whatever another user's symlink led to (a 0600 image).
    real = realPathTrusted(path);
  } catch (error) {
    if (error instanceof UntrustedSymlinkError) throw error;
    throw new UserError(`cannot open image file ${path}: ${(error as Error).message}`);
  }
  const file = LayoutFile.open(real, "image file", "as an image");
  try {
    const head = await file.read(0, Math.min(EROFS_SUPER_END, file.size));
    const tarKind = indexes.files || !hasErofsMagic(head) ? await sniffTarKind(head) : undefined;
    if (!tarKind) {
      if (indexes.files) {
        throw new UsageError(`mount: --tarindex goes with a tar or tar.gz file, not ${real}`);
      }
      if (!hasErofsMagic(head) && (indexes.dir || indexes.indexMissing)) {
        throw new FormatError(
          `${real} is neither an EROFS image nor a tar or tar.gz file`,
          "--index and --index-missing mount tar files (POSIX, GNU or v7 tar, gzipped or not)",
        );
      }
      checkErofsSuperblock(head, real);
      return {
        image: real,
        layers: [{ kind: "local", path: real, sizeBytes: file.size, fileId: file.fileId }],
      };
    }
    // Indexes are found by the layer's digest, as an image's are: the one an index of the
    // file's size names (the server checks it), else the file's, hashed here.
    const indexedDigest = await indexedDigestOfSize(indexes, file.size);
    const layer: LayerDescriptor = {
      index: 0,
      digest: indexedDigest ?? await file.contentDigest(),
      sizeBytes: file.size,
      mediaType: tarKind === "gzip" ? OCI_TAR_GZIP : OCI_TAR,
    };
    const image: ResolvedImage = {
      manifestDigest: "",
      platform: "",
      platforms: [],
      mediaType: "",
      config: { digest: "", sizeBytes: 0, mediaType: "" },
      layers: [layer],
    };
    const found = await findTarIndexes({ kind: "file", path: real }, image, [layer], indexes);
    return {
      image: real,
      layers: [{
        kind: "local",
        path: real,
        sizeBytes: file.size,
        digest: layer.digest,
        ...(indexedDigest ? { digestFromIndex: true } : {}),
        tarIndex: found.get(layer.digest)!,
      }],
    };
  } finally {
    file.close();
  }
}

/**
 * "gzip" for a gzip stream, "tar" for a POSIX/GNU tar (its `ustar` magic) or a v7 tar (a first
 * header with a name and a checksum that matches: an EROFS image's first block is zeros), else
 * undefined. Their readers are loaded here only: a mount of an EROFS file needs neither.
 */
async function sniffTarKind(head: Uint8Array): Promise<"gzip" | "tar" | undefined> {
  const [{ isGzipMagic }, { BLOCK_BYTES, checksumMatches, hasUstarMagic }] = await Promise.all([
    import("../gzip/gzip_header.ts"),
    import("../tar/header.ts"),
  ]);
  if (isGzipMagic(head)) return "gzip";
  if (hasUstarMagic(head)) return "tar";
  const first = head.subarray(0, BLOCK_BYTES);
  return first.length === BLOCK_BYTES && first[0] !== 0 && checksumMatches(first)
    ? "tar"
    : undefined;
}

/**
 * `oci:PATH[:TAG]`: an OCI image layout on disk (air-gapped use). Its selected layer blobs are
 * plain files, served from one checked descriptor and verified against their digests.
 */
export async function resolveLayoutImage(
  image: string,
  platform: string | undefined,
  selection: LayerSelection,
  indexes: TarIndexSources = { cacheDir: indexCacheDir() },
): Promise<ResolvedLayers | undefined> {
  const ref = parseLayoutReference(image);
  if (!ref) return undefined;
  // Absolute: the blob paths go into the mount's records, which `reattach` (run from any
  // directory, `reattach --watch` from /) opens the layers by.
  const layoutPath = ref.layoutPath.startsWith("/")
    ? ref.layoutPath
    : `${Deno.cwd()}/${ref.layoutPath}`;
  const layout = new OciLayout(layoutPath);
  try {
    const resolved = await layout.resolveImage(ref, platform);
    const chosen = chooseLayers(resolved.layers, selection, indexes.files !== undefined);
    const tarIndexes = await findTarIndexes(
      { kind: "layout", name: formatLayoutReference(ref), ref, layout },
      resolved,
      layersThroughIndex(chosen, selection, indexes),
      indexes,
    );
    const layers: LayerSpec[] = [];
    for (const layer of chosen) {
      const tarIndex = tarIndexes.get(layer.digest);
      // One descriptor for the checks (no symlink, regular file, size, superblock); the
      // server opens and verifies the blob the same way before serving it.
      const file = layout.openBlob(layer.digest);
      try {
        if (file.size !== layer.sizeBytes) {
          throw new UserError(
            `blob ${layer.digest} in ${layout.path} is ${file.size} bytes but the manifest says ${layer.sizeBytes}`,
          );
        }
        if (!tarIndex) {
          const head = await file.read(0, Math.min(EROFS_SUPER_END, file.size));
          checkErofsSuperblock(head, `layer ${layer.index} (${layer.digest.slice(0, 19)}…)`);
        }
      } finally {
        file.close();
      }
      layers.push({
        kind: "local",
        path: layout.blobPath(layer.digest),
        sizeBytes: layer.sizeBytes,
        digest: layer.digest,
        ...(tarIndex ? { tarIndex } : {}),
      });
    }
    return {
      image: formatLayoutReference(ref),
      manifestDigest: resolved.manifestDigest,
      layers,
    };
  } finally {
    layout.close();
  }
}

/**
 * Told the platform manifest and the EROFS layers it will mount as soon as the manifest is
 * fetched, before the config blob and the layers' heads are asked for: see ManifestListener.
 */
export type SelectedLayersListener = (manifest: FetchedManifest, layers: LayerDescriptor[]) => void;

/**
 * The layers of a registry image to mount. `onLayers`: told them as soon as the manifest is
 * there; `top`: the reference's manifest, fetched already through `opened.client`.
 */
export async function resolveRegistryImage(
  opened: OpenedRegistry,
  selection: LayerSelection,
  indexes: TarIndexSources = { cacheDir: indexCacheDir() },
  onLayers?: SelectedLayersListener,
  top?: Promise<FetchedManifest>,
  stateDir?: string,
): Promise<ResolvedLayers> {
  const { ref, client } = opened;
  // The descriptor size is checked against the real one (Content-Range total) with the head.
  // A head already in the disk cache came from a reply of this size: no GET for it.
  // Heads read from the disk cache: one that fails the superblock check is read again from the
  // registry (the cache file may be damaged; its chunks are checked again when read).
  const headsFromCache = new WeakSet<Uint8Array>();
  const fetchHead = (layer: LayerDescriptor): Promise<Uint8Array> =>
    client.readBlobRange(
      ref.repository,
      layer.digest,
      0,
      Math.min(EROFS_SUPER_END, layer.sizeBytes),
      undefined,
      layer.sizeBytes,
    );
  const headCacheKey = (layer: LayerDescriptor) => ({
    digest: layer.digest,
    origin: registryOrigin(ref.registry, client.plainHttp),
  });
  const readHead = (layer: LayerDescriptor): Promise<Uint8Array> => {
    const cached = sharedDiskCache()?.readIfPresent(
      headCacheKey(layer),
      layer.sizeBytes,
      0,
      Math.min(EROFS_SUPER_END, layer.sizeBytes),
    );
    if (!cached) return fetchHead(layer);
    headsFromCache.add(cached);
    return Promise.resolve(cached);
  };
  // Heads asked for as soon as the manifest is there, side by side with its config blob.
  const heads = new Map<string, Promise<Uint8Array>>();
  const headKey = (layer: LayerDescriptor) => `${layer.digest} ${layer.sizeBytes}`;
  const onManifest = (manifest: FetchedManifest) => {
    if (manifest.document.kind !== "manifest") return;
    let chosen: LayerDescriptor[];
    try {
      chosen = chooseLayers(
        layerDescriptorsOf(manifest.document),
        selection,
        indexes.files !== undefined,
      );
    } catch {
      return; // the same choice below reports it
    }
    // The listener's GETs first: they start the longer chain (table, then metadata).
    if (onLayers && !indexes.files) {
      onLayers(manifest, chosen.filter((l) => tarLayerKind(l.mediaType) === undefined));
    }
    for (const layer of chosen) {
      if (heads.has(headKey(layer))) continue;
      const head = readHead(layer);
      head.catch(() => {}); // awaited below (its error is the mount's), or dropped with it
      heads.set(headKey(layer), head);
    }
  };
  // A config kept by an earlier mount of the image: its GET is a round trip before the spec.
  const keptConfigs = stateDir === undefined ? undefined : {
    read: (digest: string) => readKeptBlob(stateDir, "configs", digest),
    keep: (digest: string, bytes: Uint8Array) => keepBlob(stateDir, "configs", digest, bytes),
  };
  const image = await client.resolveImage(ref, opened.platform, { onManifest, top, keptConfigs });
  const chosen = chooseLayers(image.layers, selection, indexes.files !== undefined);
  const tarIndexes = await findTarIndexes(
    { kind: "registry", opened },
    image,
    layersThroughIndex(chosen, selection, indexes),
    indexes,
  );
  const layers: LayerSpec[] = [];
  for (const layer of chosen) {
    const head = await (heads.get(headKey(layer)) ?? readHead(layer));
    const tarIndex = tarIndexes.get(layer.digest);
    // Check the superblock before anything is attached: other data gets a clear error here
    // instead of the kernel's EINVAL later.
    let superblock;
    try {
      superblock = tarIndex ? undefined : registrySuperblock(head, layer);
    } catch (error) {
      if (!headsFromCache.has(head)) throw error;
      const fetched = await fetchHead(layer);
      superblock = registrySuperblock(fetched, layer);
      // The registry's head is EROFS, the cache file's is not: its chunk goes, fetched again.
      sharedDiskCache()?.dropIfUnlike(headCacheKey(layer), layer.sizeBytes, 0, fetched);
    }
    layers.push({
      kind: "registry",
      registry: ref.registry,
      repository: ref.repository,
      reference: formatReference(ref),
      platform: image.platform,
      layerIndex: layer.index,
      digest: layer.digest,
      mediaType: layer.mediaType,
      sizeBytes: layer.sizeBytes,
      plainHttp: client.plainHttp,
      ...(tarIndex ? { tarIndex } : {}),
      ...(superblock ? { erofsBlockBytes: superblock.blockSizeBytes } : {}),
    });
  }
  return { image: formatReference(ref), manifestDigest: image.manifestDigest, layers };
}

/**
 * The layers to mount: as before for EROFS images; an image with ordinary tar layers mounts
 * all of its layers (EROFS and tar mixed), or the one `--layer`/`--blob` names.
 */
function chooseLayers(
  layers: LayerDescriptor[],
  selection: LayerSelection,
  indexFiles: boolean,
): LayerDescriptor[] {
  const hasTar = layers.some((l) => tarLayerKind(l.mediaType) !== undefined);
  const one = selection.layer !== undefined || selection.blob !== undefined;
  if (indexFiles) {
    if (!one && layers.length !== 1) {
      throw new UsageError("--tarindex/--zinfo index one layer: select it with --layer N");
    }
    return selectLayers({ layers }, { ...selection, anyMediaType: true });
  }
  if (!hasTar || selection.anyMediaType) return selectLayers({ layers }, selection);
  if (one) return selectLayers({ layers }, { ...selection, anyMediaType: true });
  if (layers.length === 0) return selectLayers({ layers }, selection);
  return layers;
}

/**
 * The superblock of a registry layer's head, read before any chunk table is there to check it:
 * when it is not EROFS, the registry (or a proxy) may have sent other bytes than the layer's,
 * which the message says beside the other cause.
 */
function registrySuperblock(head: Uint8Array, layer: LayerDescriptor) {
  try {
    return checkErofsSuperblock(head, `layer ${layer.index} (${layer.digest.slice(0, 19)}…)`);
  } catch (error) {
    if (!(error instanceof FormatError)) throw error;
    throw new FormatError(
      error.message,
      "the layer is not EROFS (`erofs-oci convert` makes an EROFS image of a tar one), or the " +
        "registry or a proxy on the way sent other bytes than the layer's (these are checked " +
        "only once the mount's chunk table is there)",
    );
  }
}
