/**
 * Turns the IMAGE argument of `mount` into the layers to serve: a local EROFS file, or the
 * selected layers of a registry image (resolved to digests, so a tag that moves later cannot
 * swap the data under a mounted file system).
 */
import { UserError } from "../errors.ts";
import { checkErofsSuperblock, EROFS_SUPER_END } from "../erofs/superblock.ts";
import { type LayerSelection, selectLayers } from "../oci/layers.ts";
import { formatReference } from "../oci/reference.ts";
import type { OpenedRegistry } from "../cli/registry_options.ts";
import { formatLayoutReference, OciLayout, parseLayoutReference } from "../oci/oci_layout.ts";
import type { LayerSpec } from "./runtime.ts";

export interface ResolvedLayers {
  /** What `list` shows as the image. */
  image: string;
  manifestDigest?: string;
  layers: LayerSpec[];
}

/** True when IMAGE names an existing local file rather than a registry reference. */
export function isLocalImage(image: string): boolean {
  if (image.startsWith("/") || image.startsWith("./") || image.startsWith("../")) return true;
  try {
    return Deno.statSync(image).isFile;
  } catch {
    return false;
  }
}

export async function resolveLocalImage(path: string): Promise<ResolvedLayers> {
  let real: string;
  let sizeBytes: number;
  try {
    real = Deno.realPathSync(path);
    sizeBytes = Deno.statSync(real).size;
  } catch (error) {
    throw new UserError(`cannot open image file ${path}: ${(error as Error).message}`);
  }
  const file = await Deno.open(real);
  try {
    const head = new Uint8Array(EROFS_SUPER_END);
    let filled = 0;
    while (filled < head.length) {
      const n = await file.read(head.subarray(filled));
      if (n === null) break;
      filled += n;
    }
    checkErofsSuperblock(head.subarray(0, filled), real);
  } finally {
    file.close();
  }
  return { image: real, layers: [{ kind: "local", path: real, sizeBytes }] };
}

/**
 * `oci:PATH[:TAG]`: an OCI image layout on disk (air-gapped use). Its selected layer blobs are
 * plain files, served from one checked descriptor and verified against their digests.
 */
export async function resolveLayoutImage(
  image: string,
  platform: string | undefined,
  selection: LayerSelection,
): Promise<ResolvedLayers | undefined> {
  const ref = parseLayoutReference(image);
  if (!ref) return undefined;
  const layout = new OciLayout(ref.layoutPath);
  try {
    const resolved = await layout.resolveImage(ref, platform);
    const layers: LayerSpec[] = [];
    for (const layer of selectLayers(resolved, selection)) {
      // One descriptor for the checks (no symlink, regular file, size, superblock); the
      // server opens and verifies the blob the same way before serving it.
      const file = layout.openBlob(layer.digest);
      try {
        if (file.size !== layer.sizeBytes) {
          throw new UserError(
            `blob ${layer.digest} in ${layout.path} is ${file.size} bytes but the manifest says ${layer.sizeBytes}`,
          );
        }
        const head = await file.read(0, Math.min(EROFS_SUPER_END, file.size));
        checkErofsSuperblock(head, `layer ${layer.index} (${layer.digest.slice(0, 19)}…)`);
      } finally {
        file.close();
      }
      layers.push({
        kind: "local",
        path: layout.blobPath(layer.digest),
        sizeBytes: layer.sizeBytes,
        digest: layer.digest,
      });
    }
    return {
      image: formatLayoutReference(ref),
      manifestDigest: resolved.manifestDigest,
      layers,
    };
  } finally {
    layout.close();
  }
}

export async function resolveRegistryImage(
  opened: OpenedRegistry,
  selection: LayerSelection,
): Promise<ResolvedLayers> {
  const { ref, client } = opened;
  const image = await client.resolveImage(ref, opened.platform);
  const chosen = selectLayers(image, selection);
  const layers: LayerSpec[] = [];
  for (const layer of chosen) {
    // Check the superblock before anything is attached: other data gets a clear error here
    // instead of the kernel's EINVAL later.
    // The descriptor size is checked against the real one (Content-Range total) here, first.
    const head = await client.readBlobRange(
      ref.repository,
      layer.digest,
      0,
      EROFS_SUPER_END,
      undefined,
      layer.sizeBytes,
    );
    checkErofsSuperblock(head, `layer ${layer.index} (${layer.digest.slice(0, 19)}…)`);
    layers.push({
      kind: "registry",
      registry: ref.registry,
      repository: ref.repository,
      reference: formatReference(ref),
      platform: image.platform,
      layerIndex: layer.index,
      digest: layer.digest,
      mediaType: layer.mediaType,
      sizeBytes: layer.sizeBytes,
      plainHttp: client.plainHttp,
    });
  }
  return { image: formatReference(ref), manifestDigest: image.manifestDigest, layers };
}
