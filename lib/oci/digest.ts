import { createHash, type Hash } from "../node_builtins.ts";
import { hexOf } from "../text.ts";

/** A streaming hasher for an `algorithm:hex` digest (crypto.subtle cannot stream). */
export function digestHasher(digest: string): Hash {
  return createHash(digest.startsWith("sha512:") ? "sha512" : "sha256");
}

/** `sha256:<hex>` (or sha512 when `like` is a sha512 digest) of a byte array. */
export function digestOf(bytes: Uint8Array, like = "sha256:"): string {
  const algorithm = like.startsWith("sha512:") ? "sha512" : "sha256";
  return `${algorithm}:${createHash(algorithm).update(bytes).digest("hex")}`;
}

/**
 * digestOf through Web Crypto, for the documents a mount's CLI checks (manifest, config, chunk
 * tables, trace): it then never loads node:crypto, whose first use costs ~25 ms on the host and
 * over a second in the QEMU TCG guest (lib/node_builtins.ts). Same result as digestOf.
 */
export async function digestOfAsync(bytes: Uint8Array, like = "sha256:"): Promise<string> {
  const algorithm = like.startsWith("sha512:") ? "sha512" : "sha256";
  const name = algorithm === "sha512" ? "SHA-512" : "SHA-256";
  const hash = new Uint8Array(await crypto.subtle.digest(name, bytes as Uint8Array<ArrayBuffer>));
  return `${algorithm}:${hexOf(hash)}`;
}

/**
 * One digest for the layers below layer `index` of an image (of their digests, comma-separated,
 * bottom first); undefined for the bottom layer. What a layer is converted or indexed into
 * depends on them: the directories it only implies, the whiteouts that delete something.
 */
export function belowDigest(
  layers: readonly { digest: string }[],
  index: number,
): string | undefined {
  if (index <= 0) return undefined;
  return digestOf(new TextEncoder().encode(layers.slice(0, index).map((l) => l.digest).join(",")));
}
