/**
 * Recovery of tar-index devices: a layer served as [meta][tar] is recorded as erofs-utils 1.9
 * writes it, `TARINDEX_OCI_BLOB <ref> <platform> <digest> <cred> <meta path> <zinfo path>`,
 * with the meta and zinfo in their durable place (/var/lib/erofs-oci/index/…, never a tmp dir)
 * so either tool can serve the device again. What the line cannot hold (the piece digests,
 * the record binding the files to the layer, the 4 KiB layout of kernels before 6.4) goes to
 * the companion file. An OCI layout's tar layer (`TARINDEX_LOCAL <blob path>`, erofs-oci's own)
 * keeps its index paths there too.
 */
import { FormatError, OciError } from "../errors.ts";
import { RegistryClient } from "../oci/client.ts";
import { parseReference } from "../oci/reference.ts";
import {
  type LayerSpec,
  TAR_INDEX_ORIGINS,
  type TarIndexOrigin,
  type TarIndexSpec,
} from "../state/mount_spec.ts";
import { readRegularFile } from "../../ffi/files.ts";
import type { Credentials } from "../oci/docker_config.ts";
import type { RecoveryRecord } from "../state/recovery_record.ts";
import type { RecoveryExtra } from "../state/recovery_store.ts";
import { headBlobSize, registryLayer } from "./registry_layer.ts";

type RegistryLayer = Extract<LayerSpec, { kind: "registry" }>;
type LocalLayer = Extract<LayerSpec, { kind: "local" }>;
type TarIndexRecord = Extract<RecoveryRecord, { kind: "TARINDEX_OCI_BLOB" }>;
type LocalTarIndexRecord = Extract<RecoveryRecord, { kind: "TARINDEX_LOCAL" }>;

/** Companion fields of a tar-index device. */
export interface TarIndexExtra {
  /** TARINDEX_LOCAL: the index files (a TARINDEX_OCI_BLOB line holds them itself). */
  meta?: string;
  zinfo?: string;
  pieces?: string;
  record?: unknown;
  /**
   * "4k" when the device is the re-laid-out layer (lib/mount/tar_layout.ts); absent for
   * [meta][tar], the only layout erofs-utils knows. The line alone would have `mount.erofs
   * --reattach` serve [meta][tar] under a 4k mount: it cannot say otherwise.
   */
  layout?: "4k";
  /** Where the index came from (TarIndexSpec.origin), kept for what the mount says of it. */
  origin?: TarIndexOrigin;
  /** TarIndexSpec.metaDigest / zinfoDigest: sha256 of the files when the mount opened them. */
  metaDigest?: string;
  zinfoDigest?: string;
}

/** The recovery line (+ companion facts) of a layer served through its tar index. */
export function tarIndexRecordForLayer(
  layer: (RegistryLayer | LocalLayer) & { tarIndex: TarIndexSpec },
  credentials: Credentials | undefined,
  extra: RecoveryExtra,
): { record: RecoveryRecord; extra: RecoveryExtra & { tarIndex: TarIndexExtra } } {
  const facts: TarIndexExtra = {
    pieces: layer.tarIndex.pieces,
    record: layer.tarIndex.record,
    ...(layer.tarIndex.layout === "4k" ? { layout: "4k" as const } : {}),
    ...(layer.tarIndex.origin ? { origin: layer.tarIndex.origin } : {}),
    ...(layer.tarIndex.metaDigest ? { metaDigest: layer.tarIndex.metaDigest } : {}),
    ...(layer.tarIndex.zinfoDigest ? { zinfoDigest: layer.tarIndex.zinfoDigest } : {}),
  };
  if (layer.kind === "local") {
    return {
      record: { kind: "TARINDEX_LOCAL", path: layer.path },
      extra: {
        ...extra,
        ...(layer.digest ? { digest: layer.digest } : {}),
        tarIndex: { meta: layer.tarIndex.meta, zinfo: layer.tarIndex.zinfo, ...facts },
      },
    };
  }
  return {
    record: {
      kind: "TARINDEX_OCI_BLOB",
      reference: layer.reference,
      platform: layer.platform,
      digest: layer.digest,
      credentials,
      tarIndexPath: layer.tarIndex.meta,
      zinfoPath: layer.tarIndex.zinfo ?? "",
    },
    extra: { ...extra, plainHttp: layer.plainHttp, tarIndex: facts },
  };
}

/**
 * The LayerSpec a tar-index device is served from again: the blob must still be in the
 * registry with the recorded size, and [meta][tar] must fit the device. The server checks
 * the files against the record (when there is one) before serving.
 */
export async function tarIndexLayerForRecord(
  record: TarIndexRecord,
  extra: RecoveryExtra & { tarIndex?: TarIndexExtra },
  sizeFits: (sizeBytes: number) => boolean,
  deadlineMs: number,
): Promise<{ layer: LayerSpec; credentials?: Credentials }> {
  const tarIndex = await recordedTarIndex(
    record.tarIndexPath,
    record.zinfoPath || undefined,
    extra,
    sizeFits,
  );
  const indexRecord = tarIndex.record;
  const ref = parseReference(record.reference);
  const client = new RegistryClient(ref.registry, {
    plainHttp: extra.plainHttp,
    credentials: record.credentials,
    deadlineMs,
  });
  try {
    const size = await headBlobSize(client, ref.repository, record.digest);
    if (indexRecord && indexRecord.layer.size !== size) {
      throw new OciError(`blob ${record.digest} has ${size} bytes, its index says otherwise`);
    }
    return registryLayer(record, {
      layerIndex: extra.layerIndex ?? 0,
      digest: record.digest,
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      sizeBytes: size,
      plainHttp: client.plainHttp,
      tarIndex,
    });
  } finally {
    client.close();
  }
}

/**
 * The LayerSpec an OCI layout's tar layer is served from again: the blob file must still have
 * the size its index records (the server checks its bytes: each piece as read and the first
 * at open, or the whole blob when the index has no piece digests).
 */
export async function localTarIndexLayerForRecord(
  record: LocalTarIndexRecord,
  extra: RecoveryExtra & { tarIndex?: TarIndexExtra },
  sizeFits: (sizeBytes: number) => boolean,
): Promise<{ layer: LayerSpec }> {
  const meta = extra.tarIndex?.meta;
  const digest = extra.digest;
  if (typeof meta !== "string" || !meta.startsWith("/") || typeof digest !== "string") {
    throw new FormatError(
      `recovery file of ${record.path}: its companion file does not name the tar index`,
      "the device cannot be served without it; unmount and mount again",
    );
  }
  const zinfo = extra.tarIndex?.zinfo;
  const tarIndex = await recordedTarIndex(
    meta,
    typeof zinfo === "string" && zinfo.startsWith("/") ? zinfo : undefined,
    extra,
    sizeFits,
  );
  const indexRecord = tarIndex.record;
  let size: number;
  try {
    size = Deno.statSync(record.path).size;
  } catch (error) {
    throw new FormatError(`layer blob ${record.path} is gone: ${(error as Error).message}`);
  }
  if (indexRecord && (indexRecord.layer.size !== size || indexRecord.layer.digest !== digest)) {
    throw new FormatError(`layer blob ${record.path} is not the one its index was made for`);
  }
  return { layer: { kind: "local", path: record.path, sizeBytes: size, digest, tarIndex } };
}

/**
 * The recorded index as the server takes it: the meta image checked to fit the device, the
 * recorded index record, and the piece digests only with a record to bind them to the layer.
 */
async function recordedTarIndex(
  metaPath: string,
  zinfoPath: string | undefined,
  extra: RecoveryExtra & { tarIndex?: TarIndexExtra },
  sizeFits: (sizeBytes: number) => boolean,
): Promise<TarIndexSpec> {
  // Loaded here, not at start-up: only tar layers need gzip, tar and the EROFS writer.
  const [{ parseIndexRecord, MAX_INDEX_FILE_BYTES }, { tarIndexLayout }, { tarDeviceBytes }] =
    await Promise.all([
      import("../gzip/index_record.ts"),
      import("../gzip/hybrid_tar.ts"),
      import("../mount/tar_layout.ts"),
    ]);
  let meta: Uint8Array;
  try {
    meta = await readRegularFile(metaPath, MAX_INDEX_FILE_BYTES, "tar index");
  } catch (error) {
    throw new FormatError(
      `tar index ${metaPath} is gone: ${(error as Error).message}`,
      "the device cannot be served without it; unmount and mount again",
    );
  }
  tarIndexLayout(meta, metaPath);
  // Records without a layout are [meta][tar]: erofs-utils' and ours before "4k" existed.
  const deviceLayout: "4k" | "512" = extra.tarIndex?.layout === "4k" ? "4k" : "512";
  if (!sizeFits(tarDeviceBytes(deviceLayout, meta))) {
    throw new FormatError(
      `tar index ${metaPath} does not fit the device's size (${deviceLayout} layout)`,
    );
  }
  const indexRecord = extra.tarIndex?.record === undefined ? undefined : parseIndexRecord(
    new TextEncoder().encode(JSON.stringify(extra.tarIndex.record)),
    "recorded index record",
  );
  const pieces = extra.tarIndex?.pieces;
  const origin = extra.tarIndex?.origin;
  const metaDigest = extra.tarIndex?.metaDigest;
  const zinfoDigest = extra.tarIndex?.zinfoDigest;
  return {
    meta: metaPath,
    zinfo: zinfoPath,
    pieces: indexRecord && typeof pieces === "string" ? pieces : undefined,
    record: indexRecord,
    ...(origin && TAR_INDEX_ORIGINS.includes(origin) ? { origin } : {}),
    layout: deviceLayout,
    ...(typeof metaDigest === "string" ? { metaDigest } : {}),
    ...(typeof zinfoDigest === "string" && zinfoPath ? { zinfoDigest } : {}),
  };
}
