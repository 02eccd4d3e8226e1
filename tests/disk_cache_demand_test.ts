/**
 * A demand read of the disk cache (issue 12's cold python, lib/source/disk_cached.ts): with a
 * demand-ahead block set, the read's fetch runs on to the end of the block in the same fetch and
 * the reader is answered once its own chunks are verified and written, before the rest of the
 * block has even arrived; bytes that fail their table entry never become readable nor present.
 * Real VerifiedSource and chunk table over a streaming source that holds the rest of the body
 * back until told; real DiskCache files.
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import type { Source } from "../lib/source/source.ts";
import { VerifiedSource } from "../lib/verify/verified_source.ts";
import { ChunkTableBuilder } from "../lib/verify/chunk_table.ts";
import { patternBytes } from "./_support/memory_source.ts";

const CHUNK = 64 << 10; // disk chunk
const UNIT = 4 * CHUNK; // table chunk: what VerifiedSource hashes
const BLOCK = 4 * UNIT; // demand-ahead block
const image = patternBytes(2 * BLOCK, 11);

/**
 * Streams [offset, offset + length) in 16 KiB pieces of one scratch buffer; a stream holds
 * back everything past `holdFrom` (an absolute offset) until `release()`, and `tamper` flips a
 * byte of every copy of the bytes at that offset it sends (the refetch too).
 */
class HeldStream implements Source {
  readonly size = image.length;
  readonly streams: [number, number][] = [];
  readonly reads: [number, number][] = [];
  holdFrom = Infinity;
  tamper = -1;
  #release = Promise.withResolvers<void>();
  release(): void {
    this.#release.resolve();
  }
  #bytes(offset: number, length: number): Uint8Array {
    const out = image.slice(offset, offset + length);
    if (this.tamper >= offset && this.tamper < offset + length) out[this.tamper - offset] ^= 1;
    return out;
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    this.reads.push([offset, length]);
    return Promise.resolve(this.#bytes(offset, length));
  }
  async readTo(
    offset: number,
    length: number,
    sink: (bytes: Uint8Array, at: number) => void | Promise<void>,
  ): Promise<void> {
    this.streams.push([offset, length]);
    const body = this.#bytes(offset, length);
    const scratch = new Uint8Array(16 << 10);
    for (let at = 0; at < length;) {
      if (offset + at >= this.holdFrom) await this.#release.promise;
      const n = Math.min(scratch.length, length - at);
      scratch.set(body.subarray(at, at + n));
      await sink(scratch.subarray(0, n), at);
      scratch.fill(0xee); // a view kept past the sink call reads garbage
      at += n;
    }
  }
}

/** `promise`, or a failure after `ms` (a read that waited for bytes held back would hang). */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function setUp() {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-disk-demand-" });
  const builder = new ChunkTableBuilder(UNIT);
  builder.update(image);
  const table = builder.finish();
  const stream = new HeldStream();
  const mismatches: string[] = [];
  const verified = new VerifiedSource(stream, table, {
    origin: "test",
    onMismatch: (message) => mismatches.push(message),
  });
  const cache = DiskCache.open({ dir, chunkBytes: CHUNK, onWarning: (m) => assert.fail(m) })!;
  const disk = cache.wrap(verified, {
    digest: table.layerDigest,
    origin: "test",
  }) as DiskCachedSource;
  return {
    stream,
    disk,
    mismatches,
    cleanUp: async () => {
      stream.release();
      await disk.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("disk cache demand: the read's fetch runs on to its block's end, answered before the rest arrives", async () => {
  const t = await setUp();
  try {
    t.disk.setDemandAheadBytes(BLOCK);
    // A read in the second table chunk of block 1; everything past that chunk is held back.
    const at = BLOCK + UNIT + 3 * CHUNK + 100;
    t.stream.holdFrom = BLOCK + 2 * UNIT;
    const read = t.disk.read(at, 5000);
    assert.deepEqual(
      await within(read, 5000, "the read, with the rest of its block held back"),
      image.subarray(at, at + 5000),
    );
    // One fetch from the read's table chunk to the end of the block; the chunks past the read
    // are not there yet (held back), so the answer did not wait for them.
    assert.deepEqual(t.stream.streams, [[BLOCK + UNIT, 3 * UNIT]]);
    assert.equal(t.disk.presentChunks(), 0, "nothing marked before the run is durable");
    t.stream.release();
    await t.disk.whenDurable();
    assert.equal(t.disk.presentChunks(), 12, "the read's table chunk and the two after it");
    // The rest of the block is read from disk, without another fetch.
    const rest = BLOCK + 2 * UNIT + 10;
    assert.deepEqual(await t.disk.read(rest, UNIT), image.subarray(rest, rest + UNIT));
    assert.deepEqual(t.stream.streams, [[BLOCK + UNIT, 3 * UNIT]]);
    assert.equal(t.stream.reads.length, 0);
  } finally {
    await t.cleanUp();
  }
});

Deno.test("disk cache demand: ahead stops at chunks present or being filled, and without a block there is none", async () => {
  const t = await setUp();
  try {
    // No block set: the read's own table chunk only.
    assert.deepEqual(await t.disk.read(10, 10), image.subarray(10, 20));
    assert.deepEqual(t.stream.streams, [[0, UNIT]]);
    t.disk.setDemandAheadBytes(BLOCK);
    // Table chunk 3 of block 0 present: a read in chunk 1 runs on through chunk 2 only.
    assert.deepEqual(await t.disk.read(3 * UNIT, 10), image.subarray(3 * UNIT, 3 * UNIT + 10));
    assert.deepEqual(t.stream.streams.at(-1), [3 * UNIT, UNIT], "the last chunk of its block");
    assert.deepEqual(await t.disk.read(UNIT + 5, 10), image.subarray(UNIT + 5, UNIT + 15));
    assert.deepEqual(t.stream.streams.at(-1), [UNIT, 2 * UNIT]);
    await t.disk.whenDurable();
    assert.equal(t.disk.presentChunks(), 16);
  } finally {
    await t.cleanUp();
  }
});

Deno.test("disk cache demand: a tampered chunk ahead is never readable or present; the reader still gets its verified bytes", async () => {
  const t = await setUp();
  try {
    t.disk.setDemandAheadBytes(BLOCK);
    const bad = 2 * UNIT + 777; // in table chunk 2, ahead of the read in chunk 0
    t.stream.tamper = bad;
    t.stream.holdFrom = UNIT;
    assert.deepEqual(
      await within(t.disk.read(100, 4096), 5000, "the read, with the bad chunk held back"),
      image.subarray(100, 4196),
    );
    t.stream.release();
    await t.disk.whenDurable();
    // The refetch (read()) sent the flipped byte again: the run failed, nothing of it marked.
    assert.equal(t.mismatches.length, 2, t.mismatches.join("\n"));
    assert.equal(t.disk.presentChunks(), 0);
    // Reading the bad bytes fails (EIO to the kernel), never returns them.
    await assert.rejects(t.disk.read(bad - 10, 20), /do not match the chunk-digest table/);
    assert.equal(t.disk.presentChunks(), 0);
    // Once the registry sends good bytes, they are read and stored.
    t.stream.tamper = -1;
    assert.deepEqual(await t.disk.read(bad - 10, 20), image.subarray(bad - 10, bad + 10));
    await t.disk.whenDurable();
    for (let c = 8; c < 12; c++) {
      const bytes = await t.disk.read(c * CHUNK, CHUNK);
      assert.deepEqual(bytes, image.subarray(c * CHUNK, (c + 1) * CHUNK));
    }
  } finally {
    await t.cleanUp();
  }
});

Deno.test("disk cache demand: with two blocks, a read in a block's last table chunk runs on through the next block", async () => {
  const t = await setUp();
  try {
    t.disk.setDemandAheadBytes(BLOCK, 2);
    const at = 3 * UNIT + 50; // the last table chunk of block 0
    assert.deepEqual(await t.disk.read(at, 10), image.subarray(at, at + 10));
    assert.deepEqual(t.stream.streams, [[3 * UNIT, UNIT + BLOCK]]);
    await t.disk.whenDurable();
    assert.equal(t.disk.presentChunks(), 4 + 16);
    // Block 0's first three table chunks were before the read: a read there fetches them.
    assert.deepEqual(await t.disk.read(10, 10), image.subarray(10, 20));
    assert.deepEqual(t.stream.streams.at(-1), [0, 3 * UNIT]);
  } finally {
    await t.cleanUp();
  }
});
