/** Opens the byte source a LayerSpec describes (the same spec mount and reattach build). */
import { FormatError } from "../errors.ts";
import { RegistryClient } from "../oci/client.ts";
import { RegistryBlob } from "../oci/registry_blob.ts";
import { LocalFile } from "../source/local_file.ts";
import { openLayoutBlob } from "../oci/layout_file.ts";
import type { Source } from "../source/source.ts";
import type { LayerSpec } from "./runtime.ts";

/**
 * The spec's size is what `mount` saw (a file's size, an OCI layout descriptor's size); the
 * source is refused unless its real size agrees, because every bound check after this trusts
 * it. A registry blob's real size is checked on each reply (Content-Range total).
 */
export async function openLayerSource(
  layer: LayerSpec,
  credentials?: { username: string; password: string },
): Promise<Source> {
  // An OCI layout blob: opened without following symlinks, size checked and digest verified.
  if (layer.kind === "local" && layer.digest) return await openLayoutBlob(layer);
  if (layer.kind === "local") {
    const file = await LocalFile.open(layer.path);
    if (file.size !== layer.sizeBytes) {
      await file.close();
      throw new FormatError(
        `${layer.path} is ${file.size} bytes but ${layer.sizeBytes} were declared for it`,
        "the file changed since the mount started, or its descriptor is wrong",
      );
    }
    return file;
  }
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
