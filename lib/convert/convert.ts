/**
 * `erofs-oci convert`: an ordinary image (tar layers) → an image of EROFS layers. Each source
 * layer is streamed from its blob (verified as it passes), read into a tree with its file data
 * spooled, written as one EROFS file, pushed, and deleted before the next one, so the disk holds
 * one layer at a time. Layers carry their source digest in an annotation; a layer already
 * converted at the destination tag (or earlier in this run) is reused instead of converted.
 */
import type { Descriptor } from "../oci/manifest.ts";
import { EROFS_LAYER, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST } from "../oci/media_types.ts";
import { formatPlatform, parsePlatform, type Platform } from "../oci/platform.ts";
import type { ResolvedImage } from "../oci/resolve.ts";
import { belowDigest, digestOf } from "../oci/digest.ts";
import type { ImageDestination } from "./destination.ts";
import { flattenTrees } from "./flatten.ts";
import { LowerDirs } from "./lower_dirs.ts";
import { configCreatedSec, convertedConfig } from "./image_config.ts";
import { openVerifiedBlob } from "./layer_blob.ts";
import { uuidFromSeed, writeLayerImage } from "./layer_image.ts";
import { type LayerTree, readLayerTree } from "./layer_tree.ts";
import { checkTarLayers, type SourceImage } from "./source_image.ts";
import { OciError } from "../errors.ts";
import {
  CHUNK_TABLE_ANNOTATION,
  CHUNK_TABLE_MEDIA_TYPE,
  chunkTableOfFile,
  encodeTable,
} from "../verify/chunk_table.ts";
import { tableAnnotations, type TableRef, tableRef } from "../verify/table_artifact.ts";
import { METADATA_PACK_MEDIA_TYPE } from "../verify/metadata_ranges.ts";
import { reusedTable } from "./reused_table.ts";

/** Annotation on each EROFS layer: the source layer digest(s) it was made from, comma-separated. */
export const SOURCE_LAYERS_ANNOTATION = "io.github.erofs-oci.source.layers";
/**
 * Annotation on each EROFS layer converted over layers below it: the digest of their source
 * digests (comma-separated, bottom first). A layer's conversion depends on them (directories it
 * only implies take theirs, a whiteout with nothing below is dropped): a layer is reused only
 * over the same layers below.
 */
export const SOURCE_LOWER_ANNOTATION = "io.github.erofs-oci.source.lower";
/** Annotation on each manifest: the source manifest it was converted from. */
export const SOURCE_MANIFEST_ANNOTATION = "io.github.erofs-oci.source.manifest";

export interface ConvertProgress {
  /** A phase of one layer: bytes done of total (reading the source blob, writing, uploading). */
  update(label: string, doneBytes: number, totalBytes: number): void;
  /** The current phase is over. */
  finish(): void;
  /** A one-line note (reused layer, platform started). */
  note(message: string): void;
}

export interface ConvertOptions {
  /** `os/arch[/variant]` to convert from an index (default: the host's). */
  platform?: string;
  /** Every platform of an index, pushed as an index. */
  allPlatforms?: boolean;
  /** One EROFS layer holding the merged tree instead of one per source layer. */
  flatten?: boolean;
  /** Superblock build time (default: the source config's `created`, else 0). */
  buildTimeSec?: number;
  /** Where layer images and spool files are written (must exist). */
  workDir: string;
  /** Largest uncompressed tar of one layer (default: no limit but the disk). */
  maxLayerBytes?: number;
  /** Look for converted layers at the destination (default true). */
  reuse?: boolean;
  progress?: ConvertProgress;
}

export interface ConvertedLayer {
  /** Source layer digests (one unless flattened). */
  sources: string[];
  /** The digest of the source digests below (SOURCE_LOWER_ANNOTATION); none for the first. */
  lower?: string;
  digest: string;
  sizeBytes: number;
  reused: boolean;
  /**
   * The layer's chunk-digest table blob (named on its descriptor, listed by the tables
   * artifact), with its metadata pack; a reused layer's is the one the destination holds.
   */
  table?: TableRef;
}

export interface ConvertResult {
  /** `name@digest` of what the tag now names. */
  reference: string;
  platforms: { platform: string; manifestDigest: string; layers: ConvertedLayer[] }[];
}

const silent: ConvertProgress = { update() {}, finish() {}, note() {} };

export async function convertImage(
  source: SourceImage,
  destination: ImageDestination,
  options: ConvertOptions,
): Promise<ConvertResult> {
  const progress = options.progress ?? silent;
  const known = new Map<string, Descriptor>();
  if (options.reuse ?? true) {
    for (const layer of await destination.previousLayers()) {
      const from = layer.annotations?.[SOURCE_LAYERS_ANNOTATION];
      if (from && layer.mediaType === EROFS_LAYER) {
        known.set(reuseKey(from.split(","), layer.annotations?.[SOURCE_LOWER_ANNOTATION]), layer);
      }
    }
  }
  // Each image with the index entry it came from (--all-platforms): its platform object and
  // annotations go into the new index as they were (two entries may share os/arch).
  const images: { image: ResolvedImage; entry?: Descriptor; label: string }[] = [];
  let indexAnnotations: Record<string, string> | undefined;
  const index = options.allPlatforms ? await source.indexEntries() : undefined;
  // An index with no image in it: resolve() says what it holds instead.
  if (index?.entries.length) {
    indexAnnotations = index.annotations;
    for (const entry of index.entries) {
      const image = await source.resolveEntry(entry);
      images.push({
        image,
        entry,
        label: entry.platform ? platformLabel(entry.platform) : image.platform,
      });
    }
  } else {
    const image = await source.resolve(options.platform);
    images.push({ image, label: image.platform });
  }
  for (const { image } of images) checkTarLayers(image, source.name);

  const converter = new LayerConverter(source, destination, options, progress, known);
  const result: ConvertResult = { reference: "", platforms: [] };
  const entries: Descriptor[] = [];
  /** Source manifest digest → its converted manifest, for one listed under several platforms. */
  const converted = new Map<string, { digest: string; size: number }>();
  for (const { image, entry, label } of images) {
    const done = converted.get(image.manifestDigest);
    if (done) {
      const same = result.platforms.find((p) => p.manifestDigest === done.digest)!;
      result.platforms.push({ ...same, platform: label });
      entries.push(indexEntryOf(done, entry, image));
      continue;
    }
    if (images.length > 1) progress.note(`platform ${label}`);
    const configBytes = await source.readConfig(image);
    const buildTimeSec = options.buildTimeSec ?? configCreatedSec(configBytes) ?? 0;
    const layers = options.flatten
      ? [await converter.flattened(image, buildTimeSec)]
      : await converter.eachLayer(image, buildTimeSec);
    const config = convertedConfig(configBytes, {
      diffIds: layers.map((l) => l.digest),
      flattened: options.flatten ?? false,
    });
    const configDigest = digestOf(config);
    await destination.putBlob({
      digest: configDigest,
      sizeBytes: config.byteLength,
      mediaType: OCI_CONFIG,
      bytes: config,
    });
    const manifest = new TextEncoder().encode(JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: configDigest, size: config.byteLength },
      layers: layers.map((l) => ({
        mediaType: EROFS_LAYER,
        digest: l.digest,
        size: l.sizeBytes,
        annotations: {
          [SOURCE_LAYERS_ANNOTATION]: l.sources.join(","),
          ...(l.lower ? { [SOURCE_LOWER_ANNOTATION]: l.lower } : {}),
          ...(l.table ? tableAnnotations(l.table) : {}),
        },
      })),
      annotations: {
        ...carriedAnnotations(image.annotations),
        [SOURCE_MANIFEST_ANNOTATION]: image.manifestDigest,
      },
    }));
    const manifestDigest = digestOf(manifest);
    result.platforms.push({ platform: label, manifestDigest, layers });
    // Reused tables too: the artifact of the image they came with goes (and its listing with
    // it) once that image is overwritten and the registry collects garbage.
    const tables = layers.flatMap((l) => l.table ? [l.table] : []);
    if (images.length === 1) {
      result.reference = await destination.tag(manifest, OCI_MANIFEST);
      await destination.referTables?.(manifestDigest, manifest.byteLength, tables);
    } else {
      await destination.putManifest(manifest, OCI_MANIFEST);
      await destination.referTables?.(manifestDigest, manifest.byteLength, tables);
      const made = { digest: manifestDigest, size: manifest.byteLength };
      converted.set(image.manifestDigest, made);
      entries.push(indexEntryOf(made, entry, image));
    }
  }
  if (images.length > 1) {
    const annotations = carriedAnnotations(indexAnnotations);
    const newIndex = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: entries,
        ...(Object.keys(annotations).length ? { annotations } : {}),
      }),
    );
    result.reference = await destination.tag(newIndex, OCI_INDEX);
  }
  return result;
}

/**
 * The source's annotations that still hold for the converted image: not the layout's tag (the
 * destination names it), nor the base image's digest (its layers are not the base's any more).
 */
function carriedAnnotations(
  annotations: Record<string, string> | undefined,
): Record<string, string> {
  const carried = { ...annotations };
  delete carried["org.opencontainers.image.ref.name"];
  delete carried["org.opencontainers.image.base.digest"];
  return carried;
}

/** os/arch[/variant], and the OS version when the entry names one (Windows images). */
function platformLabel(platform: Platform): string {
  const version = platform["os.version"];
  return version ? `${formatPlatform(platform)} (${version})` : formatPlatform(platform);
}

/** What a converted layer is reused by: its source digests, and those below (their digest). */
function reuseKey(sources: string[], lower: string | undefined): string {
  return lower ? `${sources.join(",")}@${lower}` : sources.join(",");
}

class LayerConverter {
  readonly #source: SourceImage;
  readonly #destination: ImageDestination;
  readonly #options: ConvertOptions;
  readonly #progress: ConvertProgress;
  /** Source digest(s) and those below (reuseKey) → EROFS layer, from the tag and this run. */
  readonly #known: Map<string, Descriptor>;
  /**
   * Table digest → the table built or read back and checked in this run: a layer reused later
   * (the same layer twice in an image, or in two platforms) needs no fetch.
   */
  readonly #tables = new Map<string, TableRef>();

  constructor(
    source: SourceImage,
    destination: ImageDestination,
    options: ConvertOptions,
    progress: ConvertProgress,
    known: Map<string, Descriptor>,
  ) {
    this.#source = source;
    this.#destination = destination;
    this.#options = options;
    this.#progress = progress;
    this.#known = known;
  }

  async eachLayer(image: ResolvedImage, buildTimeSec: number): Promise<ConvertedLayer[]> {
    const out: ConvertedLayer[] = [];
    const lower = new LowerDirs();
    const labelOf = (index: number) => `layer ${index + 1}/${image.layers.length}`;
    for (const [i, layer] of image.layers.entries()) {
      const below = belowDigest(image.layers, i);
      const reused = await this.#reuse([layer.digest], below, labelOf(i));
      if (reused) {
        out.push(reused);
        continue;
      }
      const tree = await this.#read(layer, labelOf(i), buildTimeSec);
      try {
        // Reused layers below were not read; their directories may be needed now.
        await lower.completeFromBelow(
          tree,
          i,
          (n) => this.#read(image.layers[n], `${labelOf(n)} (directories)`, buildTimeSec),
        );
        out.push(
          await this.#build(tree.root, [layer.digest], below, labelOf(i), buildTimeSec),
        );
        if (lower.layers === i) lower.apply(tree);
      } finally {
        tree.close();
      }
    }
    return out;
  }

  async flattened(image: ResolvedImage, buildTimeSec: number): Promise<ConvertedLayer> {
    const sources = image.layers.map((l) => l.digest);
    const label = `${image.layers.length} layers flattened`;
    const reused = await this.#reuse(sources, undefined, label);
    if (reused) return reused;
    const trees: LayerTree[] = [];
    try {
      for (const layer of image.layers) {
        trees.push(
          await this.#read(layer, `layer ${layer.index + 1}/${image.layers.length}`, buildTimeSec),
        );
      }
      const root = flattenTrees(trees);
      return await this.#build(root, sources, undefined, label, buildTimeSec);
    } finally {
      for (const tree of trees) tree.close();
    }
  }

  async #reuse(
    sources: string[],
    lower: string | undefined,
    label: string,
  ): Promise<ConvertedLayer | undefined> {
    const known = this.#known.get(reuseKey(sources, lower));
    if (!known || !(await this.#destination.hasBlob(known.digest))) return undefined;
    this.#progress.note(`${label}: already converted as ${known.digest.slice(0, 19)}…, reused`);
    const table = await this.#reusedTable(known, label);
    return {
      sources,
      ...(lower ? { lower } : {}),
      digest: known.digest,
      sizeBytes: known.size,
      reused: true,
      table,
    };
  }

  async #reusedTable(layer: Descriptor, label: string): Promise<TableRef | undefined> {
    const digest = layer.annotations?.[CHUNK_TABLE_ANNOTATION];
    const known = digest ? this.#tables.get(digest) : undefined;
    if (known?.layerDigest === layer.digest) return known;
    const table = await reusedTable(
      this.#destination,
      layer,
      (why) =>
        this.#progress.note(`${label}: its chunk table is not used (${why}); reused without one`),
    );
    if (table) this.#tables.set(table.digest, table);
    return table;
  }

  async #read(
    layer: { digest: string; sizeBytes: number },
    label: string,
    buildTimeSec: number,
  ): Promise<LayerTree> {
    const blob = openVerifiedBlob(
      this.#source.store,
      layer.digest,
      layer.sizeBytes,
      (done) => this.#progress.update(`${label}: reading`, done, layer.sizeBytes),
    );
    try {
      return await readLayerTree(blob, `${label} (${layer.digest})`, {
        spoolDir: this.#options.workDir,
        spoolHint: "free space there, or choose a larger file system with --tmpdir DIR",
        impliedMtimeSec: buildTimeSec,
        maxTarBytes: this.#options.maxLayerBytes,
      });
    } finally {
      this.#progress.finish();
    }
  }

  async #build(
    root: Parameters<typeof writeLayerImage>[0],
    sources: string[],
    lower: string | undefined,
    label: string,
    buildTimeSec: number,
  ): Promise<ConvertedLayer> {
    const path = `${this.#options.workDir}/layer-${crypto.randomUUID().slice(0, 8)}.erofs`;
    try {
      const built = await writeLayerImage(root, path, {
        buildTimeSec,
        // The same for one source over other layers below: a layer converted over each of two
        // bases is one image when the bases give it the same directories.
        uuid: uuidFromSeed(sources.join(",")),
        onProgress: (done, total) => this.#progress.update(`${label}: writing`, done, total),
      });
      this.#progress.finish();
      const table = encodeTable(await chunkTableOfFile(path));
      if (table.table.layerDigest !== built.digest) {
        throw new OciError(`${label}: the layer file changed while it was hashed`);
      }
      await this.#destination.putBlob(
        { path, digest: built.digest, sizeBytes: built.sizeBytes, mediaType: EROFS_LAYER },
        (done) => this.#progress.update(`${label}: uploading`, done, built.sizeBytes),
      );
      await this.#destination.putBlob({
        digest: table.digest,
        sizeBytes: table.bytes.byteLength,
        mediaType: CHUNK_TABLE_MEDIA_TYPE,
        bytes: table.bytes,
      });
      if (table.pack) {
        await this.#destination.putBlob({
          digest: table.pack.digest,
          sizeBytes: table.pack.bytes.byteLength,
          mediaType: METADATA_PACK_MEDIA_TYPE,
          bytes: table.pack.bytes,
        });
      }
      this.#progress.finish();
      this.#known.set(reuseKey(sources, lower), {
        mediaType: EROFS_LAYER,
        digest: built.digest,
        size: built.sizeBytes,
        annotations: { [CHUNK_TABLE_ANNOTATION]: table.digest },
      });
      const ref = tableRef(table);
      this.#tables.set(ref.digest, ref);
      return {
        sources,
        ...(lower ? { lower } : {}),
        digest: built.digest,
        sizeBytes: built.sizeBytes,
        reused: false,
        table: ref,
      };
    } finally {
      this.#progress.finish();
      await Deno.remove(path).catch(() => {});
    }
  }
}

/** The new index's entry of a converted manifest: the source entry's platform and annotations. */
function indexEntryOf(
  made: { digest: string; size: number },
  entry: Descriptor | undefined,
  image: ResolvedImage,
): Descriptor {
  const indexEntry: Descriptor = { mediaType: OCI_MANIFEST, digest: made.digest, size: made.size };
  if (entry?.platform) indexEntry.platform = structuredClone(entry.platform);
  else if (image.platform !== "unknown") indexEntry.platform = parsePlatform(image.platform);
  const entryAnnotations = carriedAnnotations(entry?.annotations);
  if (Object.keys(entryAnnotations).length) indexEntry.annotations = entryAnnotations;
  return indexEntry;
}
