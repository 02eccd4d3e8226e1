/**
 * `mount --index-missing`: a tar or tar+gzip layer that has no index (none pushed, none in
 * --index DIR) is indexed on this host — the layer is read once, as `erofs-oci index` reads
 * it, and checked against its digest — and mounted lazily like any indexed layer. The files
 * stay in the state directory (indexedHereRoot()/<layer digest>/), so a later mount of any image
 * with that layer finds them without the flag and without reading the layer again.
 */
import { belowDigest } from "../oci/digest.ts";
import { makeOwnedWorkDir } from "../../ffi/work_dir.ts";
import { info } from "../log.ts";
import { formatBytes } from "../text.ts";
import type { LayerDescriptor } from "../oci/layers.ts";
import type { OpenedImage, OpenedRegistry } from "../oci/opened.ts";
import type { LayoutReference, OciLayout } from "../oci/oci_layout.ts";
import type { ResolvedImage } from "../oci/resolve.ts";
import { indexImage } from "./index_image.ts";
import { sharedDiskCache } from "./layer_source.ts";
import { registryOrigin } from "../source/disk_cache_names.ts";
import { RegistryBlob } from "../oci/registry_blob.ts";
import { LayoutFile } from "../oci/layout_file.ts";
import type { BlobStore } from "../convert/layer_blob.ts";
import {
  findLocalLayerIndex,
  indexedHereDir,
  layerFileStem,
  type TarIndexFiles,
} from "./layer_index_files.ts";
import { tarLayerKind, topmostCopy } from "./tar_layers.ts";

/** The image whose layers are indexed here, and where their bytes are read from. */
export interface LayersToIndex {
  image: Pick<OpenedImage, "registry" | "layout" | "repository">;
  store(image: ResolvedImage): BlobStore;
}

/**
 * A registry image's layers are read through the host's disk cache, as the mount reads them,
 * so the bytes read once to index a layer are not fetched again by its lazy reads (zero layer
 * GETs after `--index-missing`); without a disk cache, one streamed GET per layer.
 */
export function registryLayersToIndex(opened: OpenedRegistry): LayersToIndex {
  const { client, ref } = opened;
  return {
    image: { repository: ref.repository, registry: opened },
    store: (image) => {
      const cache = sharedDiskCache();
      if (!cache) return { kind: "registry", client, repository: ref.repository };
      const origin = registryOrigin(ref.registry, client.plainHttp);
      return {
        kind: "source",
        open: (digest, sizeBytes) => {
          const layer = image.layers.find((l) => l.digest === digest && l.sizeBytes === sizeBytes);
          if (!layer) throw new Error(`internal: ${digest} is not a layer of the image`);
          const blob = new RegistryBlob(client, ref.repository, layer);
          return cache.wrap(blob, { digest, origin }, { readOnce: true });
        },
      };
    },
  };
}

/** An OCI layout's layers are read from their blob files. */
export function layoutLayersToIndex(ref: LayoutReference, layout: OciLayout): LayersToIndex {
  return {
    image: { repository: "", layout: { ref, layout } },
    store: () => ({ kind: "layout", layout }),
  };
}

/** A tar or tar.gz file given as the image: its one layer is the file. */
export function fileLayersToIndex(path: string): LayersToIndex {
  return {
    image: { repository: "" },
    store: () => ({ kind: "source", open: () => LayoutFile.open(path, `file ${path}`) }),
  };
}

/**
 * Indexes the `missing` layers of `image` here. When every layer of the image is a tar layer
 * and none has an index, one pass reads them bottom up (directories a layer only implies take
 * their metadata from below); otherwise each is indexed alone, reading the layers below it for
 * their directories only when it implies any.
 */
export async function indexMissingHere(
  from: LayersToIndex,
  image: ResolvedImage,
  missing: LayerDescriptor[],
  hereDir: string,
  report: {
    onBytes?: (layer: LayerDescriptor, doneBytes: number) => void;
    /** After each layer, and when indexing ends early (a progress line ends). */
    finish?: () => void;
    /**
     * An interrupt: the work directory goes at once, synchronously (the command exits without
     * waiting for the indexing to stop), so nothing is left half-written.
     */
    signal?: AbortSignal;
  } = {},
): Promise<Map<string, TarIndexFiles>> {
  const found = new Map<string, TarIndexFiles>();
  const stackAll = missing.length === image.layers.length &&
    image.layers.every((l) => tarLayerKind(l.mediaType) !== undefined);
  // A blob the mount takes more than once is indexed where it sits topmost (tar_layers.ts):
  // the copies of a digest are all missing or all found (indexes go by digest).
  const topmost = (l: LayerDescriptor) => topmostCopy(missing, l.index);
  const passes = stackAll ? [undefined] : [...new Set(missing.map(topmost))];
  const blobs = [...new Map(missing.map((l) => [l.digest, l])).values()];
  const bytes = blobs.reduce((sum, l) => sum + l.sizeBytes, 0);
  info(
    `${blobs.length === 1 ? `layer ${missing[0].index} has` : `${blobs.length} layers have`}` +
      ` no index: indexing here (reads ${formatBytes(bytes)} once; kept in ${hereDir})`,
  );
  await Deno.mkdir(hereDir, { recursive: true, mode: 0o700 });
  report.signal?.throwIfAborted();
  // Made and given its clean-up in one synchronous step: an interrupt handled between the two
  // (the command exits at once) left the directory behind (CI, under load). Held for the
  // process's life: what a killed mount left there the next one removes.
  const workDir = makeOwnedWorkDir(hereDir, ".indexing-", info);
  const work = workDir.path;
  const dropWork = () => {
    report.finish?.();
    workDir.remove();
  };
  report.signal?.addEventListener("abort", dropWork, { once: true });
  try {
    for (const layer of passes) {
      let startedMs = performance.now();
      const { files } = await indexImage({ ...from.image, resolve: () => Promise.resolve(image) }, {
        layer,
        dir: work,
        push: false,
        spanBytes: 4 * 1024 * 1024,
        buildTimeSec: Math.floor(Date.now() / 1000),
        store: from.store(image),
        onBytes: report.onBytes,
        onLayer: (l) => {
          report.finish?.();
          info(
            `layer ${l.index} indexed in ${((performance.now() - startedMs) / 1000).toFixed(1)} s`,
          );
          startedMs = performance.now();
        },
      });
      for (const made of files) {
        const digest = made.record.layer.digest;
        const position = topmostCopy(
          missing,
          missing.find((l) => l.digest === digest)?.index ?? 0,
        );
        const dir = indexedHereDir(hereDir, digest, belowDigest(image.layers, position));
        // A complete set replaces an older one whole: files first into a fresh directory,
        // inside the work directory, so that whatever fails leaves nothing outside it.
        const stem = layerFileStem(digest);
        const fresh = `${work}/${stem}`;
        await Deno.mkdir(fresh, { mode: 0o700 });
        // Its files, record included, are the ones named after the layer (writeLayerIndex).
        for (const entry of Deno.readDirSync(work)) {
          if (entry.name.startsWith(`${stem}.`)) {
            await Deno.rename(`${work}/${entry.name}`, `${fresh}/${entry.name}`);
          }
        }
        const layer = { digest, size: made.record.layer.size };
        const kept = await settleIndexDir(fresh, dir, layer);
        if (kept) found.set(digest, kept);
      }
    }
  } finally {
    report.signal?.removeEventListener("abort", dropWork);
    report.finish?.();
    workDir.remove();
  }
  return found;
}

/**
 * Moves the complete set in `fresh` to `dir`. A mount that indexed the same layer at the same
 * time may have got there first: its set, when it checks out, is kept and ours dropped.
 */
export async function settleIndexDir(
  fresh: string,
  dir: string,
  layer: { digest: string; size: number },
): Promise<TarIndexFiles | undefined> {
  try {
    await Deno.rename(fresh, dir);
  } catch {
    const theirs = await findLocalLayerIndex(dir, layer).catch(() => undefined);
    if (theirs) {
      await Deno.remove(fresh, { recursive: true }).catch(() => {});
      return theirs;
    }
    // Not a complete index (a crash while it was replaced): ours takes its place.
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.rename(fresh, dir);
  }
  return await findLocalLayerIndex(dir, layer);
}
