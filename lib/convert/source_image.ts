/**
 * The image a conversion or an image build reads: a registry reference or an OCI layout, with
 * per-platform resolution, the verified config blob and a store for its layer blobs.
 */
import { OciError } from "../errors.ts";
import { blobStatusError } from "../oci/blob_range.ts";
import type { RegistryClient } from "../oci/client.ts";
import { pullScope } from "../oci/scope.ts";
import { digestOf } from "../oci/digest.ts";
import { type Descriptor, MAX_MANIFEST_BYTES } from "../oci/manifest.ts";
import { isErofsMediaType } from "../oci/media_types.ts";
import type { LayoutReference, OciLayout } from "../oci/oci_layout.ts";
import type { ImageReference } from "../oci/reference.ts";
import { fetchManifest, imageManifestEntries, type ResolvedImage } from "../oci/resolve.ts";
import { manifestReference } from "../oci/reference.ts";
import type { BlobStore } from "./layer_blob.ts";

/** Annotation naming an index.json entry (OCI image spec, annotations.md). */
const REF_NAME = "org.opencontainers.image.ref.name";

export interface SourceImage {
  /** The image as named, for messages. */
  name: string;
  store: BlobStore;
  /** One platform's manifest (undefined: the host's, or the only one). */
  resolve(platform?: string): Promise<ResolvedImage>;
  /**
   * Every image an index offers (attestations left out), each entry as the index has it (two
   * may share os/arch and differ in os.version), with the index's annotations; undefined for a
   * single manifest.
   */
  indexEntries(): Promise<IndexEntries | undefined>;
  /** The manifest one of indexEntries' entries names. */
  resolveEntry(entry: Descriptor): Promise<ResolvedImage>;
  /** The config blob of a resolved image, digest-checked, at most 4 MiB. */
  readConfig(image: ResolvedImage): Promise<Uint8Array>;
}

export interface IndexEntries {
  entries: Descriptor[];
  annotations?: Record<string, string>;
}

export function registrySource(
  name: string,
  client: RegistryClient,
  ref: ImageReference,
): SourceImage {
  const repository = ref.repository;
  return {
    name,
    store: { kind: "registry", client, repository },
    resolve: (platform) => client.resolveImage(ref, platform),
    async indexEntries() {
      const top = await fetchManifest(client, repository, manifestReference(ref));
      if (top.document.kind !== "index") return undefined;
      return {
        entries: imageEntries(top.document.manifests),
        annotations: top.document.annotations,
      };
    },
    resolveEntry: (entry) => client.resolveImage({ ...ref, tag: undefined, digest: entry.digest }),
    async readConfig(image) {
      const { digest, sizeBytes } = image.config;
      checkConfigSize(digest, sizeBytes);
      const { response, bytes } = await client.getDocument({
        method: "GET",
        path: `/v2/${repository}/blobs/${digest}`,
        scope: pullScope(repository),
        route: "pull",
      }, MAX_MANIFEST_BYTES);
      if (bytes === undefined) {
        return await blobStatusError(client, response, repository, digest);
      }
      return checkConfig(bytes, digest);
    },
  };
}

export function layoutSource(name: string, layout: OciLayout, ref: LayoutReference): SourceImage {
  return {
    name,
    store: { kind: "layout", layout },
    resolve: (platform) => layout.resolveImage(ref, platform),
    async indexEntries() {
      // Read as resolve reads them: index.json bounded, a blob parsed only once it matches.
      let top = ref.digest
        ? (await layout.document(ref.digest)).document
        : (await layout.readIndex()).fetched.document;
      if (!ref.digest && ref.tag !== undefined && top.kind === "index") {
        const tagged = top.manifests.filter((d) => d.annotations?.[REF_NAME] === ref.tag);
        // One entry per platform under the tag (index.json's annotations are the layout's, not
        // the image's), or one entry naming an index.
        if (tagged.length !== 1) {
          return tagged.length ? { entries: imageEntries(tagged) } : undefined;
        }
        top = (await layout.document(tagged[0].digest)).document;
      }
      return top.kind === "index"
        ? { entries: imageEntries(top.manifests), annotations: top.annotations }
        : undefined;
    },
    resolveEntry: (entry) => layout.resolveImage({ ...ref, tag: undefined, digest: entry.digest }),
    async readConfig(image) {
      const { digest, sizeBytes } = image.config;
      checkConfigSize(digest, sizeBytes);
      const file = layout.openBlob(digest);
      try {
        return checkConfig(await file.readAll(MAX_MANIFEST_BYTES, `config ${digest}`), digest);
      } finally {
        file.close();
      }
    },
  };
}

/**
 * An index's image manifests, attestations left out; an entry repeated with the same digest and
 * platform once. One manifest listed for two platforms stays listed for both (it was kept for the
 * first only); convert converts it once.
 */
function imageEntries(manifests: Descriptor[]): Descriptor[] {
  const out: Descriptor[] = [];
  const key = (d: Descriptor) => `${d.digest} ${JSON.stringify(d.platform ?? null)}`;
  for (const d of imageManifestEntries(manifests)) {
    if (!out.some((seen) => key(seen) === key(d))) out.push(d);
  }
  return out;
}

function checkConfigSize(digest: string, sizeBytes: number): void {
  if (sizeBytes > MAX_MANIFEST_BYTES) {
    throw new OciError(`config ${digest} is ${sizeBytes} bytes, more than ${MAX_MANIFEST_BYTES}`);
  }
}

function checkConfig(bytes: Uint8Array, digest: string): Uint8Array {
  if (digestOf(bytes, digest) !== digest) {
    throw new OciError(`config blob ${digest} does not match its digest`);
  }
  return bytes;
}

/** Media types of tar layers (OCI image spec media-types.md, Docker image manifest v2.2). */
const TAR_LAYER_TYPES = new Set([
  "application/vnd.oci.image.layer.v1.tar",
  "application/vnd.oci.image.layer.v1.tar+gzip",
  "application/vnd.oci.image.layer.v1.tar+zstd",
  "application/vnd.oci.image.layer.nondistributable.v1.tar",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
  "application/vnd.docker.image.rootfs.diff.tar",
  "application/vnd.docker.image.rootfs.diff.tar.gzip",
  "application/vnd.docker.image.rootfs.diff.tar.zstd",
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
]);

/** Throws unless every layer of `image` is a tar layer this tool can read. */
export function checkTarLayers(image: ResolvedImage, name: string): void {
  for (const layer of image.layers) {
    const base = layer.mediaType.split(";")[0].trim().toLowerCase();
    if (TAR_LAYER_TYPES.has(base)) continue;
    if (isErofsMediaType(base)) {
      throw new OciError(
        `layer ${layer.index} of ${name} is already EROFS (${layer.mediaType})`,
        `mount it as it is (\`erofs-oci mount ${name} DIR\`), or take the layer's file with ` +
          `\`erofs-oci pull ${name} --layer ${layer.index} -o FILE\``,
      );
    }
    throw new OciError(
      `layer ${layer.index} of ${name} has media type ${
        JSON.stringify(layer.mediaType).slice(0, 120)
      }, not a tar layer`,
    );
  }
}
