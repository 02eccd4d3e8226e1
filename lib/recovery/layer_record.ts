/**
 * The one translation between a mount's LayerSpec and a recovery record (+ companion facts),
 * used by `mount` to write the file and by `reattach` to rebuild the same source, so the two
 * cannot drift apart.
 */
import { FormatError, OciError } from "../errors.ts";
import { RegistryClient } from "../oci/client.ts";
import { parseReference } from "../oci/reference.ts";
import { selectLayers } from "../oci/layers.ts";
import type { LayerSpec } from "../mount/runtime.ts";
import type { Credentials, RecoveryRecord } from "./record.ts";
import type { RecoveryExtra } from "./store.ts";

/** Record for a layer: the resolved digest, never a layer index (a tag may move). */
export function recordForLayer(
  layer: LayerSpec,
  credentials: Credentials | undefined,
  mountId: string,
  layerIndex: number,
): { record: RecoveryRecord; extra: RecoveryExtra } {
  const extra: RecoveryExtra = { mountId, layerIndex, sizeBytes: layer.sizeBytes };
  if (layer.kind === "local") return { record: { kind: "LOCAL", path: layer.path }, extra };
  return {
    record: {
      kind: "OCI_NATIVE_BLOB",
      reference: layer.reference,
      platform: layer.platform,
      digest: layer.digest,
      credentials,
    },
    extra: { ...extra, plainHttp: layer.plainHttp },
  };
}

/**
 * Rebuilds the LayerSpec of a recorded device and checks it still matches: the local file
 * exists with the device's size, or the registry still has the blob with that size (a digest
 * names its content, so the same digest is the same bytes).
 */
export async function layerForRecord(
  record: RecoveryRecord,
  extra: RecoveryExtra,
  deviceSizeBytes: number,
): Promise<{ layer: LayerSpec; credentials?: Credentials }> {
  const sizeMatches = (size: number) =>
    // The kernel device size is the source size rounded up to the block size.
    size <= deviceSizeBytes && deviceSizeBytes - size < 4096;
  if (record.kind === "LOCAL") {
    let size: number;
    try {
      size = Deno.statSync(record.path).size;
    } catch (error) {
      throw new FormatError(`image ${record.path} is gone: ${(error as Error).message}`);
    }
    if (!sizeMatches(size)) {
      throw new FormatError(
        `image ${record.path} changed size (${size} bytes, device has ${deviceSizeBytes})`,
      );
    }
    return { layer: { kind: "local", path: record.path, sizeBytes: size } };
  }
  if (record.kind === "TARINDEX_OCI_BLOB") {
    throw new FormatError("tar-index (TARINDEX_OCI_BLOB) devices cannot be reattached yet");
  }
  const ref = parseReference(record.reference);
  const client = new RegistryClient(ref.registry, {
    plainHttp: extra.plainHttp,
    credentials: record.credentials,
  });
  let digest: string;
  let layerIndex = extra.layerIndex ?? 0;
  let mediaType = "application/vnd.erofs";
  if (record.kind === "OCI_LAYER") {
    // erofs-utils records an index: resolve it again (the best that record allows).
    const image = await client.resolveImage(ref, record.platform || undefined);
    const [layer] = selectLayers(image, { layer: record.layerIndex, anyMediaType: true });
    digest = layer.digest;
    layerIndex = layer.index;
    mediaType = layer.mediaType;
  } else {
    digest = record.digest;
  }
  const response = await client.request({
    method: "HEAD",
    path: `/v2/${ref.repository}/blobs/${digest}`,
    scope: `repository:${ref.repository}:pull`,
  });
  await response.body?.cancel();
  if (response.status === 404) {
    throw new OciError(`blob ${digest} is no longer in ${ref.registry}/${ref.repository}`);
  }
  if (!response.ok) {
    throw new OciError(`checking blob ${digest}: registry answered ${response.status}`);
  }
  const size = Number(response.headers.get("content-length") ?? NaN);
  if (!sizeMatches(size)) {
    throw new OciError(
      `blob ${digest} has ${size} bytes but the device has ${deviceSizeBytes}: not the mounted data`,
    );
  }
  return {
    layer: {
      kind: "registry",
      registry: ref.registry,
      repository: ref.repository,
      reference: record.reference,
      platform: record.platform,
      layerIndex,
      digest,
      mediaType,
      sizeBytes: size,
      plainHttp: new URL(client.origin).protocol === "http:",
    },
    credentials: record.credentials,
  };
}
