/**
 * Chunk-digest tables in a registry. Each table is a blob; one artifact manifest per image
 * (artifactType CHUNK_TABLES_ARTIFACT_TYPE, `subject` = the image manifest) lists them, each
 * annotated with its layer, and keeps them from garbage collection and findable (referrers API
 * or the `sha256-<hex>` fallback tag). An image pushed by erofs-oci also names each layer's
 * table in an annotation on the layer descriptor: that binding is what makes a table trusted,
 * because the digest-pinned manifest then pins the table too.
 */
import { OciError } from "../errors.ts";
import { statusError } from "../oci/blob_upload.ts";
import type { RegistryClient } from "../oci/client.ts";
import { pullScope } from "../oci/scope.ts";
import { digestOfAsync } from "../oci/digest.ts";
import { MAX_MANIFEST_BYTES } from "../oci/manifest.ts";
import { OCI_MANIFEST } from "../oci/media_types.ts";
import { DIGEST_PATTERN } from "../oci/reference.ts";
import { listReferrers, pushArtifact, uploadBlobIfMissing } from "../oci/referrers.ts";
import {
  CHUNK_TABLE_ANNOTATION,
  CHUNK_TABLE_MEDIA_TYPE,
  CHUNK_TABLES_ARTIFACT_TYPE,
  type ChunkTable,
  type EncodedTable,
  MAX_TABLE_BYTES,
  parseChunkTable,
  TABLE_LAYER_ANNOTATION,
} from "./chunk_table.ts";
import { MAX_METADATA_BYTES, METADATA_PACK_MEDIA_TYPE } from "./metadata_ranges.ts";
import { parseJson } from "../json.ts";
import { clipped } from "../text.ts";

/** Uploads table blobs the registry does not have yet (before a manifest names them). */
export async function uploadTables(
  client: RegistryClient,
  repository: string,
  tables: EncodedTable[],
  signal?: AbortSignal,
): Promise<void> {
  // An image with a layer twice has its table twice: one HEAD (and upload) per blob is enough.
  const seen = new Set<string>();
  const once = (digest: string) => !seen.has(digest) && !!seen.add(digest);
  for (const { digest, bytes, pack } of tables) {
    if (once(digest)) {
      await uploadBlobIfMissing(client, repository, bytes, CHUNK_TABLE_MEDIA_TYPE, signal);
    }
    if (pack && once(pack.digest)) {
      await uploadBlobIfMissing(client, repository, pack.bytes, METADATA_PACK_MEDIA_TYPE, signal);
    }
  }
}

/** A table blob already in the repository, and the layer it describes (and its pack's blob). */
export interface TableRef {
  digest: string;
  size: number;
  layerDigest: string;
  pack?: { digest: string; size: number };
}

/**
 * Names the layer's metadata pack on its descriptor, beside the table: a mount then starts the
 * pack's GET with the manifest, side by side with the table's, instead of after it (the pack's
 * digest is otherwise only in the table). Bound by the manifest like the table, and checked
 * against the table once that is there: a pack the table does not name is not used.
 */
export const METADATA_PACK_ANNOTATION = "io.github.erofs-oci.metadata-pack";
/** The pack's byte count (decimal), with METADATA_PACK_ANNOTATION. */
export const METADATA_PACK_SIZE_ANNOTATION = "io.github.erofs-oci.metadata-pack.size";

/** The annotations that bind a layer descriptor to its table (and name the table's pack). */
export function tableAnnotations(table: Pick<TableRef, "digest" | "pack">): Record<string, string> {
  return {
    [CHUNK_TABLE_ANNOTATION]: table.digest,
    ...(table.pack
      ? {
        [METADATA_PACK_ANNOTATION]: table.pack.digest,
        [METADATA_PACK_SIZE_ANNOTATION]: String(table.pack.size),
      }
      : {}),
  };
}

/** The pack a layer descriptor's annotations name, when both are well-formed and in bounds. */
export function annotatedPack(
  annotations: Record<string, string> | undefined,
): { digest: string; sizeBytes: number } | undefined {
  const digest = annotations?.[METADATA_PACK_ANNOTATION];
  const size = annotations?.[METADATA_PACK_SIZE_ANNOTATION];
  if (typeof digest !== "string" || !DIGEST_PATTERN.test(digest)) return undefined;
  if (typeof size !== "string" || !/^[1-9][0-9]{0,9}$/.test(size)) return undefined;
  const sizeBytes = Number(size);
  return sizeBytes <= MAX_METADATA_BYTES ? { digest, sizeBytes } : undefined;
}

export function tableRef(table: EncodedTable): TableRef {
  return {
    digest: table.digest,
    size: table.bytes.byteLength,
    layerDigest: table.table.layerDigest,
    ...(table.pack
      ? { pack: { digest: table.pack.digest, size: table.pack.bytes.byteLength } }
      : {}),
  };
}

/**
 * Pushes the artifact referring to `subject` that lists `tables` (uploaded before, see
 * uploadTables), replacing an earlier tables artifact of the image in the fallback tag's list.
 * Each entry is listed once: a layer the image holds twice has one table (and pack) there.
 */
export async function pushTablesArtifact(
  client: RegistryClient,
  repository: string,
  subject: { digest: string; size: number; mediaType: string },
  tables: TableRef[],
  signal?: AbortSignal,
): Promise<{ digest: string; via: "referrers-api" | "fallback-tag" }> {
  // The packs are listed too: the artifact keeps them from garbage collection.
  const listed = new Set<string>();
  const layers = tables.flatMap((t) => [
    {
      mediaType: CHUNK_TABLE_MEDIA_TYPE,
      digest: t.digest,
      size: t.size,
      annotations: { [TABLE_LAYER_ANNOTATION]: t.layerDigest },
    },
    ...(t.pack
      ? [{
        mediaType: METADATA_PACK_MEDIA_TYPE,
        digest: t.pack.digest,
        size: t.pack.size,
        annotations: { [TABLE_LAYER_ANNOTATION]: t.layerDigest },
      }]
      : []),
  ]).filter((entry) => {
    const key = `${entry.digest} ${entry.annotations[TABLE_LAYER_ANNOTATION]}`;
    return !listed.has(key) && !!listed.add(key);
  });
  return await pushArtifact(
    client,
    repository,
    subject,
    CHUNK_TABLES_ARTIFACT_TYPE,
    layers,
    signal,
  );
}

/**
 * A table the manifest names that the registry does not have (404); its hint names the image
 * once a caller that knows the reference (mount) gives it (forImage).
 */
export class TablesNotCopiedError extends OciError {
  override status = 404;

  forImage(image: string): TablesNotCopiedError {
    return new TablesNotCopiedError(this.message, tablesNotCopied(image), { cause: this });
  }
}

/** Why a registry may lack tables the manifest of `image` names, and the way back (a hint). */
export function tablesNotCopied(image: string): string {
  return "the image was probably copied without its chunk-digest tables (skopeo and crane " +
    `copy manifest, config and layers only): \`erofs-oci checksums ${image} --push\` makes ` +
    "them again";
}

/** Fetches the table blob `digest` (checked against it) and checks it describes `layer`. */
export async function fetchTable(
  client: RegistryClient,
  repository: string,
  digest: string,
  layer: { digest: string; sizeBytes: number },
  signal?: AbortSignal,
): Promise<{ table: ChunkTable; bytes: Uint8Array }> {
  if (!DIGEST_PATTERN.test(digest)) {
    throw new OciError(
      `layer ${layer.digest}: chunk table digest '${clipped(digest)}' is malformed`,
    );
  }
  const { response, bytes } = await client.getDocument({
    method: "GET",
    path: `/v2/${repository}/blobs/${digest}`,
    scope: pullScope(repository),
    signal,
  }, MAX_TABLE_BYTES);
  if (bytes === undefined) {
    await response.body?.cancel();
    const error = statusError(client, response, `for the chunk table ${digest}`);
    if (response.status !== 404) throw error;
    // The layer's annotation names it, so going on without it would let a registry turn
    // verification off by withholding it.
    throw new TablesNotCopiedError(
      error.message,
      tablesNotCopied(`${client.registry}/${repository}:TAG`),
    );
  }
  if (await digestOfAsync(bytes, digest) !== digest) {
    throw new OciError(
      `the chunk table of layer ${layer.digest} does not match its digest ${digest}`,
      "the registry serves a tampered table; refusing to mount",
    );
  }
  try {
    return { table: parseChunkTable(bytes, layer), bytes };
  } catch (error) {
    throw new OciError(`layer ${layer.digest}: ${(error as Error).message}`, undefined, {
      cause: error,
    });
  }
}

/**
 * Table digests per layer from the tables artifacts referring to `subject`, newest first
 * (the first found per layer wins). Only the layer digest inside each table binds it.
 */
export async function findTablesByReferrer(
  client: RegistryClient,
  repository: string,
  subject: string,
  signal?: AbortSignal,
): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  const referrers = await listReferrers(
    client,
    repository,
    subject,
    CHUNK_TABLES_ARTIFACT_TYPE,
    signal,
  );
  for (const referrer of referrers.reverse().slice(0, 8)) {
    const { response, bytes } = await client.getDocument({
      method: "GET",
      path: `/v2/${repository}/manifests/${referrer.digest}`,
      scope: pullScope(repository),
      headers: { accept: OCI_MANIFEST },
      signal,
    }, MAX_MANIFEST_BYTES);
    if (bytes === undefined) {
      await response.body?.cancel();
      continue;
    }
    if (await digestOfAsync(bytes) !== referrer.digest) continue;
    let layers: unknown;
    try {
      layers = parseJson(new TextDecoder().decode(bytes))?.layers;
    } catch {
      continue;
    }
    if (!Array.isArray(layers)) continue;
    for (const entry of layers) {
      const d = entry as Record<string, unknown> | null;
      const layer = (d?.annotations as Record<string, unknown> | undefined)?.[
        TABLE_LAYER_ANNOTATION
      ];
      if (
        d?.mediaType !== CHUNK_TABLE_MEDIA_TYPE || typeof d.digest !== "string" ||
        !DIGEST_PATTERN.test(d.digest) || typeof layer !== "string" || found.has(layer)
      ) continue;
      found.set(layer, d.digest);
    }
  }
  return found;
}
