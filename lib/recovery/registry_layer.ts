/** What both kinds of registry record (layer, tar index) share when a device is served again. */
import { OciError } from "../errors.ts";
import type { RegistryClient } from "../oci/client.ts";
import { parseReference } from "../oci/reference.ts";
import type { LayerSpec } from "../state/mount_spec.ts";
import type { Credentials } from "../oci/docker_config.ts";
import type { RecoveryRecord } from "../state/recovery_record.ts";

type RegistryRecord = Extract<RecoveryRecord, { reference: string }>;
type RegistryLayer = Extract<LayerSpec, { kind: "registry" }>;

/** The registry LayerSpec of `record` with what was found out about its blob. */
export function registryLayer(
  record: RegistryRecord,
  resolved: Pick<
    RegistryLayer,
    "layerIndex" | "digest" | "mediaType" | "sizeBytes" | "plainHttp" | "chunkTable" | "tarIndex"
  >,
): { layer: LayerSpec; credentials?: Credentials } {
  const ref = parseReference(record.reference);
  return {
    layer: {
      kind: "registry",
      registry: ref.registry,
      repository: ref.repository,
      reference: record.reference,
      platform: record.platform,
      ...resolved,
    },
    credentials: record.credentials,
  };
}

/**
 * The size the registry gives blob `digest` (HEAD). A refusal is an OciError carrying the
 * status, so reattach can tell an unreachable registry from a gone blob; with `place`
 * (`registry/repository`) a 404 says plainly that the blob is gone.
 */
export async function headBlobSize(
  client: RegistryClient,
  repository: string,
  digest: string,
  place?: string,
): Promise<number> {
  const response = await client.request({
    method: "HEAD",
    path: `/v2/${repository}/blobs/${digest}`,
    scope: `repository:${repository}:pull`,
    route: "pull",
  });
  await response.body?.cancel();
  if (response.status === 404 && place !== undefined) {
    throw new OciError(`blob ${digest} is no longer in ${place}`);
  }
  if (!response.ok) {
    const error = new OciError(`checking blob ${digest}: registry answered ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return Number(response.headers.get("content-length") ?? NaN);
}
