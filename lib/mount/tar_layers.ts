/** Which layers are ordinary tar layers (OCI image spec media-types.md, Docker v2.2). */

export type TarLayerKind = "tar" | "gzip" | "zstd";

const KINDS: Record<string, TarLayerKind> = {
  "application/vnd.oci.image.layer.v1.tar": "tar",
  "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
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
