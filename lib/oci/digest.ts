import { createHash, type Hash } from "../node_builtins.ts";

/** A streaming hasher for an `algorithm:hex` digest (crypto.subtle cannot stream). */
export function digestHasher(digest: string): Hash {
  return createHash(digest.startsWith("sha512:") ? "sha512" : "sha256");
}

/** `sha256:<hex>` (or sha512 when `like` is a sha512 digest) of a byte array. */
export function digestOf(bytes: Uint8Array, like = "sha256:"): string {
  const algorithm = like.startsWith("sha512:") ? "sha512" : "sha256";
  return `${algorithm}:${createHash(algorithm).update(bytes).digest("hex")}`;
}
