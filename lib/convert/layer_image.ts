/** Writes a build tree as an EROFS file and names it by digest, for pushing as a layer. */
import { createHash } from "../node_builtins.ts";
import { buildImage } from "../erofs/writer/build_image.ts";
import type { BuildNode } from "../erofs/writer/tree.ts";

export interface BuiltLayer {
  path: string;
  digest: string;
  sizeBytes: number;
}

export interface LayerImageOptions {
  buildTimeSec: number;
  uuid: Uint8Array;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

/** Builds `root` at `path` and hashes the result (the bytes that will be pushed). */
export async function writeLayerImage(
  root: BuildNode,
  path: string,
  options: LayerImageOptions,
): Promise<BuiltLayer> {
  const result = buildImage(root, path, {
    buildTimeSec: options.buildTimeSec,
    uuid: options.uuid,
    onProgress: options.onProgress,
  });
  const hash = createHash("sha256");
  let sizeBytes = 0;
  const file = await Deno.open(path, { read: true });
  try {
    for await (const chunk of file.readable) {
      hash.update(chunk);
      sizeBytes += chunk.byteLength;
    }
  } finally {
    try {
      file.close();
    } catch { /* closed by its readable */ }
  }
  if (sizeBytes !== result.sizeBytes) throw new Error(`${path} changed while being hashed`);
  return { path, digest: `sha256:${hash.digest("hex")}`, sizeBytes };
}

/**
 * A UUID derived from `seed` (the source digests), so converting the same layer again gives
 * the same bytes and so the same digest (RFC 9562 version 8 layout: custom data).
 */
export function uuidFromSeed(seed: string): Uint8Array {
  const bytes = new Uint8Array(createHash("sha256").update(seed).digest().subarray(0, 16));
  bytes[6] = (bytes[6] & 0x0f) | 0x80;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  return bytes;
}
