/**
 * Tables for an image someone else built: each layer is read from the registry in bounded
 * windows, hashed per chunk, and its whole-blob digest checked, so a table is only made from
 * the bytes the layer digest names.
 */
import type { BlobRangeReader } from "../oci/registry_blob.ts";
import type { LayerDescriptor } from "../oci/layers.ts";
import { ChunkTableBuilder, type EncodedTable, encodeTable } from "./chunk_table.ts";

const WINDOW_BYTES = 8 * 1024 * 1024;

export async function makeLayerTable(
  store: BlobRangeReader,
  repository: string,
  layer: LayerDescriptor,
  onProgress?: (doneBytes: number) => void,
): Promise<EncodedTable> {
  const builder = new ChunkTableBuilder();
  for (let offset = 0; offset < layer.sizeBytes; offset += WINDOW_BYTES) {
    const length = Math.min(WINDOW_BYTES, layer.sizeBytes - offset);
    builder.update(
      await store.readBlobRange(
        repository,
        layer.digest,
        offset,
        length,
        undefined,
        layer.sizeBytes,
      ),
    );
    onProgress?.(offset + length);
  }
  return encodeTable(builder.finish(layer.digest));
}
