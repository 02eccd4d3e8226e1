/**
 * Tables for an image someone else built: each layer is read from the registry in bounded
 * windows, hashed per chunk, and its whole-blob digest checked, so a table is only made from
 * the bytes the layer digest names.
 */
import type { BlobRangeReader } from "../oci/registry_blob.ts";
import type { LayerDescriptor } from "../oci/layers.ts";
import { ChunkTableBuilder, type EncodedTable, encodeTable } from "./chunk_table.ts";
import { verifiedMetadataRangesOf } from "./make_metadata_ranges.ts";

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
  const table = builder.finish(layer.digest);
  // An EROFS layer's table also lists where its directory metadata lies (the mount prefetch
  // fetches just that): the same walk as the mount's, through ranged reads of the blob.
  // Checked against the table just made: the registry's second answer may differ.
  const metadata = await verifiedMetadataRangesOf(
    table,
    (offset, length) =>
      store.readBlobRange(repository, layer.digest, offset, length, undefined, layer.sizeBytes),
  ).catch(() => undefined); // an optimisation: a table without a list is still a table
  return encodeTable(table.withMetadata(metadata));
}
