import { deepStrictEqual, deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import fc from "fast-check";
import { CachedSource } from "./cached.ts";
import type { Source } from "./source.ts";
import { MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";

const KiB = 1024, MiB = 1024 * 1024;

/** A large source that computes its bytes (byte i = i mod 251), so no backing copy is held. */
class GeneratedSource implements Source {
  readonly reads: { offset: number; length: number }[] = [];
  constructor(readonly size: number) {}
  read(offset: number, length: number): Promise<Uint8Array> {
    this.reads.push({ offset, length });
    if (offset + length > this.size) return Promise.reject(new RangeError("past end"));
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = (offset + i) % 251;
    return Promise.resolve(out);
  }
}

function expectGenerated(bytes: Uint8Array, offset: number): void {
  for (let i = 0; i < bytes.length; i += 997) {
    if (bytes[i] !== (offset + i) % 251) throw new Error(`byte ${offset + i} wrong`);
  }
  if (bytes.length) {
    const last = bytes.length - 1;
    if (bytes[last] !== (offset + last) % 251) throw new Error(`byte ${offset + last} wrong`);
  }
}

Deno.test("CachedSource: random reads (concurrent batches) equal the underlying bytes; bound holds", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 300_000 }),
      fc.constantFrom(512, 4096, 16384),
      fc.integer({ min: 1, max: 8 }),
      fc.array(
        fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.nat(70_000)), {
          minLength: 1,
          maxLength: 6,
        }),
        { minLength: 1, maxLength: 12 },
      ),
      async (size, chunkBytes, cacheChunks, batches) => {
        const data = patternBytes(size, size);
        const inner = new MemorySource(data, { delayMs: (o) => (o % 3 === 0 ? 1 : 0) });
        const cache = new CachedSource(inner, {
          chunkBytes,
          cacheBytes: chunkBytes * cacheChunks,
          maxReadaheadBytes: chunkBytes * 4,
        });
        for (const batch of batches) {
          const reads = batch.map(([at, len]) => {
            const offset = Math.floor(at * size);
            const length = Math.min(len, size - offset);
            return { offset, length };
          });
          const results = await Promise.all(reads.map((r) => cache.read(r.offset, r.length)));
          reads.forEach((r, i) => {
            deepStrictEqual(results[i], data.subarray(r.offset, r.offset + r.length));
          });
          ok(cache.stats().cachedBytes <= cache.cacheBytes);
        }
        assertEquals(inner.outOfRange, []);
      },
    ),
    { numRuns: 150 },
  );
});

Deno.test("CachedSource: readInto assembles chunks into the caller's buffer", async () => {
  const data = patternBytes(5 * MiB + 123);
  const cache = new CachedSource(new MemorySource(data), { chunkBytes: MiB, cacheBytes: 8 * MiB });
  const dest = new Uint8Array(3 * MiB + 77);
  await cache.readInto(MiB - 50, dest);
  deepStrictEqual(dest, data.subarray(MiB - 50, MiB - 50 + dest.length));
  await rejects(cache.readInto(data.length - 10, new Uint8Array(11)), RangeError);
});

Deno.test("CachedSource: two concurrent reads of one chunk cause one underlying fetch", async () => {
  const inner = new MemorySource(patternBytes(4 * MiB), { delayMs: () => 20 });
  const cache = new CachedSource(inner, { chunkBytes: MiB, cacheBytes: 8 * MiB });
  // Two random (non-sequential) reads inside chunk 2: no readahead involved.
  const [a, b] = await Promise.all([
    cache.read(2 * MiB + 100, 1000),
    cache.read(2 * MiB + 5000, 10),
  ]);
  deepStrictEqual(a, inner.bytes.subarray(2 * MiB + 100, 2 * MiB + 1100));
  deepStrictEqual(b, inner.bytes.subarray(2 * MiB + 5000, 2 * MiB + 5010));
  deepStrictEqual(inner.reads, [{ offset: 2 * MiB, length: MiB }]);
  const stats = cache.stats();
  assertEquals(stats.fetches, 1);
  assertEquals(stats.joined, 1);
  // Later reads are hits.
  await cache.read(2 * MiB, 10);
  assertEquals(cache.stats().hits, 1);
  assertEquals(inner.reads.length, 1);
});

Deno.test("CachedSource: a read joining an in-flight readahead window does not refetch", async () => {
  const inner = new MemorySource(patternBytes(32 * MiB), { delayMs: () => 30 });
  const cache = new CachedSource(inner, { chunkBytes: MiB, cacheBytes: 32 * MiB });
  await cache.read(0, 64 * KiB); // chunk 0, then readahead of chunks 1-2 starts
  const fetchesBefore = cache.stats().fetches;
  const [x, y] = await Promise.all([cache.read(MiB, 10), cache.read(2 * MiB + 1, 10)]);
  deepStrictEqual(x, inner.bytes.subarray(MiB, MiB + 10));
  deepStrictEqual(y, inner.bytes.subarray(2 * MiB + 1, 2 * MiB + 11));
  // Both chunks came from the one window read already in flight.
  ok(
    inner.reads.some((r) => r.offset === MiB && r.length === 2 * MiB),
    JSON.stringify(inner.reads),
  );
  ok(cache.stats().joined >= 2);
  assertEquals(
    inner.reads.filter((r) => r.offset <= 2 * MiB && r.offset + r.length > MiB).length,
    1,
  );
  ok(cache.stats().fetches >= fetchesBefore);
});

Deno.test("CachedSource: sequential reads grow the readahead window; random access resets it", async () => {
  const inner = new GeneratedSource(64 * MiB);
  const cache = new CachedSource(inner, {
    chunkBytes: MiB,
    cacheBytes: 64 * MiB,
    maxReadaheadBytes: 8 * MiB,
  });
  for (let offset = 0; offset < 64 * MiB; offset += 128 * KiB) {
    expectGenerated(await cache.read(offset, 128 * KiB), offset);
  }
  const sizes = inner.reads.map((r) => r.length / MiB);
  // 1, 2, 4, then 8 MiB windows: 64 chunks in ~11 underlying reads instead of 64.
  deepStrictEqual(sizes.slice(0, 4), [1, 2, 4, 8]);
  ok(sizes.every((s) => s <= 8), sizes.join(","));
  ok(inner.reads.length <= 12, `${inner.reads.length} fetches: ${sizes.join(",")}`);
  assertEquals(sizes.reduce((a, b) => a + b, 0), 64, "every byte fetched exactly once");
  const stats = cache.stats();
  assertEquals(stats.bytesFetched, 64 * MiB);
  assertEquals(stats.bytesRequested, 64 * MiB);

  // Random access: one chunk per miss, no readahead.
  const random = new GeneratedSource(256 * MiB);
  const cold = new CachedSource(random, { chunkBytes: MiB, cacheBytes: 16 * MiB });
  for (const chunk of [200, 17, 133, 90, 250, 3]) {
    expectGenerated(await cold.read(chunk * MiB + 4096, 4096), chunk * MiB + 4096);
  }
  deepStrictEqual(random.reads.map((r) => r.length), [MiB, MiB, MiB, MiB, MiB, MiB]);
});

Deno.test("CachedSource: maxReadaheadBytes 0 fetches only the chunks a read needs", async () => {
  const inner = new GeneratedSource(16 * MiB);
  const cache = new CachedSource(inner, {
    chunkBytes: 64 * KiB,
    cacheBytes: 16 * MiB,
    maxReadaheadBytes: 0,
  });
  for (let offset = 0; offset < 4 * MiB; offset += 100 * KiB) {
    expectGenerated(await cache.read(offset, 100 * KiB), offset);
  }
  await new Promise((resolve) => setTimeout(resolve, 10));
  const fetchedEnd = Math.max(...inner.reads.map((r) => r.offset + r.length));
  assertEquals(fetchedEnd, 4 * MiB + 64 * KiB, "nothing past the chunk of the last read");
  assertEquals(cache.stats().readaheadFetches, 0);
  assertEquals(cache.stats().bytesFetched, fetchedEnd);
});

Deno.test("CachedSource: interleaved sequential readers each keep a growing window", async () => {
  const inner = new GeneratedSource(128 * MiB);
  const cache = new CachedSource(inner, { chunkBytes: MiB, cacheBytes: 64 * MiB });
  // Two readers, 64 MiB apart, taking turns (like two files, or nbdcopy's connections).
  for (let step = 0; step < 32 * 8; step++) {
    const base = (step % 2) * 64 * MiB;
    const offset = base + Math.floor(step / 2) * 256 * 1024;
    expectGenerated(await cache.read(offset, 256 * 1024), offset);
  }
  const sizes = inner.reads.map((r) => r.length / MiB);
  ok(inner.reads.length <= 16, `${inner.reads.length} fetches: ${sizes.join(",")}`);
  ok(sizes.filter((s) => s === 8).length >= 4, sizes.join(","));
});

Deno.test("CachedSource: memory stays bounded by cacheBytes over a 512 MiB image; LRU keeps hot chunks", async () => {
  const inner = new GeneratedSource(512 * MiB);
  const cache = new CachedSource(inner, { chunkBytes: MiB, cacheBytes: 16 * MiB });
  let maxHeld = 0;
  for (let offset = 0; offset < 512 * MiB; offset += 256 * KiB) {
    const bytes = await cache.read(offset, 256 * KiB);
    if (offset % (4 * MiB) === 0) expectGenerated(bytes, offset);
    // Chunk 0 stays hot: touched every 2 MiB.
    if (offset % (2 * MiB) === 0) await cache.read(100, 10);
    maxHeld = Math.max(maxHeld, cache.stats().cachedBytes);
  }
  ok(maxHeld <= 16 * MiB, `held ${maxHeld}`);
  assertEquals(cache.stats().cachedBytes <= 16 * MiB, true);
  ok(cache.stats().cachedChunks <= 16);
  // chunk 0 was fetched once although 512 MiB streamed through a 16 MiB cache.
  assertEquals(inner.reads.filter((r) => r.offset === 0).length, 1);
});

Deno.test("CachedSource: a failed fetch rejects every waiter, is not cached, and is retried later", async () => {
  let failing = true;
  const inner = new MemorySource(patternBytes(4 * MiB), {
    delayMs: () => 10,
    fail: (offset, length) => failing && offset < 2 * MiB && offset + length > MiB,
  });
  const cache = new CachedSource(inner, { chunkBytes: MiB, cacheBytes: 4 * MiB });
  const results = await Promise.allSettled([
    cache.read(MiB + 10, 100),
    cache.read(MiB + 20000, 100),
  ]);
  assertEquals(results.map((r) => r.status), ["rejected", "rejected"]);
  assertEquals(inner.reads.length, 1);
  assertEquals(cache.stats().cachedChunks, 0);
  // A read spanning a good and the failing chunk rejects too (no partial or zero data).
  await rejects(cache.read(MiB - 10, 100));
  failing = false;
  deepStrictEqual(await cache.read(MiB + 10, 100), inner.bytes.subarray(MiB + 10, MiB + 110));
});

Deno.test("CachedSource: the size of a short final chunk and reads at the very end", async () => {
  const data = patternBytes(3 * MiB + 5);
  const cache = new CachedSource(new MemorySource(data), { chunkBytes: MiB, cacheBytes: 2 * MiB });
  deepStrictEqual(await cache.read(3 * MiB, 5), data.subarray(3 * MiB));
  deepStrictEqual(await cache.read(data.length, 0), new Uint8Array(0));
  await rejects(cache.read(3 * MiB, 6), RangeError);
  ok(cache.stats().cachedBytes <= 2 * MiB);
});

Deno.test("CachedSource: abort signal rejects the waiter, not the shared fetch", async () => {
  const inner = new MemorySource(patternBytes(2 * MiB), { delayMs: () => 50 });
  const cache = new CachedSource(inner, { chunkBytes: MiB, cacheBytes: 2 * MiB });
  const controller = new AbortController();
  const aborted = cache.read(10, 10, controller.signal);
  const other = cache.read(20, 10);
  controller.abort(new Error("stop"));
  await rejects(aborted, /stop/);
  deepStrictEqual(await other, inner.bytes.subarray(20, 30));
});

Deno.test("CachedSource: an aborted readInto never writes its buffer once the fetch lands", async () => {
  // The caller frees (or reuses) its buffer when the read rejects: `serve` counts a reply
  // buffer in its memory budget only until then, so a late write kept every abandoned READ's
  // buffer alive past the budget until the shared fetch ended.
  let land!: () => void;
  const landed = new Promise<void>((resolve) => land = resolve);
  const inner = new MemorySource(patternBytes(2 * MiB));
  const gated: Source = {
    size: inner.size,
    read: async (offset, length) => {
      await landed;
      return await inner.read(offset, length);
    },
  };
  const cache = new CachedSource(gated, { chunkBytes: MiB, cacheBytes: 2 * MiB });
  const controller = new AbortController();
  const out = new Uint8Array(3000).fill(0xaa);
  const aborted = cache.readInto(10, out, controller.signal);
  controller.abort(new Error("client left"));
  await rejects(aborted, /client left/);
  land();
  deepStrictEqual(await cache.read(10, 3000), inner.bytes.subarray(10, 3010));
  ok(out.every((b) => b === 0xaa), "the aborted read's buffer was written after it rejected");
});

Deno.test("CachedSource: bad options are refused", () => {
  const inner = new MemorySource(new Uint8Array(10));
  let threw = 0;
  for (const options of [{ chunkBytes: 1000 }, { chunkBytes: MiB, cacheBytes: KiB }]) {
    try {
      new CachedSource(inner, options);
    } catch (error) {
      ok(error instanceof RangeError);
      threw++;
    }
  }
  assertEquals(threw, 2);
});

Deno.test("CachedSource: reads skipReadaheadWhere covers start no readahead; others still do", async () => {
  const inner = new GeneratedSource(32 * MiB);
  const cache = new CachedSource(inner, { chunkBytes: MiB, cacheBytes: 32 * MiB });
  // As a trace prefetch would say: the first 4 MiB are fetched by someone else.
  cache.skipReadaheadWhere((offset, length) => offset + length <= 4 * MiB);
  for (let offset = 0; offset < 4 * MiB; offset += 128 * KiB) {
    expectGenerated(await cache.read(offset, 128 * KiB), offset);
  }
  deepStrictEqual(inner.reads.map((r) => [r.offset / MiB, r.length / MiB]), [[0, 1], [1, 1], [
    2,
    1,
  ], [3, 1]]);
  assertEquals(cache.stats().readaheadFetches, 0);
  // Past the covered bytes, a sequential reader gets its windows again.
  for (let offset = 4 * MiB; offset < 8 * MiB; offset += 128 * KiB) {
    expectGenerated(await cache.read(offset, 128 * KiB), offset);
  }
  ok(cache.stats().readaheadFetches > 0, JSON.stringify(inner.reads));
});

Deno.test("CachedSource: small reads clustered near each other start no readahead until a chunk's worth was read", async () => {
  const inner = new GeneratedSource(64 * MiB);
  const cache = new CachedSource(inner, { chunkBytes: MiB, cacheBytes: 32 * MiB });
  // Small files read in the order they lie (python's imports): 16 KiB every 300 KiB, each
  // near where the one before ended, 160 KiB in all.
  for (let i = 0; i < 10; i++) {
    const offset = 10 * MiB + i * 300 * KiB;
    expectGenerated(await cache.read(offset, 16 * KiB), offset);
  }
  await new Promise((resolve) => setTimeout(resolve, 10));
  assertEquals(cache.stats().readaheadFetches, 0, JSON.stringify(inner.reads));
  deepStrictEqual(inner.reads.map((r) => r.offset / MiB), [10, 11, 12], "only the chunks read");
  // A reader that goes on past a chunk's worth is followed as before.
  for (let offset = 40 * MiB; offset < 44 * MiB; offset += 128 * KiB) {
    expectGenerated(await cache.read(offset, 128 * KiB), offset);
  }
  ok(cache.stats().readaheadFetches > 0, JSON.stringify(inner.reads));
  ok(inner.reads.some((r) => r.length > MiB), JSON.stringify(inner.reads));
});
