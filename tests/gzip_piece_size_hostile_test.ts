/**
 * The piece size comes from an index record (a registry artifact). A piece is read and hashed
 * whole before any of it is served, so a record claiming 1 TiB pieces (with one digest: the
 * whole layer's) made every 4 KiB read of a plain tar fetch the whole layer into memory, and a
 * gzip layer inflate its whole interval. Such sizes are refused when the index is opened.
 */
import assert from "node:assert/strict";
import { VerifiedPlainTar } from "../lib/gzip/verified_tar.ts";
import { MAX_PIECE_BYTES, PieceDigests, sha256 } from "../lib/gzip/piece_digests.ts";
import { FormatError } from "../lib/errors.ts";
import { MemorySource, patternBytes } from "./_support/memory_source.ts";

const TAR_BYTES = 40 << 20;

Deno.test("verified plain tar: a piece size above MAX_PIECE_BYTES is refused before any read", async () => {
  const tar = new MemorySource(patternBytes(TAR_BYTES, 5));
  const oneDigest = sha256(tar.bytes); // one "piece": the whole layer
  assert.throws(
    () => new VerifiedPlainTar(tar, oneDigest, 2 ** 40),
    (error: unknown) => error instanceof FormatError && /bad piece size/.test(error.message),
  );
  assert.equal(tar.reads.length, 0);
  // The largest accepted size still works, reading one piece, not the layer.
  const pieces = Math.ceil(TAR_BYTES / MAX_PIECE_BYTES);
  const digests = new Uint8Array(32 * pieces);
  for (let k = 0; k < pieces; k++) {
    digests.set(sha256(tar.bytes.subarray(k * MAX_PIECE_BYTES, (k + 1) * MAX_PIECE_BYTES)), 32 * k);
  }
  const verified = new VerifiedPlainTar(tar, digests, MAX_PIECE_BYTES);
  assert.deepEqual(await verified.read(4096, 4096), tar.bytes.slice(4096, 8192));
  assert.deepEqual(tar.reads, [{ offset: 0, length: MAX_PIECE_BYTES }]);
});

Deno.test("gzip piece digests: a piece size above MAX_PIECE_BYTES is refused", () => {
  const checkpoints = [{ compressedOffset: 10, uncompressedOffset: 0, bits: 0 }];
  assert.throws(
    () => PieceDigests.from(new Uint8Array(32), 2 ** 40, checkpoints, TAR_BYTES),
    (error: unknown) => error instanceof FormatError && /bad piece size/.test(error.message),
  );
  PieceDigests.from(new Uint8Array(32 * 3), MAX_PIECE_BYTES, checkpoints, TAR_BYTES);
});
