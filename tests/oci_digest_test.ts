/**
 * digestOfAsync (Web Crypto, what a mount's CLI checks documents with) gives digestOf's
 * (node:crypto) results for sha256 and sha512, including the empty input and a 1 MiB one.
 */
import assert from "node:assert/strict";
import { digestOf, digestOfAsync } from "../lib/oci/digest.ts";

Deno.test("digestOfAsync: the same digests as digestOf", async () => {
  const big = new Uint8Array(1 << 20).map((_, i) => (i * 7919) & 0xff);
  for (const bytes of [new Uint8Array(), new TextEncoder().encode("abc"), big]) {
    for (const like of ["sha256:", "sha512:" + "0".repeat(128), undefined]) {
      assert.equal(await digestOfAsync(bytes, like), digestOf(bytes, like));
    }
  }
  assert.equal(
    await digestOfAsync(new TextEncoder().encode("abc")),
    "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
  // A view into a larger buffer hashes only its own bytes.
  assert.equal(await digestOfAsync(big.subarray(5, 9)), digestOf(big.slice(5, 9)));
});
