/** zinfo parsing and the structural checks that refuse a zinfo not fitting its blob. */
import assert from "node:assert/strict";
import { FormatError } from "../errors.ts";
import { MemorySource } from "../../tests/_support/memory_source.ts";
import { FIXTURES } from "../../tests/_support/requires.ts";
import { encodeZinfo, Zinfo, ZINFO_CHECKPOINT_BYTES, ZINFO_HEADER_BYTES } from "./zinfo.ts";

const BIG_GZ_BYTES = 4631369;
const LAYER_GZ_BYTES = 1129602;

async function big(): Promise<Uint8Array<ArrayBuffer>> {
  return await Deno.readFile(`${FIXTURES}/big.zinfo`);
}

function field(zinfo: Uint8Array<ArrayBuffer>, index: number, name: "in" | "out" | "bits") {
  const at = ZINFO_HEADER_BYTES + index * ZINFO_CHECKPOINT_BYTES;
  const view = new DataView(zinfo.buffer, zinfo.byteOffset);
  return {
    set(value: number | bigint) {
      if (name === "bits") view.setUint8(at + 16, Number(value));
      else view.setBigUint64(at + (name === "in" ? 0 : 8), BigInt(value), true);
    },
  };
}

async function open(bytes: Uint8Array, blobBytes = BIG_GZ_BYTES): Promise<Zinfo> {
  return await Zinfo.open(new MemorySource(bytes), blobBytes);
}

Deno.test("zinfo: erofs-utils big.zinfo parses to the recorded checkpoints", async () => {
  const zinfo = await open(await big());
  assert.equal(zinfo.spanBytes, 4194304);
  assert.deepEqual(zinfo.checkpoints, [
    { compressedOffset: 10, uncompressedOffset: 0, bits: 0 },
    { compressedOffset: 745872, uncompressedOffset: 4402292, bits: 5 },
    { compressedOffset: 4274454, uncompressedOffset: 8627871, bits: 0 },
  ]);
  assert.equal(zinfo.checkpointFor(0), 0);
  assert.equal(zinfo.checkpointFor(4402291), 0);
  assert.equal(zinfo.checkpointFor(4402292), 1);
  assert.equal(zinfo.checkpointFor(1e12), 2);
  const raw = await big();
  assert.deepEqual(
    await zinfo.window(1),
    raw.subarray(
      ZINFO_HEADER_BYTES + ZINFO_CHECKPOINT_BYTES + 17,
      ZINFO_HEADER_BYTES + 2 * ZINFO_CHECKPOINT_BYTES,
    ),
  );
});

Deno.test("zinfo: encodeZinfo round-trips", async () => {
  const window = new Uint8Array(32768).fill(7);
  const bytes = encodeZinfo(1234, [
    { compressedOffset: 10, uncompressedOffset: 0, bits: 0, window },
    { compressedOffset: 500, uncompressedOffset: 9000, bits: 3, window },
  ]);
  const zinfo = await open(bytes, 1000);
  assert.equal(zinfo.spanBytes, 1234);
  assert.equal(zinfo.checkpoints[1].bits, 3);
  assert.deepEqual(await zinfo.window(1), window);
});

const hostile: [string, (z: Uint8Array<ArrayBuffer>) => Uint8Array, RegExp, number?][] = [
  ["shorter than its header", (z) => z.subarray(0, 11), /shorter than its 12-byte header/],
  ["one byte short", (z) => z.subarray(0, z.length - 1), /header says 3 checkpoints/],
  ["one byte long", (z) => new Uint8Array([...z, 0]), /header says 3 checkpoints/],
  ["count 0", (z) => {
    new DataView(z.buffer).setUint32(0, 0, true);
    return z;
  }, /0 checkpoints/],
  ["v1 (one checkpoint fewer than counted)", (z) => {
    new DataView(z.buffer).setUint32(0, 4, true);
    return z;
  }, /header says 4/],
  ["bits 8", (z) => (field(z, 1, "bits").set(8), z), /bits=8/],
  ["bits 255", (z) => (field(z, 2, "bits").set(255), z), /bits=255/],
  ["first checkpoint not at output 0", (z) => (field(z, 0, "out").set(5), z), /not 0/],
  ["compressed offset inside the gzip header", (z) => (field(z, 0, "in").set(3), z), /outside/],
  ["checkpoint past the blob", (z) => z, /outside the 1129602-byte blob/, LAYER_GZ_BYTES],
  ["checkpoint at the blob end", (z) => (field(z, 2, "in").set(BIG_GZ_BYTES), z), /outside/],
  ["in not increasing", (z) => (field(z, 2, "in").set(745872), z), /does not follow/],
  ["out decreasing", (z) => (field(z, 2, "out").set(4402291), z), /does not follow/],
  ["out beyond 2^53", (z) => (field(z, 2, "out").set(2n ** 60n), z), /beyond any real blob/],
  ["impossible expansion", (z) => (field(z, 1, "out").set(745872 * 1033), z), /at most 1032:1/],
];

for (const [name, mutate, message, blobBytes] of hostile) {
  Deno.test(`zinfo refused at open: ${name}`, async () => {
    const bytes = mutate(await big());
    await assert.rejects(() => open(bytes, blobBytes), (error: Error) => {
      assert.ok(error instanceof FormatError, `${error.name}: ${error.message}`);
      assert.match(error.message, message);
      assert.ok(!error.message.includes("\n"));
      return true;
    });
  });
}

Deno.test("zinfo: opening reads the windows through one buffer (readInto), none made per batch", async () => {
  // 70 checkpoints: three batches of windows.
  const window = new Uint8Array(32768);
  const checkpoints = Array.from({ length: 70 }, (_, i) => ({
    compressedOffset: 10 + i * 1000,
    uncompressedOffset: i * 4000,
    bits: 0,
    window,
  }));
  const inner = new MemorySource(encodeZinfo(4000, checkpoints));
  let reads = 0;
  const targets = new Set<ArrayBufferLike>();
  let batches = 0;
  const source = {
    size: inner.size,
    read(offset: number, length: number) {
      reads++;
      return inner.read(offset, length);
    },
    async readInto(offset: number, dest: Uint8Array) {
      batches++;
      targets.add(dest.buffer);
      dest.set(await inner.read(offset, dest.length));
    },
  };
  const zinfo = await Zinfo.open(source, 100_000);
  assert.equal(zinfo.checkpoints.length, 70);
  assert.equal(zinfo.checkpoints[69].uncompressedOffset, 69 * 4000);
  assert.equal(reads, 1, "only the header through read()");
  assert.equal(batches, 3);
  assert.equal(targets.size, 1, "one buffer for every batch");
});

Deno.test("zinfo: a window changed in the file after opening fails its read; the digest is the file's", async () => {
  const bytes = await big();
  const source = {
    size: bytes.length,
    read: (offset: number, length: number) => Promise.resolve(bytes.slice(offset, offset + length)),
  };
  const zinfo = await Zinfo.open(source, BIG_GZ_BYTES, undefined, { name: "big.zinfo" });
  const sha = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  assert.equal(
    zinfo.digest,
    `sha256:${Array.from(sha, (b) => b.toString(16).padStart(2, "0")).join("")}`,
  );
  const before = await zinfo.window(1);
  bytes[ZINFO_HEADER_BYTES + ZINFO_CHECKPOINT_BYTES + 17 + 100] ^= 0xff;
  await assert.rejects(
    () => zinfo.window(1),
    /zinfo big\.zinfo: the window of checkpoint 1 changed since it was opened/,
  );
  assert.equal((await zinfo.window(2)).length, 32768);
  bytes[ZINFO_HEADER_BYTES + ZINFO_CHECKPOINT_BYTES + 17 + 100] ^= 0xff;
  assert.deepEqual(await zinfo.window(1), before);
});
