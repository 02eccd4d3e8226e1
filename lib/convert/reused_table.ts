/**
 * The chunk-digest table of a layer `convert` reuses from the image already at the
 * destination: read back and checked, so the new image's tables artifact lists it (and its
 * metadata pack) like a table just made. Listing it there matters: the artifact of the image
 * it came with goes once that image is overwritten and the registry collects garbage, and with
 * it the only reference that kept the table blob.
 */
import type { Descriptor } from "../oci/manifest.ts";
import { DIGEST_PATTERN } from "../oci/reference.ts";
import { OciError, UserError } from "../errors.ts";
import { CHUNK_TABLE_ANNOTATION } from "../verify/chunk_table.ts";
import { metadataBytes } from "../verify/metadata_ranges.ts";
import type { TableRef } from "../verify/table_artifact.ts";
import type { ImageDestination } from "./destination.ts";

/**
 * The table `layer`'s annotation names, from `destination` (checked against its digest and
 * that it describes this layer), with its real size and its pack. Undefined when the
 * destination lost it or it fails its checks (`onRefused` says why): the layer is then reused
 * without a table, never bound to one that could not be checked. A registry failure other
 * than "not there" is thrown: dropping the table over it would lose verified reads quietly.
 */
export async function reusedTable(
  destination: ImageDestination,
  layer: Descriptor,
  onRefused: (message: string) => void,
): Promise<TableRef | undefined> {
  const digest = layer.annotations?.[CHUNK_TABLE_ANNOTATION];
  if (!digest || !DIGEST_PATTERN.test(digest)) return undefined;
  let read;
  try {
    // One GET, no HEAD before it: a table the destination lost answers 404 just as well.
    read = await destination.readTable(digest, { digest: layer.digest, sizeBytes: layer.size });
  } catch (error) {
    if (!(error instanceof UserError)) throw error;
    if (error instanceof OciError && error.status === 404) return undefined; // lost: no note
    if (error instanceof OciError && error.status !== undefined) throw error;
    onRefused(error.message);
    return undefined;
  }
  // The pack only spares a mount ranged GETs: without its blob the mount falls back to those,
  // each range checked against the table's list, and the chunk table still verifies every
  // read. So the table stays without a pack the destination lost; a pack it has is listed.
  const metadata = read.table.metadata;
  const pack = metadata?.pack && await destination.hasBlob(metadata.pack)
    ? { digest: metadata.pack, size: metadataBytes(metadata) }
    : undefined;
  return { digest, size: read.sizeBytes, layerDigest: layer.digest, ...(pack ? { pack } : {}) };
}
