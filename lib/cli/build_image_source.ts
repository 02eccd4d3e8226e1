/**
 * `erofs-oci build IMAGE -o OUT`: the SOURCE kind that is an image (a registry reference or
 * `oci:PATH[:TAG]`). All layers are merged with their whiteouts applied (what a container
 * sees), or `--layer N` takes one layer as it is (whiteouts kept in overlayfs form; directories
 * its tar only implies take the metadata of the layers below, as with `convert`).
 */
import { UsageError } from "../errors.ts";
import type { BuildNode } from "../erofs/writer/tree.ts";
import { flattenTrees } from "../convert/flatten.ts";
import { openVerifiedBlob } from "../convert/layer_blob.ts";
import { type LayerTree, readLayerTree } from "../convert/layer_tree.ts";
import { LowerDirs } from "../convert/lower_dirs.ts";
import type { LayerDescriptor } from "../oci/layers.ts";
import { checkTarLayers, layoutSource, registrySource } from "../convert/source_image.ts";
import { ProgressLine } from "./progress.ts";
import { openImage, type RegistryOptionValues } from "./registry_options.ts";
import { info } from "../log.ts";

/** What build.ts needs from a loaded SOURCE. */
export interface LoadedImageSource {
  root: BuildNode;
  entries: number;
  /** Never set for images (build.ts's tar-index field). */
  tarBlocks?: undefined;
  close(): void;
}

/** Parses --layer N. */
/**
 * Reads the image's layers into one tree. Layer blobs are streamed and verified; file data is
 * spooled (unlinked files in `spoolDir`) until the image is written and `close()` is called.
 */
export async function loadImageSource(
  source: string,
  spoolDir: string,
  options: {
    registry: RegistryOptionValues;
    layer?: number;
    impliedMtimeSec: number;
  },
): Promise<LoadedImageSource> {
  const opened = await openImage("build", source, options.registry);
  const trees: LayerTree[] = [];
  try {
    const image = opened.layout
      ? layoutSource(opened.name, opened.layout.layout, opened.layout.ref)
      : registrySource(opened.name, opened.registry!.client, opened.registry!.ref);
    const resolved = await image.resolve(options.registry.platform);
    let layers = resolved.layers;
    if (options.layer !== undefined) {
      if (options.layer >= layers.length) {
        throw new UsageError(
          `build: --layer ${options.layer}, but ${opened.name} has ${layers.length} layer(s)`,
        );
      }
      layers = [layers[options.layer]];
    }
    checkTarLayers({ ...resolved, layers }, opened.name);
    const read = async (layer: LayerDescriptor, what = "") => {
      const label = `layer ${layer.index + 1}/${resolved.layers.length}${what}`;
      const progress = new ProgressLine(`${label}: reading`);
      try {
        const blob = openVerifiedBlob(
          image.store,
          layer.digest,
          layer.sizeBytes,
          (done) => progress.update(done, layer.sizeBytes),
        );
        return await readLayerTree(blob, `${label} (${layer.digest})`, {
          spoolDir,
          impliedMtimeSec: options.impliedMtimeSec,
          spoolHint: "build keeps the layers' file data beside OUT until the image is written: " +
            "free space there, or write OUT on a larger file system",
        });
      } finally {
        progress.finish();
      }
    };
    let entries = 0;
    for (const layer of layers) {
      const tree = await read(layer);
      trees.push(tree);
      entries += tree.entries;
    }
    if (options.layer !== undefined) {
      // Stacked on the layers below, its implied directories must look like theirs.
      await new LowerDirs().completeFromBelow(
        trees[0],
        options.layer,
        (n) => read(resolved.layers[n], " (directories)"),
      );
    }
    const root = options.layer !== undefined ? trees[0].root : flattenTrees(trees);
    info(
      `${opened.name} (${resolved.platform}): ${
        options.layer !== undefined ? `layer ${options.layer}` : `${layers.length} layer(s) merged`
      }`,
    );
    return {
      root,
      // Merged: what the tree holds (the layers' members counted whiteouts, replaced files and
      // each layer's copy of a directory: 38 entries for an image of 14).
      entries: options.layer !== undefined ? entries : entriesBelow(root),
      close() {
        for (const tree of trees) tree.close();
      },
    };
  } catch (error) {
    for (const tree of trees) tree.close();
    throw error;
  } finally {
    opened.close();
  }
}

/** The entries of a tree below its root (each name once: a hard link counts as an entry). */
function entriesBelow(root: BuildNode): number {
  let count = 0;
  const pending = [root];
  for (let dir = pending.pop(); dir; dir = pending.pop()) {
    for (const child of dir.children?.values() ?? []) {
      count++;
      if (child.kind === "dir") pending.push(child);
    }
  }
  return count;
}
