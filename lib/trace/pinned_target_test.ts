/**
 * A trace prefetch over a memory-only cache (pinned_target.ts), with the real cache stack
 * (CachedSource under PrefetchedSource) over a counting source: the traced pages are fetched as
 * they are and pinned, so the application's reads of them fetch nothing even when the chunks
 * they lie in would not all fit in the cache; through the cache (the path before) the same
 * trace fetches whole chunks and the application fetches the evicted ones again.
 */
import assert from "node:assert/strict";
import { CachedSource } from "../source/cached.ts";
import { PrefetchedSource } from "../source/prefetched.ts";
import type { Source } from "../source/source.ts";
import { pinningPrefetchTarget } from "./pinned_target.ts";
import { type PrefetchTarget, TracePrefetcher } from "./prefetch.ts";

const MIB = 1 << 20;
const SOURCE_BYTES = 64 * MIB;
const CACHE_BYTES = 8 * MIB; // 4 chunks of 2 MiB, 4 MiB of pins at most
/** Twelve traced ranges, one per 4 MiB: 12 chunks, three times what the cache holds. */
const RANGES = Array.from({ length: 12 }, (_, i) => ({
  layerIndex: 0,
  offset: i * 4 * MIB + 12288,
  length: 20480 + i * 512, // not all page multiples: the pins round out to pages
}));

function byteAt(offset: number): number {
  return (offset * 7 + (offset >> 12)) & 0xff;
}

/** A source that makes its bytes up and counts what is read of it. */
function countingSource() {
  const reads: [number, number][] = [];
  const source: Source = {
    size: SOURCE_BYTES,
    read(offset: number, length: number) {
      reads.push([offset, length]);
      const out = new Uint8Array(length);
      for (let i = 0; i < length; i++) out[i] = byteAt(offset + i);
      return Promise.resolve(out);
    },
  };
  return { source, reads, bytes: () => reads.reduce((sum, [, length]) => sum + length, 0) };
}

async function prefetchThenRead(pinning: boolean) {
  const counted = countingSource();
  const served = new PrefetchedSource(
    new CachedSource(counted.source, { cacheBytes: CACHE_BYTES }),
  );
  const target: PrefetchTarget = pinning
    ? pinningPrefetchTarget(counted.source, served, served)
    : served;
  const prefetcher = new TracePrefetcher([target], RANGES);
  const summary = await prefetcher.run(new AbortController().signal);
  assert.match(summary, /trace prefetch done/);
  const prefetchBytes = counted.bytes();
  const readsBefore = counted.reads.length;
  // The application reads the traced ranges in trace order, with the pages around them.
  for (const range of RANGES) {
    const got = await served.read(range.offset, range.length);
    for (let i = 0; i < got.length; i += 997) assert.equal(got[i], byteAt(range.offset + i));
  }
  return { prefetchBytes, appReads: counted.reads.length - readsBefore, served };
}

Deno.test("trace prefetch over a memory cache pins its pages: the app fetches nothing", async () => {
  const pinned = await prefetchThenRead(true);
  const pages = RANGES.reduce((sum, r) => sum + Math.ceil((r.offset % 4096 + r.length) / 4096), 0);
  // Each traced range's pages, fetched once (not the 2 MiB chunks they lie in).
  assert.equal(pinned.prefetchBytes, pages * 4096);
  assert.equal(pinned.appReads, 0, "the traced ranges were evicted or never pinned");
  assert.equal(pinned.served.stats().pinnedBytes, pages * 4096);
  // Pins count against the cache's bound (--cache-size holds for both together).
  assert(pinned.served.stats().pinnedBytes <= CACHE_BYTES / 2);

  // The path before: whole chunks, three times more than fit, so the app fetches again.
  const through = await prefetchThenRead(false);
  assert(through.prefetchBytes >= RANGES.length * 2 * MIB, String(through.prefetchBytes));
  assert(through.appReads > 0);
});

Deno.test("trace prefetch over a memory cache: pieces past the pin budget go through the cache", async () => {
  const counted = countingSource();
  const cached = new CachedSource(counted.source, { cacheBytes: CACHE_BYTES });
  // Room for the pins of about two ranges only.
  const served = new PrefetchedSource(cached, { pinBudgetBytes: 64 << 10 });
  const fallbackReads: number[] = [];
  const fallback: PrefetchTarget = {
    read(offset, length, signal) {
      fallbackReads.push(offset);
      return served.read(offset, length, signal);
    },
  };
  const prefetcher = new TracePrefetcher(
    [pinningPrefetchTarget(counted.source, served, fallback)],
    RANGES,
  );
  await prefetcher.run(new AbortController().signal, 1);
  // The first two ranges (5 + 6 pages) fit, the third would not: it and the rest fall back.
  assert.equal(served.stats().pinnedBytes, 11 * 4096);
  assert.deepEqual(fallbackReads, RANGES.slice(2).map((r) => r.offset));
  // Every range is still readable, the fallen-back ones from the cache.
  for (const range of RANGES) {
    const got = await served.read(range.offset, range.length);
    assert.equal(got[100], byteAt(range.offset + 100));
  }
});

Deno.test("trace prefetch over a memory cache: a source with readRanges gets the pieces in few requests", async () => {
  const counted = countingSource();
  const batches: { offset: number; length: number }[][] = [];
  const source = {
    ...counted.source,
    // Like RegistryBlob.readRanges: one multi-range request; this "registry" leaves out the
    // third range (read alone after).
    readRanges(ranges: readonly { offset: number; length: number }[]) {
      batches.push(ranges.map((r) => ({ ...r })));
      return Promise.all(
        ranges.map((r, i) => i === 2 ? undefined : counted.source.read(r.offset, r.length)),
      );
    },
  };
  counted.reads.length = 0;
  const served = new PrefetchedSource(
    new CachedSource(counted.source, { cacheBytes: CACHE_BYTES }),
  );
  // Two of the ranges share a page and two touch: pages join into ascending, apart spans.
  const ranges = [
    ...RANGES.slice(0, 6),
    { layerIndex: 0, offset: RANGES[5].offset + 30000, length: 100 }, // in range 5's last page
    { layerIndex: 0, offset: RANGES[5].offset - 12288 + 4 * MIB - 4096, length: 4096 }, // apart
  ];
  const prefetcher = new TracePrefetcher(
    [pinningPrefetchTarget(source, served, served)],
    ranges,
  );
  assert.match(
    await prefetcher.run(new AbortController().signal),
    /trace prefetch done: \d+ bytes in 7 pieces, 1 reads/,
  );
  assert.equal(batches.length, 1, "one multi-range request for the batch");
  const spans = batches[0];
  for (let i = 1; i < spans.length; i++) {
    assert(spans[i].offset > spans[i - 1].offset + spans[i - 1].length, "ascending and apart");
  }
  assert(spans.every((s) => s.offset % 4096 === 0 && s.length % 4096 === 0));
  // The range the reply lacked came alone, the others only through the batch.
  assert.deepEqual(counted.reads.filter(([offset]) => offset === spans[2].offset), [[
    spans[2].offset,
    spans[2].length,
  ]]);
  assert.equal(counted.reads.length, spans.length, "each span read once");
  // Every traced byte is pinned: the application's reads fetch nothing.
  const before = counted.reads.length;
  for (const range of ranges) {
    const got = await served.read(range.offset, range.length);
    for (let i = 0; i < got.length; i += 997) assert.equal(got[i], byteAt(range.offset + i));
  }
  assert.equal(counted.reads.length, before);
});
