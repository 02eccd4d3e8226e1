/**
 * Subchunk digests in the chunk-digest table and the reads checked by them: the builder's
 * digests are each 64 KiB piece's sha256, they round-trip, hostile shapes are refused;
 * VerifiedSource.readRanges fetches only the subchunks holding the ranges (in one multi-range
 * request when the source can), refetches a run that does not match once, then fails — never
 * wrong bytes.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  ChunkTableBuilder,
  DEFAULT_SUBCHUNK_BYTES,
  encodeTable,
  parseChunkTable,
} from "./chunk_table.ts";
import { ChunkMismatchError, VerifiedSource } from "./verified_source.ts";
import { digestOf } from "../oci/digest.ts";
import { patternBytes } from "../../tests/_support/memory_source.ts";

const MIB = 1 << 20;
const SUB = DEFAULT_SUBCHUNK_BYTES;

function tableOf(bytes: Uint8Array, chunkBytes = MIB) {
  const builder = new ChunkTableBuilder(chunkBytes);
  // Pieces that straddle subchunk and chunk boundaries.
  for (let at = 0; at < bytes.length; at += 100_003) {
    builder.update(bytes.subarray(at, at + 100_003));
  }
  return builder.finish(digestOf(bytes));
}

/**
 * Serves `bytes` and counts what it is asked: single reads and multi-range batches. Flips the
 * byte at `flipAt` in the first `flips` answers that hold it.
 */
function countingSource(bytes: Uint8Array, flipAt = -1, flips = 0) {
  const reads: [number, number][] = [];
  const batches: [number, number][][] = [];
  const answer = (offset: number, length: number) => {
    const out = bytes.slice(offset, offset + length);
    if (flips > 0 && flipAt >= offset && flipAt < offset + length) {
      flips--;
      out[flipAt - offset] ^= 0x01;
    }
    return out;
  };
  return {
    reads,
    batches,
    source: {
      size: bytes.length,
      read(offset: number, length: number) {
        reads.push([offset, length]);
        return Promise.resolve(answer(offset, length));
      },
      readRanges(ranges: readonly { offset: number; length: number }[]) {
        batches.push(ranges.map((r) => [r.offset, r.length]));
        return Promise.resolve(ranges.map((r) => answer(r.offset, r.length)));
      },
    },
  };
}

Deno.test("chunk table: subchunk digests are each 64 KiB piece's sha256 and round-trip", () => {
  const bytes = patternBytes(3 * MIB + 5000);
  const table = tableOf(bytes);
  assert.equal(table.subchunkBytes, SUB);
  for (const index of [0, 1, 16, 47, 48]) {
    const piece = bytes.subarray(index * SUB, Math.min(bytes.length, (index + 1) * SUB));
    assert(table.subchunkMatches(index, piece), `subchunk ${index}`);
    const other = piece.slice();
    other[7] ^= 1;
    assert(!table.subchunkMatches(index, other));
  }
  assert(!table.subchunkMatches(49, new Uint8Array(0)), "past the end");
  assert(!table.subchunkMatches(0, bytes.subarray(0, SUB - 1)), "not a whole subchunk");
  const back = parseChunkTable(encodeTable(table).bytes);
  assert.equal(back.subchunks?.hex, table.subchunks?.hex);
  assert(back.subchunkMatches(48, bytes.subarray(48 * SUB)));
  // A table with 64 KiB chunks has none; nor one made without them.
  assert.equal(tableOf(bytes, SUB).subchunks, undefined);
  assert.equal(new ChunkTableBuilder(MIB, 0).finish().subchunks, undefined);
});

Deno.test("chunk table: hostile subchunks are refused", () => {
  const bytes = patternBytes(MIB + 1);
  const value = JSON.parse(new TextDecoder().decode(encodeTable(tableOf(bytes)).bytes));
  const bad = (subchunks: unknown) =>
    new TextEncoder().encode(JSON.stringify({ ...value, subchunks }));
  const hex = value.subchunks.chunks as string;
  for (
    const [subchunks, message] of [
      [{ bytes: 3 * 4096, chunks: hex }, /subchunk size/],
      [{ bytes: 2048, chunks: hex }, /subchunk size/],
      [{ bytes: MIB, chunks: hex }, /subchunk size/],
      [{ bytes: SUB, chunks: hex.slice(64) }, /do not fit/],
      [{ bytes: SUB, chunks: hex.slice(0, -1) + "G" }, /do not fit/],
      [{ bytes: SUB }, /not \{bytes, chunks\}/],
      ["x", /not \{bytes, chunks\}/],
    ] as const
  ) assert.throws(() => parseChunkTable(bad(subchunks)), message);
});

Deno.test("VerifiedSource.readRanges: only the subchunks holding the ranges, in one request", async () => {
  const bytes = patternBytes(4 * MIB);
  const counted = countingSource(bytes);
  const source = new VerifiedSource(counted.source, tableOf(bytes), { origin: "test" });
  assert.equal(source.smallReadUnitBytes, SUB);
  const ranges = [
    { offset: 3 * MIB + 100, length: 4096 }, // one subchunk
    { offset: 10, length: 20 }, // the first
    { offset: SUB - 10, length: 30 }, // across the first two: joins the one above
    { offset: MIB + 5, length: 2 * SUB }, // three subchunks
  ];
  const got = await source.readRanges(ranges);
  ranges.forEach((r, i) => assert.deepEqual(got[i], bytes.subarray(r.offset, r.offset + r.length)));
  assert.deepEqual(counted.batches, [[[0, 2 * SUB], [MIB, 3 * SUB], [3 * MIB, SUB]]]);
  assert.deepEqual(counted.reads, [], "nothing read alone, no whole chunk");
  await assert.rejects(() => source.readRanges([{ offset: 4 * MIB - 1, length: 2 }]), RangeError);
});

Deno.test("VerifiedSource.readRanges: a flipped byte is fetched again once; twice flipped, the read fails", async () => {
  const bytes = patternBytes(2 * MIB + 999);
  const flipAt = MIB + SUB + 17;
  const said: string[] = [];
  const once = countingSource(bytes, flipAt, 1);
  const mended = new VerifiedSource(once.source, tableOf(bytes), {
    origin: "test",
    onMismatch: (message) => said.push(message),
  });
  const [got] = await mended.readRanges([{ offset: flipAt - 5, length: 10 }]);
  assert.deepEqual(got, bytes.subarray(flipAt - 5, flipAt + 5));
  assert.deepEqual(once.reads, [[MIB + SUB, SUB]], "the run fetched again, alone");
  assert.equal(mended.mismatches, 1);
  assert.match(said[0], new RegExp(`offset ${MIB + SUB} \\(chunk 1\\).*fetching it again`));

  const twice = countingSource(bytes, flipAt, 2);
  const failed: string[] = [];
  const failing = new VerifiedSource(twice.source, tableOf(bytes), {
    origin: "test",
    onMismatch: (message) => failed.push(message),
  });
  // A run of three subchunks, the flipped one in the middle: the messages name that one.
  await assert.rejects(
    () => failing.readRanges([{ offset: 0, length: 100 }, { offset: MIB, length: 3 * SUB }]),
    ChunkMismatchError,
  );
  assert.equal(failed.length, 2);
  for (const message of failed) assert.match(message, new RegExp(`offset ${MIB + SUB} `));
  assert.match(failed[1], /again; the read fails/);
  // The bytes that do match are still served, by themselves.
  const [head] = await failing.readRanges([{ offset: 0, length: 100 }]);
  assert.deepEqual(head, bytes.subarray(0, 100));
});

Deno.test("VerifiedSource.readRanges: without subchunks, whole chunks through read()", async () => {
  const bytes = patternBytes(2 * MIB);
  const builder = new ChunkTableBuilder(MIB, 0);
  builder.update(bytes);
  const counted = countingSource(bytes);
  const source = new VerifiedSource(counted.source, builder.finish(), { origin: "test" });
  assert.equal(source.smallReadUnitBytes, MIB);
  const [got] = await source.readRanges([{ offset: MIB + 3, length: 7 }]);
  assert.deepEqual(got, bytes.subarray(MIB + 3, MIB + 10));
  assert.deepEqual(counted.reads, [[MIB, MIB]]);
  assert.deepEqual(counted.batches, []);
});

Deno.test("chunk table: the builder's digests agree with node:crypto's", () => {
  const bytes = patternBytes(SUB * 3 + 1);
  const table = tableOf(bytes);
  const hex = (from: number, to: number) =>
    createHash("sha256").update(bytes.subarray(from, to)).digest("hex");
  assert.equal(table.subchunks!.hex.slice(0, 64), hex(0, SUB));
  assert.equal(table.subchunks!.hex.slice(3 * 64), hex(3 * SUB, 3 * SUB + 1));
});
