/**
 * `erofs-oci index IMAGE`: streams each selected tar+gzip layer of an image once from its
 * registry (or OCI layout), verified against its digest as it passes, into the layer's index
 * files; then writes them to a directory or pushes them as the image's index artifact.
 */
import { info } from "../log.ts";
import { makeOwnedWorkDir, type OwnedWorkDir } from "../../ffi/work_dir.ts";
import { FormatError, OciError, UserError } from "../errors.ts";
import { type BlobStore, openVerifiedBlob } from "../convert/layer_blob.ts";
import { LowerDirs } from "../convert/lower_dirs.ts";
import type { StackedLayer } from "../convert/flatten.ts";
import { MARK_IMPLIED, scanTar, takeImplied } from "../erofs/writer/from_tar.ts";
import { decompressTar } from "../tar/decompress.ts";
import type { OpenedImage } from "../oci/opened.ts";
import type { LayerDescriptor } from "../oci/layers.ts";
import { fetchManifest } from "../oci/resolve.ts";
import { layerFileStem, type TarIndexFiles, writeLayerIndex } from "./layer_index_files.ts";
import { layersWithPushedIndex, pushTarIndexArtifact } from "./tar_index_artifact.ts";
import { tarLayerKind, topmostCopy } from "./tar_layers.ts";

export interface IndexImageOptions {
  layer?: number;
  /** Where the files go (kept); with `push` and no dir, a temporary directory. */
  dir?: string;
  push: boolean;
  tmpdir?: string;
  spanBytes: number;
  buildTimeSec: number;
  onLayer?: (layer: LayerDescriptor, done: TarIndexFiles) => void;
  /** Where the layers are read from; default the image's registry or layout. */
  store?: BlobStore;
  /** Bytes of `layer` read so far (for a progress line). */
  onBytes?: (layer: LayerDescriptor, doneBytes: number) => void;
  /**
   * With `push` (and no files wanted here): when every layer to index has an index pushed
   * already, nothing is read or pushed (`alreadyPushed`). A second `index IMAGE --push` read
   * every layer again and pushed a second artifact.
   */
  skipPushed?: boolean;
  /**
   * `layer` of a blob the image lists again higher up is indexed there, where it sits topmost
   * (`index --layer N`: the index is the blob's for every mount of the image). Off, it is
   * indexed at `layer` itself (a mount of that layer alone, or with those below it).
   */
  atTopmostCopy?: boolean;
}

/** The layers `index IMAGE` works on: `--layer N`, else every tar and tar+gzip layer. */
export function layersToIndex(layers: LayerDescriptor[], layer?: number): LayerDescriptor[] {
  const indexable = (l: LayerDescriptor) => {
    const kind = tarLayerKind(l.mediaType);
    return kind === "gzip" || kind === "tar";
  };
  if (layer !== undefined) {
    const chosen = layers[layer];
    if (!chosen) {
      throw new OciError(
        `layer ${layer} out of range: the image has ${layers.length} layers`,
        "list them with `erofs-oci inspect IMAGE`",
      );
    }
    if (!indexable(chosen)) throw notIndexable(chosen);
    return [chosen];
  }
  const zstd = layers.find((l) => tarLayerKind(l.mediaType) === "zstd");
  if (zstd) throw notIndexable(zstd);
  const tar = layers.filter(indexable);
  if (tar.length === 0) {
    throw new UserError(
      "the image has no tar or tar+gzip layer to index",
      "EROFS layers mount as they are",
    );
  }
  return tar;
}

function notIndexable(layer: LayerDescriptor): UserError {
  return new UserError(
    `layer ${layer.index} (${layer.mediaType}) is neither tar nor tar+gzip`,
    "only tar and tar+gzip layers can be indexed for lazy mounting; " +
      "`erofs-oci convert` makes EROFS layers",
  );
}

/**
 * `work`, its FormatError (the layer's bytes: not a tar, a bad header, corrupt gzip) naming the
 * layer: an image's layers are indexed one after the other and the message named none.
 */
async function layerNamed<T>(layer: LayerDescriptor, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (!(error instanceof FormatError) || error.message.startsWith("layer ")) throw error;
    throw new FormatError(
      `layer ${layer.index} (${layer.digest.slice(0, 19)}…): ${error.message}`,
      error.hint,
      { cause: error },
    );
  }
}

/** A layer below `--layer N`, streamed and verified, its tree kept for directories only. */
async function readLowerDirs(
  store: BlobStore,
  layer: LayerDescriptor,
  buildTimeSec: number,
): Promise<StackedLayer & { close(): void }> {
  if (!tarLayerKind(layer.mediaType)) {
    throw new UserError(
      `layer ${layer.index} below is ${layer.mediaType}, not a tar layer`,
      "index the whole image instead of --layer N",
    );
  }
  const blob = openVerifiedBlob(store, layer.digest, layer.sizeBytes);
  try {
    const { stream } = await decompressTar(blob.stream);
    const { root } = await scanTar(stream, {
      indexOnly: true,
      impliedMtimeSec: MARK_IMPLIED,
      emptyInput: "archive",
    });
    if (!blob.verified()) {
      throw new OciError(`layer ${layer.digest} failed verification while reading it`);
    }
    return { root, implied: takeImplied(root, buildTimeSec), close() {} };
  } catch (error) {
    await blob.stream.cancel().catch(() => {});
    throw error;
  }
}

/** Indexes the image's layers; returns the files per layer (and the artifact when pushed). */
export async function indexImage(
  image: Pick<OpenedImage, "resolve" | "registry" | "layout" | "repository">,
  options: IndexImageOptions,
): Promise<
  { files: TarIndexFiles[]; artifact?: { digest: string; via: string }; alreadyPushed?: boolean }
> {
  const resolved = await image.resolve();
  const alone = options.layer === undefined || !options.atTopmostCopy
    ? options.layer
    : topmostCopy(resolved.layers, options.layer);
  if (alone !== options.layer) {
    info(
      `layer ${options.layer} is also layer ${alone} of the image: indexed there, where it ` +
        "sits topmost (one index serves both)",
    );
  }
  const layers = layersToIndex(resolved.layers, alone);
  if (options.push && !image.registry) {
    throw new UserError("--push needs a registry image", "use -o DIR for an OCI layout");
  }
  if (options.push && options.skipPushed && image.registry) {
    const pushed = await layersWithPushedIndex(
      image.registry.client,
      image.repository,
      resolved.manifestDigest,
    ).catch(() => new Set<string>()); // not known: indexed as if none were
    if (layers.every((l) => pushed.has(l.digest))) return { files: [], alreadyPushed: true };
  }
  let dir = options.dir;
  let temporary: OwnedWorkDir | undefined;
  if (!dir) {
    temporary = makeOwnedWorkDir(
      options.tmpdir ?? Deno.env.get("TMPDIR") ?? "/tmp",
      "erofs-oci-index-",
      info,
    );
    dir = temporary.path;
  }
  try {
    const files: TarIndexFiles[] = [];
    const store: BlobStore = options.store ??
      (image.registry
        ? { kind: "registry" as const, client: image.registry.client, repository: image.repository }
        : { kind: "layout" as const, layout: image.layout!.layout });
    // Stacked in order from the bottom, implied directories take the metadata below (umoci
    // leaves unchanged parents out of a layer). With --layer N the layers below are read for
    // their directories only when layer N implies any.
    const lower = new LowerDirs();
    const tarBelow = (n: number) =>
      resolved.layers.slice(0, n).every((l) => tarLayerKind(l.mediaType) !== undefined);
    const stackAll = alone === undefined && layers.length === resolved.layers.length;
    const onBytes = options.onBytes;
    for (const layer of layers) {
      // A lower copy of a blob listed again higher up is read for the stack only: its index
      // would be replaced by the top copy's (tar_layers.ts topmostCopy).
      const topmost = alone !== undefined ||
        topmostCopy(resolved.layers, layer.index) === layer.index;
      const stem = topmost ? layerFileStem(layer.digest) : `lower-copy-${layer.index}`;
      const blob = openVerifiedBlob(
        store,
        layer.digest,
        layer.sizeBytes,
        onBytes && ((done) => onBytes(layer, done)),
      );
      const { files: done, result } = await layerNamed(layer, () =>
        writeLayerIndex(
          blob.stream,
          dir,
          stem,
          {
            spanBytes: options.spanBytes,
            layerBytes: layer.sizeBytes,
            buildTimeSec: options.buildTimeSec,
            impliedMtimeSec: MARK_IMPLIED,
            plainTar: tarLayerKind(layer.mediaType) === "tar",
            prepareTree: async (root) => {
              const stacked = { root, implied: takeImplied(root, options.buildTimeSec) };
              if (alone !== undefined && tarBelow(alone)) {
                await lower.completeFromBelow(
                  stacked,
                  alone,
                  (n) => readLowerDirs(store, resolved.layers[n], options.buildTimeSec),
                );
                return;
              }
              if (!stackAll) return;
              lower.fillImplied(stacked);
              lower.dropMarkersWithoutLower(stacked);
              lower.apply(stacked);
            },
          },
        ));
      if (!blob.verified() || result.layerDigest !== layer.digest) {
        throw new OciError(`layer ${layer.digest} failed verification while indexing`);
      }
      if (topmost) {
        files.push(done);
      } else {
        for (const entry of Deno.readDirSync(dir)) {
          if (entry.name.startsWith(`${stem}.`)) Deno.removeSync(`${dir}/${entry.name}`);
        }
      }
      options.onLayer?.(layer, done);
    }
    if (!options.push) return { files };
    const client = image.registry!.client;
    const manifest = await fetchManifest(client, image.repository, resolved.manifestDigest);
    const artifact = await pushTarIndexArtifact(
      client,
      image.repository,
      {
        digest: resolved.manifestDigest,
        size: manifest.bytes.byteLength,
        mediaType: resolved.mediaType,
      },
      files,
      resolved.layers.map((l) => l.digest),
    );
    return { files, artifact };
  } finally {
    temporary?.remove();
  }
}
