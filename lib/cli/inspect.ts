import type { Command } from "./command.ts";
import { expectPositionals, parseCommandArgs } from "./command.ts";
import { openImage, REGISTRY_OPTIONS, REGISTRY_OPTIONS_HELP } from "./registry_options.ts";
import { printable, printableJson, printTable } from "./table.ts";
import { isErofsMediaType } from "../oci/media_types.ts";
import { findLayerTableDigests } from "../verify/layer_tables.ts";
import { warn } from "../log.ts";
import { pullScope } from "../oci/scope.ts";
import { tablesNotCopied } from "../verify/table_artifact.ts";
import { layersWithPushedIndex } from "../mount/tar_index_artifact.ts";
import { tarLayerKind } from "../mount/tar_layers.ts";

export const inspectCommand: Command = {
  name: "inspect",
  summary: "show an image's platforms, manifest digest and layers",
  help: `Usage: erofs-oci inspect IMAGE [options]

Shows the platforms of IMAGE, the digest of the chosen platform's manifest and its
layers (index, digest, size in bytes, media type, chunk-digest table), bottom layer first.
TABLE is "bound" when the manifest names the layer's table (push, build --push, convert),
"referrer" when only a tables artifact does (\`erofs-oci checksums IMAGE --push\`), "-" when
the layer has none (mounts cannot verify its bytes), "missing" when the manifest names a
table the registry does not have (an image copied without it: mounts refuse the layer),
"whole" in an OCI layout (a mount hashes each blob whole before serving it). For a
registry image with tar layers, TAR INDEX is "pushed" when an index of the layer was
pushed (\`erofs-oci index IMAGE --push\`: a plain mount finds it), "none" when not (mount
it with --index-missing, or push one). Layer indexes are what \`pull --layer\` and
\`mount --layer\` take.

IMAGE is [registry[:port]/]name[:tag][@sha256:DIGEST] (no registry means Docker Hub), or
oci:PATH[:TAG] for a local OCI image layout directory.

Options:
      --json            print one JSON document instead of the table
${REGISTRY_OPTIONS_HELP}
  -h, --help

Examples:
  erofs-oci inspect localhost:5000/app:v1
  erofs-oci inspect ghcr.io/org/app@sha256:... --platform linux/arm64 --json`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("inspect", argv, {
      ...REGISTRY_OPTIONS,
      json: { type: "boolean" },
    });
    const [image] = expectPositionals("inspect", positionals, ["IMAGE"]);
    const opened = await openImage("inspect", image, values);
    const ref = opened.registry?.ref;
    try {
      const resolved = await opened.resolve();
      const tables = await tablesOf(opened, resolved.manifestDigest);
      const indexed = await pushedIndexesOf(opened, resolved);
      /** A tar layer's pushed index (`index --push`): what `mount` needs of a tar layer. */
      const indexOf = (layer: { digest: string; mediaType: string }) =>
        tarLayerKind(layer.mediaType) === undefined || !indexed
          ? undefined
          : indexed.has(layer.digest);
      const tableOf = (digest: string) => {
        const t = tables.get(digest);
        return t
          ? { digest: t.digest, bound: t.bound, ...(t.missing ? { missing: true } : {}) }
          : undefined;
      };
      if (values.json) {
        const doc = {
          reference: opened.name,
          ...(ref ? { registry: ref.registry, repository: ref.repository } : {}),
          ...(opened.layout ? { layout: opened.layout.ref.layoutPath } : {}),
          ...(ref?.tag !== undefined ? { tag: ref.tag } : {}),
          ...(resolved.indexDigest ? { indexDigest: resolved.indexDigest } : {}),
          manifestDigest: resolved.manifestDigest,
          mediaType: resolved.mediaType,
          platform: resolved.platform,
          platforms: resolved.platforms,
          config: {
            digest: resolved.config.digest,
            size: resolved.config.sizeBytes,
            mediaType: resolved.config.mediaType,
          },
          layers: resolved.layers.map((l) => ({
            index: l.index,
            digest: l.digest,
            size: l.sizeBytes,
            mediaType: l.mediaType,
            erofs: isErofsMediaType(l.mediaType),
            ...(tableOf(l.digest) ? { chunkTable: tableOf(l.digest) } : {}),
            ...(indexOf(l) === undefined ? {} : { tarIndexPushed: indexOf(l) }),
          })),
        };
        console.log(printableJson(doc));
        return 0;
      }
      // Platforms come from the registry's documents: escaped like the table cells.
      const lines = [`Image:      ${printable(opened.name)}`];
      if (resolved.indexDigest) lines.push(`Index:      ${resolved.indexDigest}`);
      lines.push(`Manifest:   ${resolved.manifestDigest}`);
      lines.push(`Platform:   ${printable(resolved.platform)}`);
      if (resolved.platforms.length > 1) {
        lines.push(`Platforms:  ${printable(resolved.platforms.join(", "))}`);
      }
      lines.push(`Layers:     ${resolved.layers.length}`, "");
      console.log(lines.join("\n"));
      const tarIndexColumn = indexed !== undefined &&
        resolved.layers.some((l) => indexOf(l) !== undefined);
      printTable(
        [
          "INDEX",
          "DIGEST",
          "SIZE",
          "MEDIA TYPE",
          "TABLE",
          ...(tarIndexColumn ? ["TAR INDEX"] : []),
        ],
        resolved.layers.map((l) => [
          String(l.index),
          l.digest,
          String(l.sizeBytes),
          l.mediaType,
          opened.layout ? "whole" : tableColumn(tables.get(l.digest)),
          ...(tarIndexColumn
            ? [indexOf(l) === undefined ? "-" : indexOf(l) ? "pushed" : "none"]
            : []),
        ]),
      );
      return 0;
    } finally {
      opened.close();
    }
  },
};

/**
 * Registry images with tar layers: the layers an index was pushed for (a tar layer without one
 * mounts only with --index-missing or an index of one's own). Undefined when not looked up.
 */
async function pushedIndexesOf(
  opened: Awaited<ReturnType<typeof openImage>>,
  resolved: { manifestDigest: string; layers: { mediaType: string }[] },
): Promise<Set<string> | undefined> {
  if (!opened.registry) return undefined;
  if (!resolved.layers.some((l) => tarLayerKind(l.mediaType) !== undefined)) return undefined;
  const { client, ref } = opened.registry;
  try {
    return await layersWithPushedIndex(client, ref.repository, resolved.manifestDigest);
  } catch (error) {
    warn(`tar indexes not looked up: ${(error as Error).message}`);
    return undefined;
  }
}

interface LayerTable {
  digest: string;
  bound: boolean;
  /** The registry answered 404 for the table's blob. */
  missing?: boolean;
}

function tableColumn(table: LayerTable | undefined): string {
  if (!table) return "-";
  if (table.missing) return "missing";
  return table.bound ? "bound" : "referrer";
}

/** Registry images: each layer's chunk-digest table (a layout's blobs are verified whole). */
async function tablesOf(
  opened: Awaited<ReturnType<typeof openImage>>,
  manifestDigest: string,
): Promise<Map<string, LayerTable>> {
  if (!opened.registry) return new Map();
  const { client, ref } = opened.registry;
  let tables: Map<string, LayerTable>;
  try {
    tables = await findLayerTableDigests(client, ref.repository, manifestDigest);
  } catch (error) {
    // Inspect still shows the image when the tables cannot be looked up (e.g. 403).
    warn(`chunk-digest tables not looked up: ${(error as Error).message}`);
    return new Map();
  }
  // A copy made by a tool that knows nothing of the tables keeps the manifest's annotations
  // but not the blobs they name: mounts then refuse those layers, so say so here.
  const missing = new Set<string>();
  const digests = [...new Set([...tables.values()].map((t) => t.digest))];
  for (let start = 0; start < digests.length; start += 8) {
    await Promise.all(
      digests.slice(start, start + 8).map(async (digest) => {
        const response = await client.request({
          method: "HEAD",
          path: `/v2/${ref.repository}/blobs/${digest}`,
          scope: pullScope(ref.repository),
        }).catch(() => undefined);
        await response?.body?.cancel();
        if (response?.status === 404) missing.add(digest);
      }),
    );
  }
  if (missing.size > 0) {
    for (const table of tables.values()) table.missing = missing.has(table.digest);
    warn(
      `the registry does not have ${missing.size} chunk-digest table(s) the image names: ` +
        `mounts refuse those layers; ${tablesNotCopied(opened.name)}`,
    );
  }
  return tables;
}
