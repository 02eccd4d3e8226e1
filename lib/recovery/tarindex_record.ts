/**
 * Recovery of tar-index devices: a layer served as [meta][tar] is recorded as erofs-utils 1.9
 * writes it, `TARINDEX_OCI_BLOB <ref> <platform> <digest> <cred> <meta path> <zinfo path>`,
 * with the meta and zinfo in their durable place (/var/lib/erofs-oci/index/…, never a tmp dir)
 * so either tool can serve the device again. What the line cannot hold (the piece digests,
 * the record binding the files to the layer, the 4 KiB layout of kernels before 6.4) goes to
 * the companion file.
 */
import { FormatError, OciError } from "../errors.ts";
import { RegistryClient } from "../oci/client.ts";
import { parseReference } from "../oci/reference.ts";
import type { LayerSpec, TarIndexSpec } from "../state/runtime.ts";
import type { Credentials } from "../oci/docker_config.ts";
import type { RecoveryRecord } from "../state/recovery_record.ts";
import type { RecoveryExtra } from "../state/recovery_store.ts";
import { headBlobSize, registryLayer } from "./registry_layer.ts";

type RegistryLayer = Extract<LayerSpec, { kind: "registry" }>;
type TarIndexRecord = Extract<RecoveryRecord, { kind: "TARINDEX_OCI_BLOB" }>;

/** Companion fields of a tar-index device. */
export interface TarIndexExtra {
  pieces?: string;
  record?: unknown;
  /**
   * "4k" when the device is the re-laid-out layer (lib/mount/tar_layout.ts); absent for
   * [meta][tar], the only layout erofs-utils knows. The line alone would have `mount.erofs
   * --reattach` serve [meta][tar] under a 4k mount: it cannot say otherwise.
   */
  layout?: "4k";
}

/** The recovery line (+ companion facts) of a layer served through its tar index. */
export function tarIndexRecordForLayer(
  layer: RegistryLayer & { tarIndex: TarIndexSpec },
  credentials: Credentials | undefined,
  extra: RecoveryExtra,
): { record: RecoveryRecord; extra: RecoveryExtra & { tarIndex: TarIndexExtra } } {
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
    extra: {
      ...extra,
      plainHttp: layer.plainHttp,
      tarIndex: {
        pieces: layer.tarIndex.pieces,
        record: layer.tarIndex.record,
        ...(layer.tarIndex.layout === "4k" ? { layout: "4k" as const } : {}),
      },
    },
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
  // Loaded here, not at start-up: only tar layers need gzip, tar and the EROFS writer.
  const [{ parseIndexRecord }, { tarIndexLayout }, { tarDeviceBytes }] = await Promise.all([
    import("../gzip/index_record.ts"),
    import("../gzip/hybrid_tar.ts"),
    import("../mount/tar_layout.ts"),
  ]);
  let meta: Uint8Array;
  try {
    meta = await Deno.readFile(record.tarIndexPath);
  } catch (error) {
    throw new FormatError(
      `tar index ${record.tarIndexPath} is gone: ${(error as Error).message}`,
      "the device cannot be served without it; unmount and mount again",
    );
  }
  tarIndexLayout(meta, record.tarIndexPath);
  // Records without a layout are [meta][tar]: erofs-utils' and ours before "4k" existed.
  const deviceLayout = extra.tarIndex?.layout === "4k" ? "4k" : "512";
  if (!sizeFits(tarDeviceBytes(deviceLayout, meta))) {
    throw new FormatError(
      `tar index ${record.tarIndexPath} does not fit the device's size (${deviceLayout} layout)`,
    );
  }
  const indexRecord = extra.tarIndex?.record === undefined ? undefined : parseIndexRecord(
    new TextEncoder().encode(JSON.stringify(extra.tarIndex.record)),
    "recorded index record",
  );
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
    const pieces = typeof extra.tarIndex?.pieces === "string" ? extra.tarIndex.pieces : undefined;
    return registryLayer(record, {
      layerIndex: extra.layerIndex ?? 0,
      digest: record.digest,
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      sizeBytes: size,
      plainHttp: client.plainHttp,
      tarIndex: {
        meta: record.tarIndexPath,
        zinfo: record.zinfoPath || undefined,
        pieces: indexRecord ? pieces : undefined,
        record: indexRecord,
        layout: deviceLayout,
      },
    });
  } finally {
    client.close();
  }
}
