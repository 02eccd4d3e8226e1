// Media types from the OCI image spec (media-types.md) and Docker image manifest v2 schema 2.

/** OCI image index (multi-platform). */
export const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
/** OCI image manifest. */
export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
/** OCI image config. */
export const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
/** Docker manifest list (schema 2). */
export const DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";
/** Docker image manifest (schema 2). */
export const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
/** Docker image config. */
export const DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json";
/** Docker schema 1 manifests (unsupported, recognised for a clear error). */
export const DOCKER_SCHEMA1 = [
  "application/vnd.docker.distribution.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/** The EROFS layer media type erofs-utils writes and reads. */
export const EROFS_LAYER = "application/vnd.erofs";

/** Accept header for manifest GETs: every kind we can parse. */
export const MANIFEST_ACCEPT = [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST]
  .join(", ");

/**
 * True for `application/vnd.erofs` and its suffixed variants (`application/vnd.erofs.layer.v1`,
 * `application/vnd.erofs+zstd`, parameters after `;`).
 */
export function isErofsMediaType(mediaType: string): boolean {
  const base = mediaType.split(";")[0].trim().toLowerCase();
  return base === EROFS_LAYER || base.startsWith(`${EROFS_LAYER}.`) ||
    base.startsWith(`${EROFS_LAYER}+`);
}
