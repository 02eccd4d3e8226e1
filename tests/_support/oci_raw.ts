/**
 * Plain-`fetch` distribution API calls for test setup and checks, independent of lib/oci so a
 * bug there cannot hide itself: upload a blob, put a manifest, get a manifest or blob.
 */
import type { TestRegistry } from "./registry.ts";
import { digestOfAsync } from "../../lib/oci/digest.ts";

export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
export const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
export const DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";
/** Deadline of one setup request: a hung registry fails the test instead of stalling it. */
const REQUEST_TIMEOUT_MS = 15_000;

export const MANIFEST_ACCEPT = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ");

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os: string; architecture: string; variant?: string };
}

/** `sha256:<hex>` of `bytes` (the product's own Web Crypto digest). */
export function sha256Digest(bytes: Uint8Array): Promise<string> {
  return digestOfAsync(bytes);
}

/** Monolithic upload (POST then PUT ?digest=); returns the descriptor. */
export async function uploadBlob(
  registry: TestRegistry,
  repository: string,
  bytes: Uint8Array<ArrayBuffer>,
  mediaType: string,
): Promise<Descriptor> {
  const digest = await sha256Digest(bytes);
  const headers = await registry.authHeaders(repository);
  const start = await fetch(`http://${registry.host}/v2/${repository}/blobs/uploads/`, {
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    method: "POST",
    headers,
  });
  await start.body?.cancel();
  if (start.status !== 202) throw new Error(`blob upload start: HTTP ${start.status}`);
  const location = new URL(start.headers.get("location")!, `http://${registry.host}/`);
  location.searchParams.set("digest", digest);
  const put = await fetch(location, {
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    method: "PUT",
    headers: { ...headers, "content-type": "application/octet-stream" },
    body: bytes,
  });
  await put.body?.cancel();
  if (put.status !== 201) throw new Error(`blob upload: HTTP ${put.status}`);
  return { mediaType, digest, size: bytes.byteLength };
}

/** PUT a manifest or index under `reference`; returns its digest. */
export async function putManifest(
  registry: TestRegistry,
  repository: string,
  reference: string,
  manifest: unknown,
  mediaType: string,
): Promise<string> {
  return (await putManifestDescriptor(registry, repository, reference, manifest, mediaType)).digest;
}

/** PUT a manifest or index under `reference`; returns its descriptor. */
export async function putManifestDescriptor(
  registry: TestRegistry,
  repository: string,
  reference: string,
  manifest: unknown,
  mediaType: string,
): Promise<Descriptor> {
  const body = new TextEncoder().encode(JSON.stringify(manifest));
  const response = await fetch(`http://${registry.host}/v2/${repository}/manifests/${reference}`, {
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    method: "PUT",
    headers: { ...await registry.authHeaders(repository), "content-type": mediaType },
    body,
  });
  const text = await response.text();
  if (response.status !== 201) throw new Error(`manifest put: HTTP ${response.status} ${text}`);
  return { mediaType, digest: await sha256Digest(body), size: body.byteLength };
}

/** An image manifest with an OCI config for `platform` and the given layers (bottom first). */
export async function pushImage(
  registry: TestRegistry,
  repository: string,
  reference: string,
  layers: { bytes: Uint8Array<ArrayBuffer>; mediaType: string }[],
  platform = { os: "linux", architecture: "amd64" },
): Promise<{ manifestDigest: string; manifestSize: number; layers: Descriptor[] }> {
  const config = new TextEncoder().encode(JSON.stringify({
    ...platform,
    rootfs: { type: "layers", diff_ids: [] },
  }));
  const configDescriptor = await uploadBlob(registry, repository, config, OCI_CONFIG);
  const layerDescriptors: Descriptor[] = [];
  for (const layer of layers) {
    layerDescriptors.push(await uploadBlob(registry, repository, layer.bytes, layer.mediaType));
  }
  const manifest = await putManifestDescriptor(registry, repository, reference, {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: configDescriptor,
    layers: layerDescriptors,
  }, OCI_MANIFEST);
  return { manifestDigest: manifest.digest, manifestSize: manifest.size, layers: layerDescriptors };
}

/**
 * An OCI index under `reference` with one image per platform (each also tagged
 * `REFERENCE-OS-ARCH`); returns the index digest.
 */
export async function pushIndex(
  registry: TestRegistry,
  repository: string,
  reference: string,
  images: {
    platform: { os: string; architecture: string };
    layers: { bytes: Uint8Array<ArrayBuffer>; mediaType: string }[];
  }[],
): Promise<string> {
  const manifests: Descriptor[] = [];
  for (const image of images) {
    const tag = `${reference}-${image.platform.os}-${image.platform.architecture}`;
    const pushed = await pushImage(registry, repository, tag, image.layers, image.platform);
    manifests.push({
      mediaType: OCI_MANIFEST,
      digest: pushed.manifestDigest,
      size: pushed.manifestSize,
      platform: image.platform,
    });
  }
  return await putManifest(registry, repository, reference, {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests,
  }, OCI_INDEX);
}

/** GET a manifest with the usual Accept list; returns body, media type and digest header. */
export async function getManifest(
  registry: TestRegistry,
  repository: string,
  reference: string,
): Promise<{ status: number; mediaType: string; digest: string | null; json: unknown }> {
  const response = await fetch(`http://${registry.host}/v2/${repository}/manifests/${reference}`, {
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    headers: { ...await registry.authHeaders(repository, ["pull"]), accept: MANIFEST_ACCEPT },
  });
  const text = await response.text();
  return {
    status: response.status,
    mediaType: response.headers.get("content-type") ?? "",
    digest: response.headers.get("docker-content-digest"),
    json: response.ok ? JSON.parse(text) : text,
  };
}

/** GET a whole blob. */
export async function getBlob(
  registry: TestRegistry,
  repository: string,
  digest: string,
): Promise<Uint8Array> {
  const response = await fetch(`http://${registry.host}/v2/${repository}/blobs/${digest}`, {
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    headers: await registry.authHeaders(repository, ["pull"]),
  });
  if (!response.ok) {
    await response.body?.cancel();
    throw new Error(`blob get: HTTP ${response.status}`);
  }
  return new Uint8Array(await response.arrayBuffer());
}
