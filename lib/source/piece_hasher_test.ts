import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { PieceHasher } from "./piece_hasher.ts";

const sha = (bytes: Uint8Array) => new Uint8Array(createHash("sha256").update(bytes).digest());

Deno.test("PieceHasher: a digest per piece whatever the updates' sizes; checkpoints end a piece", () => {
  const bytes = new Uint8Array(10_000).map((_, i) => (i * 7) & 0xff);
  const hasher = new PieceHasher(4096);
  for (let at = 0; at < 6000; at += 999) {
    hasher.update(bytes.subarray(at, Math.min(6000, at + 999)));
  }
  hasher.checkpoint(); // at 6000: the piece [4096, 6000) ends short
  hasher.update(bytes.subarray(6000));
  const got = hasher.finish();
  const want = [[0, 4096], [4096, 6000], [6000, 10_000]].map(([a, b]) => sha(bytes.subarray(a, b)));
  assert.deepEqual(got, new Uint8Array(want.flatMap((d) => [...d])));
});

Deno.test("PieceHasher: maxPieces pieces are kept; one more, counted when finish() closes it, and none are", () => {
  const bytes = new Uint8Array(3 * 4096 + 1);
  const exact = new PieceHasher(4096, 3);
  exact.update(bytes.subarray(0, 3 * 4096));
  assert.equal(exact.finish().length, 3 * 32);
  assert.equal(exact.tooMany, false);
  const over = new PieceHasher(4096, 3);
  over.update(bytes);
  assert.equal(over.tooMany, false, "the fourth piece is still open");
  assert.equal(over.finish().length, 0);
  assert.equal(over.tooMany, true);
});
