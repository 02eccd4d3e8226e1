/**
 * The tar indexes of an image kept in its registry: one OCI artifact manifest per image whose
 * `subject` is the image manifest, with four blobs per indexed layer (record, meta, zinfo,
 * pieces), each annotated with the layer digest. The record (NAME.index.json) names the other
 * three by digest, so a blob found through the artifact is verified against the record, and
 * the record against the layer: an index of another layer is refused, never served.
 */
import { OciError, UserError } from "../errors.ts";
import { statusError } from "../oci/blob_upload.ts";
import type { RegistryClient } from "../oci/client.ts";
import { pullScope } from "../oci/scope.ts";
import { digestOf } from "../oci/digest.ts";
import { MAX_MANIFEST_BYTES } from "../oci/manifest.ts";
import { OCI_MANIFEST } from "../oci/media_types.ts";
import { DIGEST_PATTERN } from "../oci/reference.ts";
import {
  listReferrers,
  pushArtifact,
  type ReferrerDescriptor,
  uploadBlobIfMissing,
} from "../oci/referrers.ts";
import {
  MAX_INDEX_FILE_BYTES,
  MAX_INDEX_RECORD_BYTES,
  parseIndexRecord,
  sha256Digest,
} from "../gzip/index_record.ts";
import {
  layerFileStem,
  sha256OfFile,
  type TarIndexFiles,
  verifyTarIndexFiles,
} from "./layer_index_files.ts";
import { maxCheckpointsFor, ZINFO_CHECKPOINT_BYTES, ZINFO_HEADER_BYTES } from "../gzip/zinfo.ts";
import { parseJson } from "../json.ts";
import { testHold } from "../test_pause.ts";
import { referenceText } from "./index_cache.ts";

export const TAR_INDEX_ARTIFACT_TYPE = "application/vnd.io.github.erofs-oci.tar-index.v1";
const MEDIA = {
  record: "application/vnd.io.github.erofs-oci.tar-index.record.v1+json",
  meta: "application/vnd.io.github.erofs-oci.tar-index.meta.v1.erofs",
  zinfo: "application/vnd.io.github.erofs-oci.tar-index.zinfo.v1",
  pieces: "application/vnd.io.github.erofs-oci.tar-index.pieces.v1",
} as const;
/** Annotation on every blob of the artifact: the layer it indexes. */
export const LAYER_ANNOTATION = "io.github.erofs-oci.layer.digest";
const TITLE = "org.opencontainers.image.title";

/**
 * Uploads the blobs of `indexes` and the artifact manifest referring to `subject`; the
 * referrers list (API or fallback tag) then names it, replacing an earlier index artifact.
 * The new artifact also names the pushed blobs of `imageLayers` it does not index again (from
 * the newest artifact holding each): `index IMAGE --push --layer N` replaced an artifact of
 * every layer by one of layer N, and the other layers' indexes were gone from the fallback tag.
 */
export async function pushTarIndexArtifact(
  client: RegistryClient,
  repository: string,
  subject: { digest: string; size: number; mediaType: string },
  indexes: TarIndexFiles[],
  imageLayers: readonly string[] = [],
): Promise<{ digest: string; via: "referrers-api" | "fallback-tag" }> {
  const layers: Record<string, unknown>[] = [];
  const indexed = new Set(indexes.map((index) => index.record.layer.digest));
  const others = imageLayers.filter((layer) => !indexed.has(layer));
  if (others.length) {
    layers.push(...await pushedBlobsOf(client, repository, subject.digest, new Set(others)));
  }
  const upload = async (
    mediaType: string,
    path: string,
    layer: string,
    content: Uint8Array | { digest: string },
  ) => {
    const data = content instanceof Uint8Array ? content : await Deno.readFile(path);
    const digest = sha256Digest(data);
    // Read back by path: what the record names is what goes up, or nothing does.
    if (!(content instanceof Uint8Array) && digest !== content.digest) {
      throw new UserError(
        `${path} changed after it was made (${digest}, recorded ${content.digest}): not pushed`,
        "make the index again",
      );
    }
    await uploadBlobIfMissing(client, repository, new Uint8Array(data), mediaType);
    layers.push({
      mediaType,
      digest,
      size: data.byteLength,
      annotations: { [LAYER_ANNOTATION]: layer, [TITLE]: path.replace(/^.*\//, "") },
    });
  };
  await testHold("index-upload");
  for (const index of indexes) {
    const layer = index.record.layer.digest;
    const stem = layerFileStem(layer);
    await upload(
      MEDIA.record,
      `${stem}.index.json`,
      layer,
      new TextEncoder().encode(JSON.stringify(index.record)),
    );
    const { record } = index;
    await upload(MEDIA.meta, index.meta, layer, record.meta);
    // A file the record does not name has nothing to match: "(not recorded)" is refused.
    const unrecorded = { digest: "(not recorded)" };
    if (index.zinfo) await upload(MEDIA.zinfo, index.zinfo, layer, record.zinfo ?? unrecorded);
    if (index.pieces) await upload(MEDIA.pieces, index.pieces, layer, record.pieces ?? unrecorded);
  }
  // The layers it holds an index of, so that it replaces only artifacts holding no other: two
  // `index --push --layer N` of different layers at once each started from a list without the
  // other's, and the second replaced the first (its layer's index gone, both said "pushed").
  const layerOf = (blob: Record<string, unknown>) =>
    (blob.annotations as Record<string, string> | undefined)?.[LAYER_ANNOTATION];
  const held = [...new Set(layers.map(layerOf))]
    .filter((layer): layer is string => layer !== undefined).sort();
  return await pushArtifact(
    client,
    repository,
    subject,
    TAR_INDEX_ARTIFACT_TYPE,
    layers,
    undefined,
    { [LAYERS_ANNOTATION]: held.join(",") },
    (old) =>
      old.artifactType === TAR_INDEX_ARTIFACT_TYPE &&
      // Older artifacts do not say: replaced, as they were.
      (old.annotations?.[LAYERS_ANNOTATION]?.split(",") ?? []).every((l) => held.includes(l)),
  );
}

/** On the artifact: the layers it holds an index of, comma-separated. */
const LAYERS_ANNOTATION = "io.github.erofs-oci.tar-index.layers";

interface ArtifactBlob {
  mediaType: string;
  digest: string;
  size: number;
  layer?: string;
  /** The artifact's descriptor of the blob, with only this tool's annotations. */
  descriptor: Record<string, unknown>;
}

/**
 * The descriptors of the index blobs pushed for `wanted` layers of image `subject`, each layer's
 * from the newest artifact with its record (as a mount looks them up).
 */
async function pushedBlobsOf(
  client: RegistryClient,
  repository: string,
  subject: string,
  wanted: Set<string>,
): Promise<Record<string, unknown>[]> {
  const kept: Record<string, unknown>[] = [];
  const referrers = await listReferrers(client, repository, subject, TAR_INDEX_ARTIFACT_TYPE);
  for (const referrer of referrers.reverse().slice(0, MAX_ARTIFACTS_LOOKED_AT)) {
    if (wanted.size === 0) break;
    const blobs = await fetchArtifactBlobs(client, repository, referrer);
    for (const layer of [...wanted]) {
      const mine = blobs.filter((b) => b.layer === layer);
      if (!mine.some((b) => b.mediaType === MEDIA.record)) continue;
      kept.push(...mine.map((b) => b.descriptor));
      wanted.delete(layer);
    }
  }
  return kept;
}

/** At most this many index artifacts are read to tell which layers have one (inspect). */
const MAX_ARTIFACTS_LOOKED_AT = 16;

/**
 * The digests of the layers of image `subject` an index was pushed for (`index --push`), read
 * from its newest index artifacts (their manifests only, no index file is downloaded).
 */
export async function layersWithPushedIndex(
  client: RegistryClient,
  repository: string,
  subject: string,
): Promise<Set<string>> {
  const layers = new Set<string>();
  const referrers = await listReferrers(client, repository, subject, TAR_INDEX_ARTIFACT_TYPE);
  for (const referrer of referrers.reverse().slice(0, MAX_ARTIFACTS_LOOKED_AT)) {
    for (const blob of await fetchArtifactBlobs(client, repository, referrer)) {
      if (blob.mediaType === MEDIA.record && blob.layer) layers.add(blob.layer);
    }
  }
  return layers;
}

/**
 * Finds, for each of `layers`, an index pushed for the image `subject` (newest artifact
 * first), downloads its files into `cacheDir/<layer>/` (kept across mounts and for
 * reattach; a file already there is used only if its digest matches) and checks them.
 * Layers without one are missing from the map.
 */
export async function fetchTarIndexes(
  client: RegistryClient,
  repository: string,
  subject: string,
  layers: { digest: string; size: number }[],
  cacheDir: string,
): Promise<Map<string, TarIndexFiles>> {
  const found = new Map<string, TarIndexFiles>();
  const referrers = await listReferrers(client, repository, subject, TAR_INDEX_ARTIFACT_TYPE);
  for (const referrer of referrers.reverse()) {
    if (layers.every((l) => found.has(l.digest))) break;
    const blobs = await fetchArtifactBlobs(client, repository, referrer);
    for (const layer of layers) {
      if (found.has(layer.digest)) continue;
      const mine = blobs.filter((b) => b.layer === layer.digest);
      const recordBlob = mine.find((b) => b.mediaType === MEDIA.record);
      if (!recordBlob) continue;
      if (recordBlob.size > MAX_INDEX_RECORD_BYTES) {
        throw new OciError(`the index record of layer ${layer.digest} is too large`);
      }
      const recordBytes = await fetchSmallBlob(client, repository, recordBlob);
      const record = parseIndexRecord(recordBytes, `index record of layer ${layer.digest}`);
      const dir = `${cacheDir}/${layerFileStem(layer.digest)}`;
      await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
      /** What this call downloaded: all it may take back (the rest other mounts may name). */
      const downloaded: string[] = [];
      const get = async (want: { file: string; digest: string } | undefined) => {
        if (!want) return undefined;
        const blob = mine.find((b) => b.digest === want.digest);
        if (!blob) {
          throw new OciError(
            `the index artifact ${referrer.digest} lacks ${want.file} (${want.digest})`,
            "push the index again: `erofs-oci index IMAGE --push`",
          );
        }
        const limit = indexFileLimit(want === record.zinfo ? "zinfo" : "other", layer.size);
        if (blob.size > limit) {
          throw new OciError(
            `${want.file} of the index artifact ${referrer.digest} is ${blob.size} bytes, ` +
              `more than a layer of ${layer.size} bytes can need (${limit})`,
          );
        }
        const path = `${dir}/${want.digest.replace(":", "-")}`;
        if (!(await fileHasDigest(path, want.digest))) {
          await client.downloadBlob(repository, blob.digest, path, {
            expectedSizeBytes: blob.size,
          });
          downloaded.push(path);
        }
        return path;
      };
      const files: TarIndexFiles = {
        record,
        meta: (await get(record.meta))!,
        zinfo: await get(record.zinfo),
        pieces: await get(record.pieces),
      };
      try {
        await verifyTarIndexFiles(files, layer);
      } catch (error) {
        // Not kept: the next mount would read (and refuse) them again. Only what this call
        // brought: the directory is the layer's, and other mounts' records name files in it
        // (the same files, when only the record was bad), so it goes only if left empty.
        for (const path of downloaded) {
          if (!namedByAMount(path)) await Deno.remove(path).catch(() => {});
        }
        await Deno.remove(dir).catch(() => {});
        throw error;
      }
      await Deno.writeFile(`${dir}/index.json`, recordBytes);
      found.set(layer.digest, files);
    }
  }
  return found;
}

/**
 * The most bytes an index file of a layer of `layerBytes` can need, refused before a download
 * rather than after it: a zinfo is 32 KiB per checkpoint and a layer may have so many
 * (zinfo.ts maxCheckpointsFor); the other files, MAX_INDEX_FILE_BYTES.
 */
export function indexFileLimit(kind: "zinfo" | "other", layerBytes: number): number {
  return kind === "zinfo"
    ? ZINFO_HEADER_BYTES + maxCheckpointsFor(layerBytes) * ZINFO_CHECKPOINT_BYTES
    : MAX_INDEX_FILE_BYTES;
}

/** Whether a recovery record or mount runtime file names `path` (kept when unsure). */
function namedByAMount(path: string): boolean {
  try {
    return referenceText().includes(path);
  } catch {
    return true;
  }
}

async function fileHasDigest(path: string, digest: string): Promise<boolean> {
  try {
    return await sha256OfFile(path) === digest;
  } catch {
    return false;
  }
}

async function fetchArtifactBlobs(
  client: RegistryClient,
  repository: string,
  referrer: ReferrerDescriptor,
): Promise<ArtifactBlob[]> {
  const { response, bytes } = await client.getDocument({
    method: "GET",
    path: `/v2/${repository}/manifests/${referrer.digest}`,
    scope: pullScope(repository),
    headers: { accept: OCI_MANIFEST },
  }, MAX_MANIFEST_BYTES);
  if (bytes === undefined) {
    await response.body?.cancel();
    throw statusError(client, response, `for the index artifact ${referrer.digest}`);
  }
  if (digestOf(bytes) !== referrer.digest) {
    throw new OciError(`index artifact ${referrer.digest} does not match its digest`);
  }
  let value: unknown;
  try {
    value = parseJson(new TextDecoder().decode(bytes));
  } catch {
    throw new OciError(`index artifact ${referrer.digest} is not JSON`);
  }
  const layers = (value as { layers?: unknown })?.layers;
  if (!Array.isArray(layers)) throw new OciError(`index artifact ${referrer.digest} has no layers`);
  const out: ArtifactBlob[] = [];
  for (const entry of layers) {
    const d = entry as Record<string, unknown> | null;
    if (
      !d || typeof d.mediaType !== "string" || typeof d.digest !== "string" ||
      !DIGEST_PATTERN.test(d.digest) || typeof d.size !== "number" ||
      !Number.isSafeInteger(d.size) || d.size < 0
    ) continue;
    const annotations = d.annotations as Record<string, unknown> | undefined;
    const layer = annotations?.[LAYER_ANNOTATION];
    const title = annotations?.[TITLE];
    const descriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size };
    out.push({
      mediaType: d.mediaType,
      digest: d.digest,
      size: d.size,
      layer: typeof layer === "string" ? layer : undefined,
      descriptor: typeof layer === "string"
        ? {
          ...descriptor,
          annotations: {
            [LAYER_ANNOTATION]: layer,
            ...(typeof title === "string" ? { [TITLE]: title } : {}),
          },
        }
        : descriptor,
    });
  }
  return out;
}

async function fetchSmallBlob(
  client: RegistryClient,
  repository: string,
  blob: ArtifactBlob,
): Promise<Uint8Array> {
  const { response, bytes } = await client.getDocument({
    method: "GET",
    path: `/v2/${repository}/blobs/${blob.digest}`,
    scope: pullScope(repository),
  }, MAX_INDEX_RECORD_BYTES);
  if (bytes === undefined) {
    await response.body?.cancel();
    throw statusError(client, response, `for blob ${blob.digest}`);
  }
  if (digestOf(bytes) !== blob.digest) {
    throw new OciError(`blob ${blob.digest} does not match its digest`);
  }
  return bytes;
}
