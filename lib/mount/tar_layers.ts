/** Which layers are ordinary tar layers (OCI image spec media-types.md, Docker v2.2). */

export type TarLayerKind = "tar" | "gzip" | "zstd";

export const OCI_TAR = "application/vnd.oci.image.layer.v1.tar";
export const OCI_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip";

const KINDS: Record<string, TarLayerKind> = {
  [OCI_TAR]: "tar",
  [OCI_TAR_GZIP]: "gzip",
  "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
  "application/vnd.oci.image.layer.nondistributable.v1.tar": "tar",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
  "application/vnd.docker.image.rootfs.diff.tar": "tar",
  "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
  "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
};

/** The compression of a tar layer media type; undefined for anything else (EROFS too). */
export function tarLayerKind(mediaType: string): TarLayerKind | undefined {
  return KINDS[mediaType.split(";")[0].trim().toLowerCase()];
}

/**
 * Where the blob at `position` sits topmost among `layers` (each with its position in the
 * image: the image's whole list, or the layers a mount takes). An image can list one tar layer
 * more than once (docker's empty layer, a layer added twice), and an index is kept per layer
 * digest: it is made where the blob sits topmost, and every copy mounts through it. That gives
 * the merged view right: whatever a lower copy would show or hide differently, the top copy
 * decides (the same entries, its whiteouts and opaque directories covering all the lower copy's
 * would). A lower copy's own index, used at the top, showed deleted files and lost directory
 * modes; taken among the layers a mount takes, a lower copy mounted without the top one
 * (`--layer N`) sees that copy as it is. `position` itself when no layer there is listed.
 */
export function topmostCopy(
  layers: readonly { digest: string; index: number }[],
  position: number,
): number {
  const digest = layers.find((l) => l.index === position)?.digest;
  if (digest === undefined) return position;
  return Math.max(...layers.filter((l) => l.digest === digest).map((l) => l.index));
}
