/**
 * A kernel read of the image head while the head's fill is still under way (issue 12, VM bench
 * at 19:05: a read at 4096, the new NBD device's partition scan, came during mount(2) while the
 * windows were held back, and mount(2) waited the NBD timeout). The whole server-side stack is
 * real — disk cache, chunk cache, pinned metadata, the listed-metadata prefetch with its
 * background windows — over a registry stand-in that streams whole 4-chunk units (as a
 * VerifiedSource does) and holds the head's fetch until told. The read must be answered as soon
 * as its own chunk is in, with the windows not started (a head read does not start them).
 */
import assert from "node:assert/strict";
import { DiskCache } from "../lib/source/disk_cache.ts";
import type { DiskCachedSource } from "../lib/source/disk_cached.ts";
import { CachedSource } from "../lib/source/cached.ts";
import { PIN_PAGE_BYTES, PrefetchedSource } from "../lib/source/prefetched.ts";
import { IMAGE_HEAD_PROBE_BYTES, prefetchErofsMetadata } from "../lib/source/metadata_prefetch.ts";
import { walkErofsMetadata } from "../lib/erofs/metadata_walk.ts";
import type { Source } from "../lib/source/source.ts";
import { FIXTURES } from "./_support/requires.ts";

const CHUNK = 16 << 10;
const WINDOW = 64 << 10;
const image = Deno.readFileSync(`${FIXTURES}/basic.erofs`);

/** Streams whole 4-chunk units; a fetch of the image's first chunk waits for `release`. */
class HeldHead implements Source {
  readonly size = image.length;
  readonly chunkBytes = 4 * CHUNK;
  readonly fetches: { offset: number; length: number }[] = [];
  readonly #gate = Promise.withResolvers<void>();
  release = () => this.#gate.resolve();
  read(offset: number, length: number): Promise<Uint8Array> {
    return Promise.reject(new Error(`read(${offset}, ${length}): fills stream`));
  }
  async readTo(
    offset: number,
    length: number,
    sink: (bytes: Uint8Array, at: number) => void | Promise<void>,
  ): Promise<void> {
    this.fetches.push({ offset, length });
    if (offset === 0) await this.#gate.promise;
    for (let at = 0; at < length; at += this.chunkBytes) {
      await sink(image.slice(offset + at, offset + Math.min(length, at + this.chunkBytes)), at);
    }
  }
}

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

const within = <T>(promise: Promise<T>, ms: number, what: string) =>
  Promise.race([
    promise,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(what)), ms)),
  ]);

Deno.test("a read of the image head joined to the head's fill in flight is answered when that chunk is in, windows not started", async () => {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-head-fill-" });
  const inner = new HeldHead();
  const cache = DiskCache.open({
    checkCompleteBlobs: false,
    dir,
    chunkBytes: CHUNK,
    onWarning: (m) => assert.fail(m),
  })!;
  const disk = cache.wrap(inner, { digest: "sha256:" + "ab".repeat(32), origin: "t" }) as
    & DiskCachedSource
    & Source;
  const served = new PrefetchedSource(new CachedSource(disk, { cacheBytes: 8 << 20 }));
  try {
    const pages = await listedPages();
    assert(pages.has(0) && !pages.has(PIN_PAGE_BYTES), "page 0 listed, page 1 not");
    const summary = await prefetchErofsMetadata(disk, served, {
      windowBytes: WINDOW,
      metadata: () =>
        Promise.resolve({
          pieces: [...pages].map(([offset, bytes]) => ({ offset, bytes })),
          note: "list",
        }),
    });
    assert.match(summary, /directories:/);
    // After the walk the head's fill (fillAhead of page 0) is under way and held.
    assert.deepEqual(inner.fetches, [{ offset: 0, length: 4 * CHUNK }]);
    const page = new Uint8Array(PIN_PAGE_BYTES);
    let answered = false;
    const read = served.readInto(PIN_PAGE_BYTES, page).then(() => answered = true);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(answered, false, "answered before its chunk was fetched");
    inner.release();
    await within(read, 5_000, "the read of 4096 was not answered after its chunk came");
    assert.deepEqual(page, image.subarray(PIN_PAGE_BYTES, 2 * PIN_PAGE_BYTES));
    // Only the head's unit and the read's run-on: no window started from the head.
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const fetch of inner.fetches) {
      assert(fetch.offset < 2 * WINDOW, `a window was fetched: ${JSON.stringify(inner.fetches)}`);
    }
    assert(IMAGE_HEAD_PROBE_BYTES >= 2 * PIN_PAGE_BYTES);
  } finally {
    inner.release();
    await disk.whenDurable();
    await served.close();
    await Deno.remove(dir, { recursive: true });
  }
});
