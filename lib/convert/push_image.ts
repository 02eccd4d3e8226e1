import { FormatError, OciError, UserError } from "../errors.ts";
import { EROFS_SUPER_MAGIC, EROFS_SUPER_OFFSET } from "../erofs/superblock.ts";
import type { RegistryClient } from "../oci/client.ts";
import { pushScope } from "../oci/scope.ts";
import {
  blobExists,
  type BlobUploadOptions,
  type LocalBlob,
  refusedWrite,
  uploadBlob,
} from "../oci/blob_upload.ts";
import { digestHasher, digestOf } from "../oci/digest.ts";
import { EROFS_LAYER, OCI_CONFIG, OCI_MANIFEST } from "../oci/media_types.ts";
import { hostPlatform, parsePlatform } from "../oci/platform.ts";
import { formatReference, type ImageReference } from "../oci/reference.ts";
import {
  ChunkTableBuilder,
  type EncodedTable,
  encodeTable,
  withFileMetadata,
} from "../verify/chunk_table.ts";
import {
  pushTablesArtifact,
  tableAnnotations,
  tableRef,
  uploadTables,
} from "../verify/table_artifact.ts";

/** One file to push as a layer. */
export interface PushLayerFile {
  path: string;
  /** Layer media type; default `application/vnd.erofs`. */
  mediaType?: string;
}

/** Options of pushImage. */
export interface PushOptions extends BlobUploadOptions {
  /** Platform recorded in the config, `os/arch[/variant]`; default the host's. */
  platform?: string;
  /** Progress per layer: bytes hashed or uploaded so far of `totalBytes`. */
  onProgress?: (event: PushProgress) => void;
}

/** A progress report of pushImage. */
export interface PushProgress {
  phase: "hash" | "upload";
  path: string;
  doneBytes: number;
  totalBytes: number;
}

/** What pushImage did. */
export interface PushResult {
  /** Digest of the pushed manifest. */
  manifestDigest: string;
  /** The reference pushed, with tag. */
  reference: string;
  configDigest: string;
  layers: { path: string; digest: string; sizeBytes: number; uploaded: boolean }[];
  /** How the chunk-digest tables' artifact was recorded (the annotations bind them anyway). */
  tablesVia?: "referrers-api" | "fallback-tag";
}

/** Reads the EROFS magic and hashes the file in one pass; FormatError if it is not EROFS. */
async function hashErofsFile(
  file: PushLayerFile,
  onProgress?: (event: PushProgress) => void,
): Promise<LocalBlob & { table: EncodedTable }> {
  let handle: Deno.FsFile;
  try {
    handle = await Deno.open(file.path, { read: true });
  } catch (error) {
    throw new OciError(`cannot open ${file.path}: ${(error as Error).message}`, undefined, {
      cause: error,
    });
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile) {
      throw new UserError(
        `${file.path} is ${stat.isDirectory ? "a directory" : "not a regular file"}`,
        "push takes EROFS image files; make one from a directory with `erofs-oci build DIR -o " +
          "FILE` (or build DIR -o FILE --push IMAGE)",
      );
    }
    const { size } = stat;
    const mediaType = file.mediaType ?? EROFS_LAYER;
    if (mediaType === EROFS_LAYER) {
      const head = new Uint8Array(4);
      await handle.seek(EROFS_SUPER_OFFSET, Deno.SeekMode.Start);
      let got = 0;
      while (got < 4) {
        const n = await handle.read(head.subarray(got));
        if (n === null) break;
        got += n;
      }
      const magic = new DataView(head.buffer).getUint32(0, true);
      if (got < 4 || magic !== EROFS_SUPER_MAGIC) {
        throw new FormatError(
          `${file.path} is not an EROFS image (no magic 0xe0f5e1e2 at byte 1024)`,
          `make one with \`erofs-oci build DIR|TAR -o ${file.path.replace(/^.*\//, "")}.erofs\`` +
            " (or mkfs.erofs)",
        );
      }
      await handle.seek(0, Deno.SeekMode.Start);
    }
    const hasher = digestHasher("sha256:");
    const table = new ChunkTableBuilder();
    let done = 0;
    for await (const chunk of handle.readable) {
      hasher.update(chunk);
      table.update(chunk);
      done += chunk.byteLength;
      onProgress?.({ phase: "hash", path: file.path, doneBytes: done, totalBytes: size });
    }
    if (done !== size) throw new OciError(`${file.path} changed size while being read`);
    const digest = `sha256:${hasher.digest("hex")}`;
    return {
      path: file.path,
      digest,
      sizeBytes: size,
      mediaType,
      // An EROFS layer's table also says where its directory metadata lies (mount prefetch).
      table: encodeTable(
        mediaType === EROFS_LAYER
          ? await withFileMetadata(table.finish(digest), file.path)
          : table.finish(digest),
      ),
    };
  } finally {
    try {
      handle.close();
    } catch { /* closed by the readable */ }
  }
}

/**
 * Pushes EROFS files as the layers (bottom first) of a one-platform OCI image manifest tagged
 * `ref.tag` (default `latest`): hashes each file (checking the EROFS magic), skips blobs the
 * registry already has (HEAD), uploads the rest (monolithic up to 8 MiB, else PATCH chunks), then
 * a config blob with os/architecture and rootfs diff_ids, then the manifest.
 */
export async function pushImage(
  client: RegistryClient,
  ref: ImageReference,
  files: PushLayerFile[],
  options: PushOptions = {},
): Promise<PushResult> {
  if (ref.digest) {
    throw new OciError(
      `cannot push to a digest reference (${formatReference(ref)})`,
      "push to a tag; the manifest digest is printed afterwards",
      { exitCode: 2 },
    );
  }
  if (files.length === 0) {
    throw new OciError("nothing to push: no files given", undefined, { exitCode: 2 });
  }
  const platform = parsePlatform(options.platform ?? hostPlatform());
  const tag = ref.tag ?? "latest";
  const layers: (LocalBlob & { table: EncodedTable })[] = [];
  for (const file of files) layers.push(await hashErofsFile(file, options.onProgress));

  const config: Record<string, unknown> = {
    architecture: platform.architecture,
    os: platform.os,
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.digest) },
  };
  if (platform.variant) config.variant = platform.variant;
  const configBytes = new TextEncoder().encode(JSON.stringify(config));
  const configBlob: LocalBlob = {
    digest: digestOf(configBytes),
    sizeBytes: configBytes.byteLength,
    mediaType: OCI_CONFIG,
    bytes: configBytes,
  };

  const uploaded = new Set<string>();
  for (const blob of [...layers, configBlob]) {
    if (uploaded.has(blob.digest)) continue;
    if (!(await blobExists(client, ref.repository, blob.digest, options.signal))) {
      await uploadBlob(client, ref.repository, blob, options);
      uploaded.add(blob.digest);
    }
  }

  // Each layer's chunk-digest table is named on its descriptor, so the manifest binds it.
  const tables = layers.map((l) => l.table);
  await uploadTables(client, ref.repository, tables, options.signal);
  const manifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: configBlob.digest, size: configBlob.sizeBytes },
    layers: layers.map((l) => ({
      mediaType: l.mediaType,
      digest: l.digest,
      size: l.sizeBytes,
      annotations: tableAnnotations(tableRef(l.table)),
    })),
  };
  const manifestBytes = new TextEncoder().encode(JSON.stringify(manifest));
  const manifestDigest = digestOf(manifestBytes);
  const put = await client.request({
    method: "PUT",
    path: `/v2/${ref.repository}/manifests/${tag}`,
    scope: pushScope(ref.repository),
    body: manifestBytes,
    headers: { "content-type": OCI_MANIFEST },
    signal: options.signal,
  });
  if (put.status !== 201) throw await refusedWrite(client, put, `storing the manifest of ${tag}`);
  await put.body?.cancel();
  const stored = put.headers.get("docker-content-digest");
  if (stored && stored !== manifestDigest) {
    throw new OciError(`registry stored the manifest as ${stored}, expected ${manifestDigest}`);
  }
  const { via: tablesVia } = await pushTablesArtifact(
    client,
    ref.repository,
    { digest: manifestDigest, size: manifestBytes.byteLength, mediaType: OCI_MANIFEST },
    tables.map(tableRef),
    options.signal,
  );
  return {
    tablesVia,
    manifestDigest,
    reference: formatReference({ ...ref, tag }),
    configDigest: configBlob.digest,
    layers: layers.map((l) => ({
      path: l.path!,
      digest: l.digest,
      sizeBytes: l.sizeBytes,
      uploaded: uploaded.has(l.digest),
    })),
  };
}
