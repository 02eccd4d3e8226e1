/** Opens the byte source a LayerSpec describes (the same spec mount and reattach build). */
import { RegistryClient } from "../oci/client.ts";
import { RegistryBlob } from "../oci/registry_blob.ts";
import { LocalFile } from "../source/local_file.ts";
import type { Source } from "../source/source.ts";
import type { LayerSpec } from "./runtime.ts";

export async function openLayerSource(
  layer: LayerSpec,
  credentials?: { username: string; password: string },
): Promise<Source> {
  if (layer.kind === "local") return await LocalFile.open(layer.path);
  const client = new RegistryClient(layer.registry, {
    plainHttp: layer.plainHttp,
    credentials,
  });
  return new RegistryBlob(client, layer.repository, {
    index: layer.layerIndex,
    digest: layer.digest,
    sizeBytes: layer.sizeBytes,
    mediaType: layer.mediaType,
  });
}
