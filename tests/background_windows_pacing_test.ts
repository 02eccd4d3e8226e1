/**
 * The background windows of an NBD mount paced by its reader (lib/source/prefetched.ts
 * WINDOWS_AHEAD_WHILE_READ, issue 12's VM full read): the real server-side stack — disk cache,
 * chunk cache, pinned listed metadata, the after-ready windows — over an in-memory registry
 * stand-in that records every fetch. While file data is read in one place, no window more than
 * WINDOWS_AHEAD_WHILE_READ past it is fetched; once the reader stops, the rest are. A FUSE
 * mount's windows (windowsWhenQuiet) are not held back.
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { CachedSource } from "../lib/source/cached.ts";
import {
  PIN_PAGE_BYTES,
  PrefetchedSource,
  prefetchErofsMetadata,
  WINDOWS_AHEAD_WHILE_READ,
} from "../lib/source/prefetched.ts";
import { DATA_READ_RECENT_MS } from "../lib/source/background_windows.ts";
import { walkErofsMetadata } from "../lib/erofs/metadata_walk.ts";
import { MemorySource } from "./_support/memory_source.ts";
import { FIXTURES } from "./_support/requires.ts";

const CHUNK = 16 << 10;
const WINDOW = 64 << 10;
const image = Deno.readFileSync(`${FIXTURES}/basic.erofs`);
const WINDOWS = Math.ceil(image.length / WINDOW);
/** The reader works in this window (past the image head, whose reads start nothing). */
const READ_WINDOW = 3;

/** The walk's pages, and one page at the end of every other window (a scattered image). */
async function listedPages(): Promise<Map<number, Uint8Array>> {
  const pages = new Map<number, Uint8Array>();
  await walkErofsMetadata(
    (offset, length) => Promise.resolve(image.subarray(offset, offset + length)),
    image.length,
    {
      fileInodes: false,
      onPage: (offset: number, bytes: Uint8Array) => {
        if (offset % PIN_PAGE_BYTES === 0) pages.set(offset, bytes.slice());
      },
    },
  );
  for (let w = 2; (w + 1) * WINDOW <= image.length; w += 2) {
    const at = (w + 1) * WINDOW - PIN_PAGE_BYTES;
    pages.set(at, image.slice(at, at + PIN_PAGE_BYTES));
  }
  return pages;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Mounts the stack (FUSE's policy when `quiet`), reads file data in READ_WINDOW for `readMs`,
 * then stays idle: the windows of the fetches made while reading and of all of them.
 */
async function readThenIdle(quiet: boolean, readMs: number) {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-pacing-" });
  const inner = new MemorySource(image);
  const cache = DiskCache.open({ dir, chunkBytes: CHUNK, onWarning: (m) => assert.fail(m) })!;
  const disk = cache.wrap(inner, { digest: "sha256:" + "9c".repeat(32), origin: "t" }) as
    & DiskCachedSource
    & MemorySource;
  // No chunk-cache readahead: on this 1.4 MB image its first window would fetch the rest.
  const served = new PrefetchedSource(
    new CachedSource(disk, { cacheBytes: 8 << 20, maxReadaheadBytes: 0 }),
  );
  const windowsOf = (reads: { offset: number; length: number }[]) =>
    new Set(reads.flatMap(({ offset, length }) => {
      const out = [];
      for (let w = Math.floor(offset / WINDOW); w * WINDOW < offset + length; w++) out.push(w);
      return out;
    }));
  try {
    const pages = await listedPages();
    await prefetchErofsMetadata(disk, served, {
      windowBytes: WINDOW,
      metadata: () =>
        Promise.resolve({
          pieces: [...pages].map(([offset, bytes]) => ({ offset, bytes })),
          note: "list",
        }),
      // FUSE's policy, its quiet start out of the way: only the reads start the windows.
      windowsWhenQuiet: quiet ? { quietMs: 60_000, inFlight: 2, idleInFlight: 1 } : undefined,
    });
    await disk.whenDurable();
    inner.reads.length = 0;
    const unpinned: number[] = [];
    for (let at = READ_WINDOW * WINDOW; at < (READ_WINDOW + 1) * WINDOW; at += PIN_PAGE_BYTES) {
      if (!pages.has(at)) unpinned.push(at);
    }
    assert(unpinned.length > 0, "file data in the reader's window");
    const page = new Uint8Array(PIN_PAGE_BYTES);
    const startedMs = performance.now();
    for (let i = 0; performance.now() - startedMs < readMs; i++) {
      await served.readInto(unpinned[i % unpinned.length], page);
      await sleep(5);
    }
    const whileReading = windowsOf(inner.reads);
    await sleep(DATA_READ_RECENT_MS + 700);
    await disk.whenDurable();
    return { whileReading, all: windowsOf(inner.reads) };
  } finally {
    await disk.whenDurable();
    await served.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("NBD windows: none past WINDOWS_AHEAD_WHILE_READ of a reader's window while it reads, the rest once it stops", async () => {
  assert(WINDOWS > READ_WINDOW + WINDOWS_AHEAD_WHILE_READ + 3, `${WINDOWS} windows`);
  const { whileReading, all } = await readThenIdle(false, 600);
  const limit = READ_WINDOW + WINDOWS_AHEAD_WHILE_READ;
  assert(whileReading.has(READ_WINDOW), `the reader's window: ${[...whileReading]}`);
  const past = [...whileReading].filter((w) => w > limit);
  assert.deepEqual(past, [], `fetched past window ${limit} while reading`);
  assert(
    all.has(WINDOWS - 2),
    `the last listed windows once idle: ${[...all].sort((a, b) => a - b)}`,
  );
});

Deno.test("FUSE windows (windowsWhenQuiet): not held back by a reader", async () => {
  const { whileReading } = await readThenIdle(true, 600);
  const limit = READ_WINDOW + WINDOWS_AHEAD_WHILE_READ;
  assert(
    [...whileReading].some((w) => w > limit),
    `nothing past window ${limit} while reading: ${[...whileReading]}`,
  );
});
