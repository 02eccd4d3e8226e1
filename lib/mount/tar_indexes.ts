/**
 * Where a mount's tar and tar+gzip layers get their indexes (the files `mount` serves them
 * through): `--tarindex`/`--zinfo`, one made on this host earlier, `--index DIR`, the
 * registry's index artifact, or `--index-missing` (index_here.ts), in that order; each kept in
 * the durable cache.
 */
import { belowDigest } from "../oci/digest.ts";
import { UsageError, UserError } from "../errors.ts";
import type { LayerDescriptor, LayerSelection } from "../oci/layers.ts";
import { formatReference } from "../oci/reference.ts";
import type { OpenedRegistry } from "../oci/opened.ts";
import type { ResolvedImage } from "../oci/resolve.ts";
import type { LayoutReference, OciLayout } from "../oci/oci_layout.ts";
import { indexedHereRoot } from "../state/runtime_dirs.ts";
import type { TarIndexOrigin, TarIndexSpec } from "../state/mount_spec.ts";
// The tar index modules (gzip, tar, the EROFS writer: ~40 modules) load only for tar layers.
import type { TarIndexFiles } from "./layer_index_files.ts";
import { tarLayerKind, topmostCopy } from "./tar_layers.ts";
import { layerList } from "../text.ts";
import { warn } from "../log.ts";

/** Where tar layers' indexes come from besides the registry's index artifact. */
export interface TarIndexSources {
  /** `--index DIR`: files written by `erofs-oci index … -o DIR`. */
  dir?: string;
  /** `--tarindex FILE --zinfo FILE` (erofs-utils): for the one selected layer, unverified. */
  files?: { meta: string; zinfo?: string };
  /** Durable copy of every index a mount uses. */
  cacheDir: string;
  /** `--index-missing`: a layer with no index anywhere is indexed here (index_here.ts). */
  indexMissing?: boolean;
  /** Where indexes made here live (default indexedHereRoot()). */
  hereDir?: string;
  /** Bytes read so far of a layer indexed here (a progress line). */
  onIndexBytes?: (layer: LayerDescriptor, doneBytes: number) => void;
  /** A layer indexed here is done, or indexing ended early (its progress line ends). */
  onIndexed?: () => void;
  /** The mount was interrupted: indexing here removes its work at once (index_here.ts). */
  signal?: AbortSignal;
  /**
   * `--require-verified`: only indexes made on this host (their pieces were computed from bytes
   * checked against the layer digest); others are not looked for (with --index-missing the
   * layer is indexed here) and a layer left without one fails the mount.
   */
  requireVerified?: boolean;
}

/** What an index's origin is called in messages. */
const ORIGIN_NAMES: Record<Exclude<TarIndexOrigin, "here">, string> = {
  registry: "from the registry (a referrer)",
  dir: "from --index DIR",
  files: "from --tarindex/--zinfo",
};

/** The chosen layers served through a tar index (the rest are EROFS). */
export function layersThroughIndex(
  chosen: LayerDescriptor[],
  selection: LayerSelection,
  indexes: TarIndexSources,
): LayerDescriptor[] {
  if (indexes.files) return chosen;
  if (selection.anyMediaType) return [];
  return chosen.filter((l) => tarLayerKind(l.mediaType) !== undefined);
}

/** An image whose tar layers need indexes: from a registry (which may hold them) or a layout. */
export type IndexedImage =
  | { kind: "registry"; opened: OpenedRegistry }
  | { kind: "layout"; name: string; ref: LayoutReference; layout: OciLayout }
  | { kind: "file"; path: string };

export async function findTarIndexes(
  from: IndexedImage,
  image: ResolvedImage,
  layers: LayerDescriptor[],
  sources: TarIndexSources,
): Promise<Map<string, TarIndexSpec>> {
  const found = new Map<string, TarIndexSpec>();
  if (layers.length === 0) return found;
  if (sources.files) {
    const files = {
      meta: sources.files.meta,
      zinfo: sources.files.zinfo,
      origin: "files" as const,
    };
    refuseGivenIndexes(layers, sources);
    // Else refused later as an index of another layer (its tar bigger than the gzip stream).
    if (files.zinfo === undefined && tarLayerKind(layers[0].mediaType) === "gzip") {
      throw new UsageError(
        "mount: the layer is a tar.gz: --tarindex over it needs its --zinfo too",
        "`erofs-oci index` writes both (NAME.meta.erofs, NAME.zinfo); or mount with --index DIR",
      );
    }
    found.set(layers[0].digest, files);
    return found;
  }
  for (const layer of layers) {
    const kind = tarLayerKind(layer.mediaType);
    if (kind !== "gzip" && kind !== "tar") {
      throw new UserError(
        `layer ${layer.index} is ${layer.mediaType}: only tar and tar+gzip layers mount through an index`,
        "convert the image to EROFS layers: `erofs-oci convert IMAGE DEST`",
      );
    }
  }
  // One index per layer blob, the one made where the mount takes it topmost (tar_layers.ts).
  const wanted = [...new Map(layers.map((l) => [l.digest, l])).values()].map((l) => {
    const topmost = topmostCopy(layers, l.index);
    return {
      digest: l.digest,
      size: l.sizeBytes,
      below: belowDigest(image.layers, topmost),
      // `index` makes a blob's index where the image lists it topmost: one from the registry or
      // --index DIR shows a lower copy mounted without the top one (--layer N) as the top sees
      // it.
      madeForImage: topmost === topmostCopy(image.layers, l.index),
    };
  });
  // An index made here earlier (by --index-missing, of this image or another with the layer)
  // first: its piece digests came from bytes checked against the layer digest, and finding it
  // asks no registry. Only then the others, which nothing binds to the layer digest.
  const { findIndexedHere, findLocalLayerIndex } = await import("./layer_index_files.ts");
  const hereDir = sources.hereDir ?? indexedHereRoot();
  for (const layer of wanted) {
    const indexed = await findIndexedHere(hereDir, layer, layer.below);
    if (indexed) {
      const kept = await keepIndexFiles(indexed, sources.cacheDir, layer.digest);
      found.set(layer.digest, { ...kept, origin: "here" });
    }
  }
  for (const layer of wanted) {
    if (found.has(layer.digest) || !sources.dir || sources.requireVerified) continue;
    if (!layer.madeForImage) continue;
    const local = await findLocalLayerIndex(sources.dir, layer);
    if (local) {
      const kept = await keepIndexFiles(local, sources.cacheDir, layer.digest);
      found.set(layer.digest, { ...kept, origin: "dir" });
    }
  }
  // Under --require-verified only an index made here is taken: the others are not even fetched
  // (a broken or hostile index artifact must not stop a layer being indexed here).
  const unfound = wanted.filter((l) => !found.has(l.digest) && l.madeForImage);
  if (unfound.length && from.kind === "registry" && !sources.requireVerified) {
    const { ref, client } = from.opened;
    const { fetchTarIndexes } = await import("./tar_index_artifact.ts");
    const fetched = await fetchTarIndexes(
      client,
      ref.repository,
      image.manifestDigest,
      unfound,
      sources.cacheDir,
    ).catch((error) => {
      // With --index-missing the layers are indexed here instead: an index artifact anyone
      // with push rights can add (broken, or of another layer) must not stop that.
      if (!sources.indexMissing || !(error instanceof UserError)) throw error;
      warn(`the registry's tar index cannot be used (${error.message}): indexing here instead`);
      return new Map<string, TarIndexFiles>();
    });
    for (const [digest, files] of fetched) found.set(digest, { ...files, origin: "registry" });
  }
  const missing = layers.filter((l) => !found.has(l.digest));
  if (missing.length && sources.indexMissing) {
    const here = await import("./index_here.ts");
    const toIndex = from.kind === "registry"
      ? here.registryLayersToIndex(from.opened)
      : from.kind === "layout"
      ? here.layoutLayersToIndex(from.ref, from.layout)
      : here.fileLayersToIndex(from.path);
    const made = await here.indexMissingHere(toIndex, image, missing, hereDir, {
      onBytes: sources.onIndexBytes,
      finish: sources.onIndexed,
      signal: sources.signal,
    });
    for (const [digest, files] of made) {
      found.set(digest, {
        ...await keepIndexFiles(files, sources.cacheDir, digest),
        origin: "here",
      });
    }
  }
  const unindexed = layers.find((l) => !found.has(l.digest));
  if (unindexed && sources.requireVerified) {
    throw new UserError(
      `--require-verified: layer ${unindexed.index} is ${
        tarLayerKind(unindexed.mediaType) === "tar" ? "a tar layer" : "tar+gzip"
      } with no index made on this host (one from the registry or --index DIR is not bound to ` +
        "the layer digest)",
      "add --index-missing to index the layer on this host (reads it once)",
    );
  }
  if (unindexed) {
    const top = topmostCopy(image.layers, unindexed.index);
    if (top !== unindexed.index && !layers.some((l) => l.index === top)) {
      throw new UserError(
        `layer ${unindexed.index} repeats layer ${top}'s blob: an index from the registry or ` +
          `--index DIR is made for layer ${top}, where the image lists it topmost, and would ` +
          `show layer ${unindexed.index} alone as layer ${top} sees it`,
        "mount it with --index-missing (indexes this copy on this host, reading it once)",
      );
    }
    if (from.kind === "file") {
      const what = tarLayerKind(unindexed.mediaType) === "tar" ? "a tar file" : "a tar.gz file";
      throw new UserError(
        `${from.path} is ${what}, not an EROFS image, and has no index`,
        "mount it with --index-missing (indexes it on this host, reading it once), or pass " +
          `--index DIR made by \`erofs-oci index ${from.path} -o DIR\`; ` +
          "`erofs-oci build FILE -o IMAGE.erofs` makes an EROFS image of it",
      );
    }
    throw new UserError(
      `layer ${unindexed.index} (${unindexed.digest.slice(0, 19)}…) is ${
        tarLayerKind(unindexed.mediaType) === "tar" ? "a tar layer" : "tar+gzip"
      } and has no index`,
      (from.kind === "registry"
        ? `make one: \`erofs-oci index ${formatReference(from.opened.ref)}${
          image.platforms.length > 1 ? ` --platform ${image.platform}` : ""
        } --push\` ` +
          "(or pass --index DIR), "
        : `make one: \`erofs-oci index ${from.name} -o DIR\` and pass --index DIR, `) +
        "or mount with --index-missing to index it on this host (reads the layer once)",
    );
  }
  return found;
}

/**
 * `--require-verified` with --tarindex/--zinfo: the other indexes from elsewhere were set aside
 * (indexed here instead, or the layer has none); these the user gave for this mount.
 */
function refuseGivenIndexes(layers: LayerDescriptor[], sources: TarIndexSources): void {
  if (!sources.requireVerified || !sources.files) return;
  throw new UserError(
    `--require-verified: layer ${layers[0].index}: tar index ${ORIGIN_NAMES.files}, which ` +
      "nothing binds to the layer digest",
    "leave out --tarindex/--zinfo and add --index-missing to index it on this host",
  );
}

/**
 * What to say once about the layers served through an index not made here: whoever made the
 * index chose its offsets and piece digests, so a forged index can show other bytes of the
 * layer under a file's name. Reads are checked against its piece digests when it has them
 * (--tarindex files never do); without, only the layer's chunk table or digest checks them.
 */
export function foreignIndexNotices(
  layers: { tarIndex?: TarIndexSpec; layerIndex?: number }[],
): string[] {
  const groups = new Map<
    string,
    { origin: Exclude<TarIndexOrigin, "here">; pieces: boolean; indexes: number[] }
  >();
  layers.forEach((layer, position) => {
    const origin = layer.tarIndex?.origin;
    if (!origin || origin === "here") return;
    const pieces = layer.tarIndex?.pieces !== undefined;
    const key = `${origin} ${pieces}`;
    const group = groups.get(key) ?? { origin, pieces, indexes: [] };
    group.indexes.push(layer.layerIndex ?? position);
    groups.set(key, group);
  });
  return [...groups.values()].map(({ origin, pieces, indexes }) =>
    `${layerList(indexes)}: tar index ${ORIGIN_NAMES[origin]}, not bound by the layer digest: ${
      pieces
        ? "reads are checked only against the index's own piece digests"
        : "it has no piece digests, file names and offsets are the index's own"
    } (to index on this host instead: --index-missing --require-verified)`
  );
}

/**
 * The one layer digest that the indexes `findTarIndexes` looks in for a local file (`--index
 * DIR`, those made here) name for a file of `sizeBytes`; undefined when none or several do, one
 * cannot be read, or with `--tarindex` or `--index-missing` (`mount FILE` then hashes the file
 * to find its index). Taken unhashed, the digest is checked where it counts, by the server: the
 * tar's first piece at open and every piece as it is read (tar_index_source.ts), or the whole
 * file for an index without piece digests (layout_file.ts openLayoutBlob). So a large tar.gz is
 * not read whole to mount it, and a file that only has the size of an index's layer fails the
 * mount, saying so.
 */
export async function indexedDigestOfSize(
  sources: TarIndexSources,
  sizeBytes: number,
): Promise<string | undefined> {
  // --index-missing must index a file that only has another's size, not fail on it.
  if (sources.files || sources.indexMissing) return undefined;
  const { indexedDigestsOfSize } = await import("./layer_index_files.ts");
  const hereDir = sources.hereDir ?? indexedHereRoot();
  const dirs = sources.dir ? [sources.dir] : [];
  try {
    for (const entry of Deno.readDirSync(hereDir)) {
      if (entry.isDirectory) dirs.push(`${hereDir}/${entry.name}`);
    }
  } catch { /* nothing indexed here yet */ }
  const digests = new Set<string>();
  try {
    for (const dir of dirs) {
      for (const digest of await indexedDigestsOfSize(dir, sizeBytes)) digests.add(digest);
    }
  } catch {
    return undefined;
  }
  return digests.size === 1 ? [...digests][0] : undefined;
}

/** Copies index files into the durable cache (a --index DIR may go away while mounted). */
async function keepIndexFiles(
  files: TarIndexFiles,
  cacheDir: string,
  layerDigest: string,
): Promise<TarIndexFiles> {
  const { verifyTarIndexFiles, layerFileStem } = await import("./layer_index_files.ts");
  const dir = `${cacheDir}/${layerFileStem(layerDigest)}`;
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  const keep = async (path: string | undefined, digest: string | undefined) => {
    if (!path || !digest) return undefined;
    const target = `${dir}/${digest.replace(":", "-")}`;
    const tmp = `${target}.${crypto.randomUUID().slice(0, 8)}.tmp`;
    try {
      await Deno.copyFile(path, tmp);
      await Deno.rename(tmp, target);
    } catch (error) {
      // A partial copy (a full file system) would stay for good: no later run looks for it.
      await Deno.remove(tmp).catch(() => {});
      throw error;
    }
    return target;
  };
  const kept: TarIndexFiles = {
    record: files.record,
    meta: (await keep(files.meta, files.record.meta.digest))!,
    zinfo: await keep(files.zinfo, files.record.zinfo?.digest),
    pieces: await keep(files.pieces, files.record.pieces?.digest),
  };
  await verifyTarIndexFiles(kept, files.record.layer);
  return kept;
}
