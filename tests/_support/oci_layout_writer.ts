/**
 * Writes a minimal OCI image layout by hand (oci-layout, blobs, one manifest tagged in
 * index.json), for tests that need a layout without umoci or skopeo (the VM has neither).
 */
import { digestOf } from "../../lib/oci/digest.ts";
import { OCI_CONFIG, OCI_MANIFEST } from "../../lib/oci/media_types.ts";

const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));

/** Starts a layout at `dir`; returns how to store a blob in it (its descriptor fields). */
export async function startOciLayout(
  dir: string,
): Promise<(bytes: Uint8Array) => Promise<{ digest: string; size: number }>> {
  await Deno.mkdir(`${dir}/blobs/sha256`, { recursive: true });
  await Deno.writeTextFile(`${dir}/oci-layout`, '{"imageLayoutVersion":"1.0.0"}');
  return async (bytes: Uint8Array) => {
    const digest = digestOf(bytes);
    await Deno.writeFile(`${dir}/blobs/sha256/${digest.slice(7)}`, bytes);
    return { digest, size: bytes.length };
  };
}

/** The layout at `dir` with `layers` (bottom first) tagged `tag`; returns the layer blob paths. */
export async function writeOciLayout(
  dir: string,
  layers: { bytes: Uint8Array; mediaType: string }[],
  tag = "v1",
): Promise<{ layerPaths: string[] }> {
  const put = await startOciLayout(dir);
  const layerBlobs = [];
  for (const layer of layers) {
    layerBlobs.push({ mediaType: layer.mediaType, ...await put(layer.bytes) });
  }
  const config = await put(enc({
    os: "linux",
    architecture: Deno.build.arch === "aarch64" ? "arm64" : "amd64",
    rootfs: { type: "layers", diff_ids: [] },
  }));
  const manifest = await put(enc({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, ...config },
    layers: layerBlobs,
  }));
  await Deno.writeFile(
    `${dir}/index.json`,
    enc({
      schemaVersion: 2,
      manifests: [{
        mediaType: OCI_MANIFEST,
        ...manifest,
        annotations: { "org.opencontainers.image.ref.name": tag },
      }],
    }),
  );
  return { layerPaths: layerBlobs.map((b) => `${dir}/blobs/sha256/${b.digest.slice(7)}`) };
}
