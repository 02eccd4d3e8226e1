/**
 * The tar side of image building: read (optionally compressed) OCI layer tars as a stream of
 * members, and apply OCI whiteouts.
 *
 * @example
 * const { stream } = await openTar("layer.tar.gz", { maxRatio: 2000 });
 * for await (const entry of readTar(stream)) {
 *   if (entry.kind === "file") await entry.body.pipeTo(out);
 * }
 */
export { DEFAULT_MAX_META_BYTES, readTar, type TarReaderOptions } from "./reader.ts";
export {
  type DataExtent,
  dataExtents,
  type SparseSegment,
  type TarEntry,
  type TarEntryKind,
} from "./entry.ts";
export { normalizeTarPath } from "./path.ts";
export { NAME_MAX_BYTES, PATH_MAX_BYTES } from "./member.ts";
export {
  type Compression,
  type DecompressOptions,
  decompressTar,
  openTar,
  sniffCompression,
} from "./decompress.ts";
export {
  LayerFlattener,
  LayerOverlayMapper,
  OPAQUE_MARKER,
  OVERLAY_OPAQUE_VALUE,
  OVERLAY_OPAQUE_XATTR,
  type OverlayForm,
  overlayFormOf,
  parseWhiteout,
  type Whiteout,
  WHITEOUT_PREFIX,
} from "./whiteout.ts";
