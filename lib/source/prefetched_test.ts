import assert from "node:assert/strict";
import { CachedSource } from "./cached.ts";
import { DiskCache } from "./disk_cache.ts";
import { closeQuietly, preadExact } from "./disk_cache_io.ts";
import { cstr, libc, O_CLOEXEC, O_PATH } from "../../ffi/libc.ts";
import { fstatFd } from "../../ffi/files.ts";
import { sleep } from "../timers.ts";
import { PIN_PAGE_BYTES, PrefetchedSource } from "./prefetched.ts";
import {
  firstDataReadPast,
  IMAGE_HEAD_PROBE_BYTES,
  prefetchErofsMetadata,
} from "./metadata_prefetch.ts";
import { MemorySource, patternBytes } from "../../tests/_support/memory_source.ts";
import { FIXTURES } from "../../tests/_support/requires.ts";

Deno.test("CachedSource.reserveBytes: chunks and the reserve share one bound", async () => {
  const bytes = patternBytes(64 << 10);
  const cache = new CachedSource(new MemorySource(bytes), {
    chunkBytes: 4096,
    cacheBytes: 32 << 10,
    maxReadaheadBytes: 4096,
  });
  for (let offset = 0; offset < bytes.length; offset += 8192) await cache.read(offset, 1);
  assert.equal(cache.stats().cachedBytes, 32 << 10, "full before the reserve");
  cache.reserveBytes(20 << 10);
  assert.ok(cache.stats().cachedBytes <= 12 << 10, `${cache.stats().cachedBytes} cached`);
  for (let offset = 4096; offset < bytes.length; offset += 8192) {
    assert.deepEqual(await cache.read(offset, 10), bytes.slice(offset, offset + 10));
    assert.ok(cache.stats().cachedBytes + (20 << 10) <= cache.cacheBytes);
  }
  cache.reserveBytes(1 << 30);
  assert.equal(cache.stats().cachedBytes, 4096, "one chunk stays usable");
  await cache.close();
});

Deno.test("pinned metadata counts inside the cache bound and stops at half of it", async () => {
  const image = Deno.readFileSync(`${FIXTURES}/basic.erofs`);
  const cacheBytes = 16 << 10;
  const cache = new CachedSource(new MemorySource(image), { chunkBytes: 4096, cacheBytes });
  const served = new PrefetchedSource(cache);
  assert.equal(served.pinBudgetBytes, 8 << 10);
  const summary = await prefetchErofsMetadata(new MemorySource(image), served, {
    fileInodes: true,
  });
  assert.match(summary, /stopped: metadata above 2 pages/, summary);
  assert.ok(served.pinnedBytes <= 8 << 10, `${served.pinnedBytes} pinned`);
  // Reads through the cache now never hold more than what the pins left.
  for (let offset = 0; offset + 100 <= image.length; offset += 30_011) {
    assert.deepEqual(await served.read(offset, 100), image.slice(offset, offset + 100));
    assert.ok(
      served.stats().cachedBytes + served.pinnedBytes <= cacheBytes,
      `${served.stats().cachedBytes} cached + ${served.pinnedBytes} pinned`,
    );
  }
  await served.close();
});

Deno.test("PrefetchedSource.pin never pins past its budget", () => {
  const served = new PrefetchedSource(new MemorySource(patternBytes(16 * PIN_PAGE_BYTES)), {
    pinBudgetBytes: 3 * PIN_PAGE_BYTES,
  });
  served.pin(0, patternBytes(10 * PIN_PAGE_BYTES));
  assert.equal(served.pinnedBytes, 3 * PIN_PAGE_BYTES);
  served.pin(12 * PIN_PAGE_BYTES, patternBytes(PIN_PAGE_BYTES));
  assert.equal(served.pinnedBytes, 3 * PIN_PAGE_BYTES);
});

Deno.test("PrefetchedSource.nextDataRead: reads before the call (an attach's probes) do not count", async () => {
  const bytes = patternBytes(16 * PIN_PAGE_BYTES);
  const served = new PrefetchedSource(new MemorySource(bytes));
  const settled = (promise: Promise<unknown>) => {
    let done = false;
    promise.then(() => done = true);
    return () => done;
  };
  // The block-size probe and the partition scan, before the metadata is pinned.
  await served.read(0, 1152);
  served.pin(0, bytes.slice(0, 2 * PIN_PAGE_BYTES));
  const next = served.nextDataRead();
  const done = settled(next);
  await served.read(100, 500); // mount(2) and a find: pinned pages only
  await served.read(PIN_PAGE_BYTES, PIN_PAGE_BYTES);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(done(), false, "a read of pinned pages or one before the call counted");
  assert.deepEqual(
    await served.read(5 * PIN_PAGE_BYTES, 10),
    bytes.subarray(5 * 4096, 5 * 4096 + 10),
  );
  assert.deepEqual(await next, { offset: 5 * PIN_PAGE_BYTES, length: 10 });
  // Asked again: the next one, not the one already seen.
  const again = settled(served.nextDataRead());
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(again(), false);
  await served.read(9 * PIN_PAGE_BYTES, 10);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(again(), true);
});

Deno.test("firstDataReadPast: the kernel's probes of the image head do not count as file data", async () => {
  const bytes = patternBytes(64 * PIN_PAGE_BYTES);
  const served = new PrefetchedSource(new MemorySource(bytes));
  let seen: { offset: number; length: number } | undefined;
  const first = firstDataReadPast(served, IMAGE_HEAD_PROBE_BYTES).then((read) => seen = read);
  // A partition scan after ready: 4 KiB at 4096, the amiga parser's 16 sectors, sector 31.
  await served.read(PIN_PAGE_BYTES, PIN_PAGE_BYTES);
  await served.read(0, 8192);
  await served.read(31 * 512, 512);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(seen, undefined, "a read of the image head counted as file data");
  await served.read(IMAGE_HEAD_PROBE_BYTES - 10, 20); // reaches past the head
  await first;
  assert.deepEqual(seen, { offset: IMAGE_HEAD_PROBE_BYTES - 10, length: 20 });
});

/** `bytes` behind a disk cache in a new directory, a CachedSource and a PrefetchedSource. */
async function diskBackedPrefetched(bytes: Uint8Array) {
  const dir = await Deno.makeTempDir({ prefix: "pins-" });
  const cache = DiskCache.open({ checkCompleteBlobs: false, dir, onWarning: () => {} })!;
  const disk = cache.wrap(new MemorySource(bytes), {
    digest: `sha256:${"ab".repeat(32)}`,
    origin: "t",
  });
  return { dir, served: new PrefetchedSource(new CachedSource(disk)) };
}

Deno.test("PrefetchedSource.pin: runs of pages reach the reader thread's pin file and map", async () => {
  const size = 9 * PIN_PAGE_BYTES + 100; // a short last page
  const bytes = patternBytes(size, 5);
  const { dir, served } = await diskBackedPrefetched(bytes);
  const page = (index: number, count = 1) =>
    bytes.subarray(index * PIN_PAGE_BYTES, Math.min(size, (index + count) * PIN_PAGE_BYTES));
  try {
    served.pin(0, page(0)); // before the file exists: copied into it when it is opened
    const files = served.openDirectReads()!;
    assert.ok(files.pins, "no pin file");
    served.pin(3 * PIN_PAGE_BYTES, page(3));
    // Pages 2-5 with 3 pinned already: two runs; 7-9 runs to the short last page.
    served.pin(2 * PIN_PAGE_BYTES, page(2, 4));
    served.pin(7 * PIN_PAGE_BYTES, page(7, 3));
    const map = new Uint8Array(10);
    preadExact(files.pins.mapFd, map, 0);
    assert.deepEqual([...map], [1, 0, 1, 1, 1, 1, 0, 1, 1, 1]);
    for (const index of [0, 2, 3, 4, 5, 7, 8, 9]) {
      const got = new Uint8Array(page(index).length);
      preadExact(files.pins.fd, got, index * PIN_PAGE_BYTES);
      assert.deepEqual(got, page(index), `page ${index}`);
    }
    assert.equal(served.pinnedBytes, 8 * PIN_PAGE_BYTES);
    files.close();
  } finally {
    await served.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** Whether descriptor `fd` is (still) of the file with inode `ino`. */
function holds(fd: number, ino: bigint): boolean {
  try {
    return fstatFd(fd).ino === ino;
  } catch {
    return false; // closed
  }
}

Deno.test("PrefetchedSource.openDirectReads: a second close() closes no descriptor opened since", async () => {
  const bytes = patternBytes(4 * PIN_PAGE_BYTES, 7);
  const { dir, served } = await diskBackedPrefetched(bytes);
  /** Files opened after the first close, by number, with their inode. */
  const mine = new Map<number, bigint>();
  try {
    const files = served.openDirectReads()!;
    assert.ok(files.pins, "no pin file");
    const freed = [files.mapFd, files.dataFd, files.pins.fd, files.pins.mapFd];
    files.close();
    // The freed numbers go to the next opens (lowest first; another test file running in this
    // process may take one for a moment): files of this test's own are opened until they hold
    // all of them.
    Deno.writeTextFileSync(`${dir}/mine`, "");
    for (let tries = 0; !freed.every((fd) => mine.has(fd)) && tries < 200; tries++) {
      const fd = libc().open(cstr(`${dir}/mine`), O_PATH | O_CLOEXEC, 0);
      assert.ok(fd >= 0);
      mine.set(fd, fstatFd(fd).ino);
      if (tries % 16 === 15) await sleep(1);
    }
    assert.ok(freed.every((fd) => mine.has(fd)), "the freed numbers never came back");
    files.close();
    const lost = freed.filter((fd) => !holds(fd, mine.get(fd)!));
    assert.deepEqual(lost, [], "the second close() closed descriptors opened since");
  } finally {
    for (const [fd, ino] of mine) {
      // Only those still ours: a number closed under us may be another file's by now.
      if (holds(fd, ino)) closeQuietly(fd);
    }
    await served.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("PrefetchedSource.pinnedRuns: maximal runs in offset order, remade after a pin", () => {
  const size = 9 * PIN_PAGE_BYTES + 100; // a short last page
  const served = new PrefetchedSource(new MemorySource(patternBytes(size)));
  const pages = (first: number, count: number) =>
    patternBytes(size).slice(first * PIN_PAGE_BYTES, (first + count) * PIN_PAGE_BYTES);
  assert.deepEqual(served.pinnedRuns(), []);
  served.pin(5 * PIN_PAGE_BYTES, pages(5, 1));
  served.pin(0, pages(0, 3));
  served.pin(9 * PIN_PAGE_BYTES, pages(9, 1));
  const P = PIN_PAGE_BYTES;
  assert.deepEqual(served.pinnedRuns(), [0, 3 * P, 5 * P, P, 9 * P, 100]);
  served.pin(3 * PIN_PAGE_BYTES, pages(3, 2)); // joins the first two runs
  served.pin(8 * PIN_PAGE_BYTES, pages(8, 1)); // and the last to the one before
  assert.deepEqual(served.pinnedRuns(), [0, 6 * P, 8 * P, P + 100]);
  // A trace prefetch's pages (file data) are not metadata runs.
  served.pin(6 * PIN_PAGE_BYTES, pages(6, 2), { data: true });
  assert.deepEqual(served.pinnedRuns(), [0, 6 * P, 8 * P, P + 100]);
});

Deno.test("PrefetchedSource.onPinnedRead: told of reads of pinned pages only", async () => {
  const size = 64 * PIN_PAGE_BYTES;
  const served = new PrefetchedSource(new MemorySource(patternBytes(size)));
  served.pin(0, patternBytes(size).slice(0, 32 * PIN_PAGE_BYTES));
  let told = 0;
  served.onPinnedRead(() => told++);
  for (let page = 30; page < 34; page++) await served.read(page * PIN_PAGE_BYTES, 512);
  assert.equal(told, 2, "pages 30 and 31 are pinned, 32 and 33 not");
  await served.read(31 * PIN_PAGE_BYTES, 2 * PIN_PAGE_BYTES); // partly pinned: file data
  assert.equal(told, 2);
  // The reader thread's reports of the reads it answered.
  served.noteDirectReads([0, PIN_PAGE_BYTES, 40 * PIN_PAGE_BYTES, 100, 5 * PIN_PAGE_BYTES, 10]);
  assert.equal(told, 4);
  // Pages a trace prefetch pinned are file data: their reads are no metadata walk.
  served.pin(
    40 * PIN_PAGE_BYTES,
    patternBytes(size).slice(40 * PIN_PAGE_BYTES, 42 * PIN_PAGE_BYTES),
    {
      data: true,
    },
  );
  await served.read(40 * PIN_PAGE_BYTES, 512);
  served.noteDirectReads([41 * PIN_PAGE_BYTES, PIN_PAGE_BYTES]);
  assert.equal(told, 4);
  assert.equal(served.stats().pinnedHits, 6, "all were pinned hits");
  await served.close();
});
