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
