/** Digest lists as hex (chunk tables, metadata lists): decoding is the inverse of encoding. */
import assert from "node:assert/strict";
import fc from "fast-check";
import { digestsOfHex, hexOfDigests } from "../lib/verify/sha256_list.ts";

Deno.test("sha256 list: hex of digests decodes back to the same bytes", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 4096 }), (bytes) => {
      const hex = hexOfDigests(bytes);
      assert.match(hex, /^[0-9a-f]*$/);
      assert.deepEqual(digestsOfHex(hex), bytes);
    }),
  );
  // Every byte value, both nibbles.
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  assert.deepEqual(digestsOfHex(hexOfDigests(all)), all);
  assert.deepEqual(digestsOfHex("00ff7f80a5"), Uint8Array.of(0, 255, 127, 128, 165));
});
