/**
 * Lists of sha256 digests stored back to back (32 bytes each), as the chunk-digest table and its
 * metadata range list keep them, and their hex form in the table's JSON.
 */
import { createHash } from "../node_builtins.ts";
import { hexOf } from "../text.ts";

export const SHA256_BYTES = 32;

/** Whether `index` names a digest of `digests`. */
function hasDigestAt(digests: Uint8Array, index: number): boolean {
  return index >= 0 && (index + 1) * SHA256_BYTES <= digests.length;
}

/** Whether `got` (a sha256) is digest `index` of `digests`, which holds it (hasDigestAt). */
function isDigestAt(digests: Uint8Array, index: number, got: Uint8Array): boolean {
  const want = digests.subarray(index * SHA256_BYTES, (index + 1) * SHA256_BYTES);
  for (let i = 0; i < SHA256_BYTES; i++) if (got[i] !== want[i]) return false;
  return true;
}

/** True when `bytes` hash to digest `index` of `digests` (an index outside it: false). */
export function matchesDigestAt(digests: Uint8Array, index: number, bytes: Uint8Array): boolean {
  if (!hasDigestAt(digests, index)) return false;
  return isDigestAt(digests, index, createHash("sha256").update(bytes).digest());
}

/**
 * matchesDigestAt through Web Crypto: hashed off the JS thread, and no Node layer to boot (a
 * cold mount's server checks its listed metadata before node:crypto is loaded).
 */
export async function matchesDigestAtAsync(
  digests: Uint8Array,
  index: number,
  bytes: Uint8Array,
): Promise<boolean> {
  if (!hasDigestAt(digests, index)) return false;
  const got = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return isDigestAt(digests, index, new Uint8Array(got));
}

/** Lower-case hex of the digests, two characters per byte. */
export function hexOfDigests(digests: Uint8Array): string {
  return hexOf(digests);
}

/** The bytes of `hex`, which the caller has checked: /^[0-9a-f]*$/ and of even length. */
export function digestsOfHex(hex: string): Uint8Array {
  const digests = new Uint8Array(hex.length / 2);
  // Character codes, not parseInt of slices: a mount's table (~18,000 bytes of digests) is
  // decoded on its way to the metadata GET, 4.4 -> 0.3 ms (JIT-cold).
  const nibble = (code: number) => code <= 57 ? code - 48 : code - 87; // "0"-"9", "a"-"f"
  for (let i = 0; i < digests.length; i++) {
    digests[i] = (nibble(hex.charCodeAt(2 * i)) << 4) | nibble(hex.charCodeAt(2 * i + 1));
  }
  return digests;
}
